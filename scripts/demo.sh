#!/usr/bin/env bash
# The main job: `meltano run tap-smartcar-connections target-jsonl`.
#
# With a management token (TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN, or
# `meltano config tap-smartcar-connections set management_token ...`) it reads the real
# Smartcar API into output/. Without one it starts the bundled Smartcar simulator and loads
# from it into output/simulator/, in the Meltano environment "simulator", so the simulator's
# bookmarks never mix with the real application's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
meltano=.venv/bin/meltano
$meltano install tap-smartcar-connections target-jsonl

has_token=$($meltano config print tap-smartcar-connections 2>/dev/null \
  | .venv/bin/python -c 'import json,sys; print(bool(json.load(sys.stdin).get("management_token")))' \
  || echo False)
environment=dev
output=output
if [ "$has_token" != True ]; then
  url_file=$(mktemp)
  .venv/bin/python -m tap_smartcar_connections.simulator --connections 1000 --url-file "$url_file" &
  simulator_pid=$!
  trap 'kill "$simulator_pid" 2>/dev/null || true; rm -f "$url_file"' EXIT
  for _ in $(seq 100); do [ -s "$url_file" ] && break; sleep 0.1; done
  export TAP_SMARTCAR_CONNECTIONS_API_URL
  TAP_SMARTCAR_CONNECTIONS_API_URL=$(cat "$url_file")
  export TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN=sim-token
  environment=simulator
  output=output/simulator
  echo "No management token configured: extracting from the bundled Smartcar simulator."
fi

before=0
if [ -f "$output/connections.jsonl" ]; then before=$(wc -l < "$output/connections.jsonl"); fi
$meltano --environment="$environment" run tap-smartcar-connections target-jsonl
.venv/bin/python - "$output/connections.jsonl" "$before" <<'PY'
import collections, json, sys
path, before = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open(path, encoding="utf-8")]
new = rows[before:]
print(f"\nLoaded {len(new)} connections this run into {path} ({len(rows)} rows in the file):")
for mode, count in sorted(collections.Counter(r["mode"] for r in new).items()):
    print(f"  {mode:<10} {count}")
print("Run it again: only connections newer than each mode's bookmark (plus ties) are read.")
PY
