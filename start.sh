#!/usr/bin/env bash
# Start the server in the background and wait until it is ready.
#   ./start.sh                     sim engine, HTTP :8080, WebSocket :8765
#   ENGINE=lingbot-fast MODEL_DIR=models/lingbot-world NUM_GPUS=8 ./start.sh
# Every setting is an environment variable (see README). PID files, ports.json
# and logs go to $RUN_DIR (default run/). Stop with ./stop.sh.
set -euo pipefail
cd "$(dirname "$0")"
export RUN_DIR=${RUN_DIR:-run}
READY_TIMEOUT=${READY_TIMEOUT:-900}
mkdir -p "$RUN_DIR"

if [ ! -x .venv/bin/python ] || [ ! -f .venv/.requirements.sha256 ]; then
  echo "First start: running ./setup.sh"
  ./setup.sh
fi

# The upsampler's vLLM lives in its own venv (setup.sh --upsampler): it pins a torch of its own.
UPSAMPLER_VENV=${UPSAMPLER_VENV:-.venv-upsampler}
if [ -z "${UPSAMPLER_CMD:-}" ] && [ -x "$UPSAMPLER_VENV/bin/vllm" ]; then
  export UPSAMPLER_CMD="'$(cd "$UPSAMPLER_VENV/bin" && pwd)/vllm' serve"
fi

pidfile="$RUN_DIR/server.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "already running (pid $(cat "$pidfile")); ./stop.sh first" >&2
  exit 1
fi
rm -f "$RUN_DIR/ports.json"

nohup .venv/bin/python ws_server.py >>"$RUN_DIR/server.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pidfile"
echo "server starting (pid $pid, log $RUN_DIR/server.log)"

.venv/bin/python - "$RUN_DIR" "$pid" "$READY_TIMEOUT" <<'PY'
import json, os, sys, time, urllib.request, urllib.error
run_dir, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline, last = time.time() + timeout, ""
ports = None
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log = open(os.path.join(run_dir, "server.log"), errors="replace").read().splitlines()[-25:]
        sys.exit("server exited during start-up; last log lines:\n  " + "\n  ".join(log))
    if ports is None:
        try:
            ports = json.load(open(os.path.join(run_dir, "ports.json")))
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.2)
            continue
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/ready", timeout=2) as r:
            if r.status == 200:
                host = os.environ.get("PUBLIC_HOST", "localhost")
                print(f"ready: web page  http://{host}:{ports['http']}/")
                print(f"       websocket ws://{host}:{ports['ws']}/")
                print(f"       status    http://{host}:{ports['http']}/status   (stop with ./stop.sh)")
                sys.exit(0)
    except urllib.error.HTTPError as e:
        reason = json.loads(e.read() or b"{}").get("reason", "")
        if reason and reason != last:
            print(f"  waiting: {reason}", flush=True)
            last = reason
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"not ready after {timeout:.0f} s (READY_TIMEOUT); see {run_dir}/server.log and {run_dir}/engine.log")
PY
