#!/usr/bin/env bash
# Run the test suite (installs the test tools first). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --dev
exec .venv/bin/python -m pytest "$@"
