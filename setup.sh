#!/usr/bin/env bash
# Prepare this checkout: a virtual environment with everything the server needs.
# Safe to run again: finished steps are skipped.
#
#   ./setup.sh                 runtime (front, sim engine, model code; torch pinned)
#   ./setup.sh --dev           + test tools (pytest, Playwright) and Debian's chromium
#   ./setup.sh --flash-attn    + FlashAttention (GPU machines only)
#   ./setup.sh --upsampler     + vLLM for prompt upsampling in its own venv (GPU machines only)
#   ./setup.sh --download      + the LingBot-World checkpoints into $MODEL_DIR (~85 GB)
#
# Environment: PYTHON (interpreter, default python3), VENV (default .venv),
# UPSAMPLER_VENV (default .venv-upsampler), MODEL_DIR (download target, default
# models/lingbot-world), TORCH_INDEX_URL (a PyTorch wheel index to install torch
# from, e.g. a nightly index for new GPUs).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
UPSAMPLER_VENV=${UPSAMPLER_VENV:-.venv-upsampler}
MODEL_DIR=${MODEL_DIR:-models/lingbot-world}
TORCH_VERSION=2.13.0
DEV=0 FLASH=0 UPSAMPLER=0 DOWNLOAD=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --flash-attn) FLASH=1 ;;
    --upsampler) UPSAMPLER=1 ;;
    --download) DOWNLOAD=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n==> %s\n' "$*"; }
skip() { printf '    (skipped: %s)\n' "$*"; }

say "Python: $($PYTHON --version 2>&1)"
$PYTHON - <<'PY' || { echo "Python 3.10 or newer is required" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
  say "Creating the virtual environment in $VENV"
  $PYTHON -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# GPU detection decides which torch build is right; the front itself never needs one.
GPU_CC=""
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU_CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ' || true)
fi
if [ -n "$GPU_CC" ]; then
  say "GPU found (compute capability $GPU_CC)"
else
  say "No NVIDIA GPU found: CPU setup (the sim engine and tiny models run here)"
fi

stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "Runtime requirements already installed"
else
  say "Installing runtime requirements (torch==$TORCH_VERSION pinned)"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "    torch from TORCH_INDEX_URL"
    "${PIP[@]}" install --pre torch --index-url "$TORCH_INDEX_URL"
    grep -v '^torch==' requirements.txt > "$VENV/.requirements-no-torch.txt"
    "${PIP[@]}" install -r "$VENV/.requirements-no-torch.txt"
  else
    "${PIP[@]}" install -r requirements.txt
  fi
  echo "$want" > "$stamp"
fi

if [ -n "$GPU_CC" ]; then
  say "Checking that this torch build has kernels for the GPU"
  if ! "$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this torch build is CPU-only or the driver is too old")
major, minor = torch.cuda.get_device_capability(0)
arch = f"sm_{major}{minor}"
if arch not in torch.cuda.get_arch_list():
    sys.exit(f"this torch build has no kernels for {arch} ({torch.cuda.get_device_name(0)}); "
             "it would fail with 'no kernel image is available for execution'")
print(f"    ok: {torch.cuda.get_device_name(0)} ({arch}) with torch {torch.__version__}")
PY
  then
    cat >&2 <<'MSG'
    Fix: Blackwell GPUs (sm_120, e.g. RTX 6000 Blackwell) need a PyTorch build for
    CUDA 12.9 or newer. Set TORCH_INDEX_URL to PyTorch's nightly wheel index for
    that CUDA version (see the PyTorch "Get Started" page), remove
    .venv/.requirements.sha256 and run ./setup.sh again; then reinstall
    flash-attn (./setup.sh --flash-attn), which must be built against the same torch.
MSG
    exit 1
  fi
fi

if [ -z "$GPU_CC" ]; then
  say "Building the CPU attention kernel (bf16 scores + softmax; once per machine, ~10-20 s)"
  "$PY" -m inference.models.cpu_kernels | sed 's/^/    /' || echo "    not built: bf16 attention multiplies in float32" >&2
fi

if [ "$DEV" = 1 ]; then
  say "Installing test tools (pytest, Playwright's Python package; no browser download)"
  "${PIP[@]}" install -q -r requirements-dev.txt
  if [ -x /usr/bin/chromium ]; then
    echo "    chromium already installed"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "    chromium could not be installed; browser tests will be skipped" >&2
  else
    skip "chromium missing and apt-get not usable as this user; browser tests will be skipped"
  fi
fi

if [ "$FLASH" = 1 ]; then
  say "FlashAttention"
  if [ -z "$GPU_CC" ]; then
    skip "no GPU; PyTorch SDPA is used instead"
  else
    # Built against the installed torch; a mismatch shows up as 'undefined symbol' on import.
    "${PIP[@]}" install flash-attn --no-build-isolation
    "$PY" -c "import flash_attn; print('    flash-attn', flash_attn.__version__)"
  fi
fi

if [ "$UPSAMPLER" = 1 ]; then
  say "vLLM for prompt upsampling, in its own environment $UPSAMPLER_VENV"
  if [ -z "$GPU_CC" ]; then
    skip "no GPU; vLLM needs one (the server runs without upsampling)"
  else
    # vLLM pins its own torch: installed into $VENV it would replace torch==$TORCH_VERSION
    # and break flash-attn (attention would silently fall back to SDPA).
    [ -x "$UPSAMPLER_VENV/bin/python" ] || $PYTHON -m venv "$UPSAMPLER_VENV"
    "$UPSAMPLER_VENV/bin/python" -m pip --disable-pip-version-check install vllm
    "$UPSAMPLER_VENV/bin/vllm" --version >/dev/null
    "$PY" - "$TORCH_VERSION" <<'PY'
import sys, torch
if not torch.__version__.startswith(sys.argv[1]):
    sys.exit(f"the world model's torch is {torch.__version__}, expected {sys.argv[1]}: rerun ./setup.sh")
print(f"    world model keeps torch {torch.__version__}")
PY
    echo "    start.sh sets UPSAMPLER_CMD=\"$UPSAMPLER_VENV/bin/vllm serve\" when UPSAMPLER_CMD is unset"
  fi
fi

if [ "$DOWNLOAD" = 1 ]; then
  say "Downloading LingBot-World checkpoints into $MODEL_DIR (~85 GB; progress bars follow)"
  "${PIP[@]}" install -q "huggingface_hub[cli]"
  if ! "$PY" - <<'PY'
import sys
from huggingface_hub import HfApi
try:
    HfApi().model_info("robbyant/lingbot-world-fast", timeout=10)
except Exception as exc:
    sys.exit(f"the model hub is not reachable from this machine ({type(exc).__name__})")
PY
  then
    skip "no access to the model hub; download on a machine with internet and copy $MODEL_DIR here"
  else
    mkdir -p "$MODEL_DIR"
    "$VENV/bin/huggingface-cli" download robbyant/lingbot-world-base-cam --local-dir "$MODEL_DIR"
    "$VENV/bin/huggingface-cli" download robbyant/lingbot-world-fast --local-dir "$MODEL_DIR/lingbot_world_fast"
    echo "    done: start with ENGINE=lingbot-fast MODEL_DIR=$MODEL_DIR ./start.sh"
  fi
fi

say "Setup complete"
