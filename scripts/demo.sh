#!/usr/bin/env bash
# The main job: `meltano run tap-smartcar-connections target-duckdb`, then a SQL read-back.
#
#   bash scripts/demo.sh                         # API v2 into DuckDB (output/.../smartcar.duckdb)
#   bash scripts/demo.sh target-jsonl            # API v2 into JSON Lines (output/.../*.jsonl)
#   bash scripts/demo.sh --api v3                # API v3: connections, webhooks, subscriptions
#   bash scripts/demo.sh target-jsonl --api v3   # (the arguments go in any order)
#
# The API version is `--api v2|v3`; without it, the tap's own setting api_version as Meltano
# resolves it (TAP_SMARTCAR_CONNECTIONS_API_VERSION, .env, meltano.yml), which defaults to v2.
#
# With credentials for that version it reads the real Smartcar API into output/: for v2 a
# management token (TAP_SMARTCAR_CONNECTIONS_MANAGEMENT_TOKEN, or `meltano config set
# tap-smartcar-connections management_token ...`), for v3 a client id and secret
# (TAP_SMARTCAR_CONNECTIONS_CLIENT_ID and _CLIENT_SECRET, or `meltano config set`). Bookmarks
# belong to one version, so switching reads each mode afresh once. Without credentials it starts
# the bundled Smartcar simulator and loads from it, in its own Meltano environment and folder,
# so the simulator's bookmarks never mix with the real application's nor the two versions':
# v2 in environment "simulator" (output/simulator/), v3 in "simulator-v3" (output/simulator-v3/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
usage() {
  echo "usage: bash scripts/demo.sh [target-duckdb|target-jsonl] [--api v2|v3]" >&2
  exit 2
}
loader=target-duckdb
api=
while [ $# -gt 0 ]; do
  case "$1" in
    target-duckdb | target-jsonl) loader=$1 ;;
    --api) [ $# -ge 2 ] || usage; api=$2; shift ;;
    --api=*) api=${1#--api=} ;;
    *) usage ;;
  esac
  shift
done
case "$api" in "" | v2 | v3) ;; *) usage ;; esac
source scripts/setup.sh
meltano=.venv/bin/meltano
echo "Installing the Meltano plugins tap-smartcar-connections and $loader (10 to 30 s the first time)..." >&2
$meltano install tap-smartcar-connections "$loader"

if [ -n "$api" ]; then export TAP_SMARTCAR_CONNECTIONS_API_VERSION=$api; fi
# "<api_version> <True if its credentials are configured>"
read -r api has_credentials < <($meltano config print tap-smartcar-connections 2>/dev/null \
  | .venv/bin/python -c '
import json, sys
config = json.load(sys.stdin)
api = config.get("api_version") or "v2"
needed = ["client_id", "client_secret"] if api == "v3" else ["management_token"]
print(api, all(config.get(name) for name in needed))' \
  || echo "${api:-v2} False")
case "$api" in v2 | v3) ;; *) echo "api_version is $api: use v2 or v3" >&2; exit 2 ;; esac
export TAP_SMARTCAR_CONNECTIONS_API_VERSION=$api
environment=dev
output=output
if [ "$has_credentials" != True ]; then
  settings_file=$(mktemp)
  rm -f "$settings_file"  # the simulator writes it once it listens
  .venv/bin/python -m smartcar_simulator --connections 1000 --settings-file "$settings_file" &
  simulator_pid=$!
  trap 'kill "$simulator_pid" 2>/dev/null || true; rm -f "$settings_file"' EXIT
  for _ in $(seq 100); do [ -s "$settings_file" ] && break; sleep 0.1; done
  # Every URL and credential of both versions, as TAP_SMARTCAR_CONNECTIONS_* variables.
  eval "$(.venv/bin/python - "$settings_file" <<'PY'
import json, shlex, sys
for name, value in json.load(open(sys.argv[1], encoding="utf-8")).items():
    print(f"export TAP_SMARTCAR_CONNECTIONS_{name.upper()}={shlex.quote(value)}")
PY
)"
  if [ "$api" = v3 ]; then
    environment=simulator-v3
    output=output/simulator-v3
    echo "No client_id and client_secret configured: extracting from the bundled Smartcar simulator (API v3)."
  else
    environment=simulator
    output=output/simulator
    echo "No management token configured: extracting from the bundled Smartcar simulator."
  fi
fi
mkdir -p "$output"

# Bookmarks without the file they describe would load only the newest connections: when the
# loader's output is missing, this pipeline starts over. Its state is set to no bookmarks
# (`meltano state clear` would leave none at all, and Meltano warns that it found no state).
start_over() {
  local said
  echo "No $1 yet: resetting this pipeline's bookmarks for a full load." >&2
  if ! said=$($meltano --environment="$environment" state set --force \
    "$environment:tap-smartcar-connections-to-$loader" '{"singer_state": {"bookmarks": {}}}' 2>&1)
  then
    echo "$said" >&2
    exit 1
  fi
}

if [ "$loader" = target-jsonl ]; then
  if [ ! -f "$output/connections.jsonl" ]; then start_over "$output/connections.jsonl"; fi
  declare -A before=()
  for stream in connections webhooks subscriptions; do
    before[$stream]=0
    if [ -f "$output/$stream.jsonl" ]; then before[$stream]=$(wc -l < "$output/$stream.jsonl"); fi
  done
  $meltano --environment="$environment" run tap-smartcar-connections target-jsonl
  .venv/bin/python - "$output" "$api" "${before[connections]}" "${before[webhooks]}" \
    "${before[subscriptions]}" <<'PY'
import collections, json, os, sys
output, api = sys.argv[1], sys.argv[2]
before = dict(zip(("connections", "webhooks", "subscriptions"), map(int, sys.argv[3:])))
def read(stream):
    path = os.path.join(output, f"{stream}.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")] if os.path.exists(path) else []
    return path, rows, rows[before[stream]:]
path, rows, new = read("connections")
print(f"\nLoaded {len(new)} connections this run into {path} ({len(rows)} rows in the file):")
for mode, count in sorted(collections.Counter(r["mode"] for r in new).items()):
    print(f"  {mode:<10} {count}")
if api == "v3":
    for stream in ("webhooks", "subscriptions"):
        path, rows, new = read(stream)
        print(f"Loaded {len(new)} {stream} this run into {path} ({len(rows)} rows in the file)")
print("The files only grow: every run appends what it read (webhooks and subscriptions are")
print(f"read in full every run). To start over, delete {output}/*.jsonl and run this again.")
PY
  exit 0
fi

if [ ! -f "$output/smartcar.duckdb" ]; then start_over "$output/smartcar.duckdb"; fi
$meltano --environment="$environment" run tap-smartcar-connections target-duckdb
# Read it back with the duckdb package that target-duckdb itself uses (same pinned version).
.meltano/loaders/target-duckdb/venv/bin/python - "$output/smartcar.duckdb" "$api" <<'PY'
import shlex
import sys

import duckdb

path, api = sys.argv[1], sys.argv[2]
with duckdb.connect(path, read_only=True) as db:
    tables = {name for (name,) in db.sql("SELECT table_name FROM information_schema.tables").fetchall()}
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
    makes = []
    if api == "v3":
        makes = db.sql(
            "SELECT make, count(*) FROM connections WHERE make IS NOT NULL"
            " GROUP BY make ORDER BY count(*) DESC, make LIMIT 5"
        ).fetchall()
    others = {
        table: db.sql(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
        for table in ("webhooks", "subscriptions")
        if table in tables
    }
    per_webhook = []
    if {"webhooks", "subscriptions"} <= tables:
        per_webhook = db.sql(
            "SELECT w.name, count(s.id) FROM webhooks w LEFT JOIN subscriptions s"
            " ON s.webhookid = w.id GROUP BY w.name ORDER BY w.name"
        ).fetchall()
print(f"\n{path}: {total} rows in table connections, {keys} distinct (userId, vehicleId)")
print("Connections per mode (SELECT mode, count(*) FROM connections GROUP BY mode):")
for mode, count in per_mode:
    print(f"  {mode:<10} {count}")
if newest:
    connected_at, mode, user_id, vehicle_id = newest
    print(f"Newest connection: {connected_at} {mode} user {user_id} vehicle {vehicle_id}")
if makes:
    print("Most connected makes (API v3): " + ", ".join(f"{m} {n}" for m, n in makes))
for table, count in others.items():
    print(f"{count} rows in table {table}")
if per_webhook:
    print("Subscriptions per webhook:")
    for name, count in per_webhook:
        print(f"  {name:<30} {count}")
query = f'import duckdb; db = duckdb.connect("{path}"); db.sql("FROM connections LIMIT 5").show()'
print(f"Query it yourself: .meltano/loaders/target-duckdb/venv/bin/python -c {shlex.quote(query)}")
print("Run it again: only connections newer than each mode's bookmark are read,")
print("and target-duckdb upserts them on (userId, vehicleId): the counts stay the same.")
PY
