#!/usr/bin/env bash
# The main job: `meltano run tap-smartcar-connections target-duckdb`, then a SQL read-back.
#
#   bash scripts/demo.sh               # into DuckDB (output/.../smartcar.duckdb)
#   bash scripts/demo.sh target-jsonl  # into JSON Lines (output/.../connections.jsonl)
#
# With a management token (TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN, or
# `meltano config set tap-smartcar-connections management_token ...`) it reads the real
# Smartcar API into output/. Without one it starts the bundled Smartcar simulator and loads
# from it into output/simulator/, in the Meltano environment "simulator", so the simulator's
# bookmarks never mix with the real application's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
loader=${1:-target-duckdb}
case "$loader" in
  target-duckdb | target-jsonl) ;;
  *)
    echo "usage: bash scripts/demo.sh [target-duckdb|target-jsonl]" >&2
    exit 2
    ;;
esac
source scripts/setup.sh
meltano=.venv/bin/meltano
echo "Installing the Meltano plugins tap-smartcar-connections and $loader (10 to 30 s the first time)..." >&2
$meltano install tap-smartcar-connections "$loader"

has_token=$($meltano config print tap-smartcar-connections 2>/dev/null \
  | .venv/bin/python -c 'import json,sys; print(bool(json.load(sys.stdin).get("management_token")))' \
  || echo False)
environment=dev
output=output
if [ "$has_token" != True ]; then
  url_file=$(mktemp)
  .venv/bin/python -m smartcar_simulator --connections 1000 --url-file "$url_file" &
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
mkdir -p "$output"

if [ "$loader" = target-jsonl ]; then
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
print("The file only grows: every run appends what it read (bookmark ties included).")
PY
  exit 0
fi

if [ ! -f "$output/smartcar.duckdb" ]; then
  # Bookmarks without the file they describe would load only the newest connections.
  echo "No $output/smartcar.duckdb yet: clearing this pipeline's bookmarks for a full load." >&2
  $meltano --environment="$environment" state clear --force \
    "$environment:tap-smartcar-connections-to-target-duckdb" >/dev/null 2>&1 || true
fi
$meltano --environment="$environment" run tap-smartcar-connections target-duckdb
# Read it back with the duckdb package that target-duckdb itself uses (same pinned version).
.meltano/loaders/target-duckdb/venv/bin/python - "$output/smartcar.duckdb" <<'PY'
import shlex
import sys

import duckdb

path = sys.argv[1]
with duckdb.connect(path, read_only=True) as db:
    per_mode = db.sql(
        "SELECT mode, count(*) FROM connections GROUP BY mode ORDER BY mode"
    ).fetchall()
    total, keys = db.sql(
        "SELECT count(*), count(DISTINCT (userid, vehicleid)) FROM connections"
    ).fetchone()
    newest = db.sql(
        "SELECT connectedat, mode, userid, vehicleid FROM connections"
        " ORDER BY connectedat DESC, userid, vehicleid LIMIT 1"
    ).fetchone()
print(f"\n{path}: {total} rows in table connections, {keys} distinct (userId, vehicleId)")
print("Connections per mode (SELECT mode, count(*) FROM connections GROUP BY mode):")
for mode, count in per_mode:
    print(f"  {mode:<10} {count}")
if newest:
    connected_at, mode, user_id, vehicle_id = newest
    print(f"Newest connection: {connected_at} {mode} user {user_id} vehicle {vehicle_id}")
query = f'import duckdb; db = duckdb.connect("{path}"); db.sql("FROM connections LIMIT 5").show()'
print(f"Query it yourself: .meltano/loaders/target-duckdb/venv/bin/python -c {shlex.quote(query)}")
print("Run it again: only connections newer than each mode's bookmark are read,")
print("and target-duckdb upserts them on (userId, vehicleId): the counts stay the same.")
PY
