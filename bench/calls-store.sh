#!/usr/bin/env bash
# Call records on and off: mirror, 100 sessions, 20 s: the same server with the call store on (SQLite) and off.
set -euo pipefail
cd /work/main
PY=.venv/bin/python
EMU_PORT=$($PY -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
$PY -m voicebridge emulator --host 127.0.0.1 --port $EMU_PORT --api-key k --mirror --fast --log-level WARNING &
EMU=$!
trap "kill $EMU 2>/dev/null" EXIT
sleep 2
for store in off on; do
  PORT=$($PY -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
  DIR=$(mktemp -d)
  if [ $store = on ]; then CS="$DIR/calls.sqlite3"; else CS=off; fi
  env -i PATH=$PATH HOME=$HOME APP_HOST=127.0.0.1 APP_PORT=$PORT LOG_LEVEL=WARNING LOG_FORMAT=json \
    AZURE_OPENAI_ENDPOINT=ws://127.0.0.1:$EMU_PORT AZURE_OPENAI_KEY=k AZURE_OPENAI_DEPLOYMENT=bench \
    MAX_SESSIONS_PER_CLIENT=0 MAX_SESSIONS=1000 MAX_AUDIO_RATE=10 CALL_STORE=$CS CALL_SPOOL_FILE=$DIR/spool.jsonl \
    $PY -m voicebridge serve --env-file /dev/null > $DIR/server.log 2>&1 &
  SRV=$!
  for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/health && break; sleep 0.1; done
  echo "== store $store"
  $PY -m voicebridge loadtest --url ws://127.0.0.1:$PORT/ws/voice --sessions 100 --seconds 20 --ramp 2 --server-pid $SRV --json > $DIR/result.json
  $PY - "$DIR/result.json" "$store" "$CS" <<'PYEOF'
import json, sys, sqlite3, os
r = json.load(open(sys.argv[1]))
def find(d, *keys):
    for k in keys:
        if k in d: return d[k]
    return None
print(json.dumps({k: r.get(k) for k in ("sessions_held","frames_sent","frames_lost","p50_ms","p95_ms","p99_ms","server_cpu_per_session_pct","server_rss_per_session_kb") if k in r}))
if sys.argv[2] == "on":
    import time; time.sleep(1)
PYEOF
  kill -TERM $SRV; wait $SRV || true
  if [ $store = on ]; then echo "records stored: $(sqlite3 $CS 'select count(*) from calls' 2>/dev/null || $PY -c "import sqlite3;print(sqlite3.connect('$CS').execute('select count(*) from calls').fetchone()[0])")"; fi
done
