#!/usr/bin/env bash
# Runs one ghz scenario against a running `coffer dev`, filling in the demo
# key id and ciphertext that `coffer dev` wrote to its directory.
#
#   tests/load/ghz/run.sh encrypt [coffer-dev] [extra ghz flags...] [HOST:PORT]
#
# The configs dial 127.0.0.1:8443, `coffer dev`'s default; for one started
# with `--listen`, give its address last (ghz lets it override the config's).
#
# Scenarios: encrypt, decrypt, generate-data-key, health (the files beside
# this script). The same RPCs are measured by `coffer bench` where ghz is
# not installed.
set -euo pipefail
scenario=${1:?usage: run.sh SCENARIO [DEV_DIR] [ghz flags...] [HOST:PORT]}
shift
# The second argument is the dev directory only when it is one: `run.sh
# encrypt -n 1000` passes `-n 1000` on to ghz.
dev_dir=coffer-dev
if [[ $# -ge 1 && -d $1 ]]; then
  dev_dir=$1
  shift
fi
here=$(cd "$(dirname "$0")" && pwd)
config="$here/$scenario.json"
[[ -f $config ]] || { echo "no such scenario: $scenario" >&2; exit 2; }
command -v ghz >/dev/null || { echo "ghz is not installed; use: coffer bench --addr 127.0.0.1:8443 --dir $dev_dir" >&2; exit 2; }
key_id=$(cat "$dev_dir/demo-key-id")
ciphertext=$(cat "$dev_dir/demo-ciphertext.b64")
filled=$(mktemp)
trap 'rm -f "$filled"' EXIT
sed -e "s|DEMO_KEY_ID|$key_id|" -e "s|DEMO_CIPHERTEXT|$ciphertext|" -e "s|coffer-dev/|$dev_dir/|g" "$config" > "$filled"
ghz --config "$filled" "$@"
