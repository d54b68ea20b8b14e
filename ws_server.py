"""Real-time world-model streaming server: `python ws_server.py` (settings from the environment; see README)."""

import sys

from server.app import main

if __name__ == "__main__":
    sys.exit(main())
