#!/usr/bin/env bash
# Stop the server started by start.sh: SIGTERM through the PID file (clients get
# close code 1001, the engine is shut down), SIGKILL after 10 s. Only the
# processes named in $RUN_DIR's PID files are signalled.
set -euo pipefail
cd "$(dirname "$0")"
RUN_DIR=${RUN_DIR:-run}
GRACE=${STOP_GRACE_S:-10}

alive() { kill -0 "$1" 2>/dev/null; }
is_ours() {  # guard against a recycled PID: the process must be our server or engine
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qE 'ws_server\.py|inference\.engine|torch\.distributed\.run'
}

stopped=0
if [ -f "$RUN_DIR/server.pid" ]; then
  pid=$(cat "$RUN_DIR/server.pid")
  if alive "$pid" && is_ours "$pid"; then
    echo "stopping server (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 $((GRACE * 10))); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      echo "server did not stop within ${GRACE} s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    stopped=1
  else
    echo "server pid $pid is not running"
  fi
  rm -f "$RUN_DIR/server.pid"
fi
# The server removes engine.pid when it reaps the engine; one left behind means the
# front was killed hard, so end the engine's process group (it runs in its own session).
if [ -f "$RUN_DIR/engine.pid" ]; then
  epid=$(cat "$RUN_DIR/engine.pid")
  if alive "$epid" && is_ours "$epid"; then
    echo "stopping orphaned engine (pid $epid)"
    kill -TERM -- "-$epid" 2>/dev/null || kill -TERM "$epid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$epid" || break; sleep 0.1; done
    kill -KILL -- "-$epid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/engine.pid"
fi
# Same for an upsampler (vllm serve) whose front did not get to stop it.
if [ -f "$RUN_DIR/upsampler.pid" ]; then
  upid=$(cat "$RUN_DIR/upsampler.pid")
  if alive "$upid" && tr '\0' ' ' <"/proc/$upid/cmdline" 2>/dev/null | grep -qE 'vllm|orphan_guard|upsampler'; then
    echo "stopping orphaned upsampler (pid $upid)"
    kill -TERM -- "-$upid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$upid" || break; sleep 0.1; done
    kill -KILL -- "-$upid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/upsampler.pid"
fi
rm -f "$RUN_DIR/ports.json"
[ "$stopped" = 1 ] && echo "stopped" || echo "nothing to stop"
