#!/usr/bin/env bash
# Interoperability check: a generic, reflection-driven Python gRPC client
# (tests/interop/reflection_client.py, which carries none of Coffer's protos)
# talks to a `coffer dev` instance over mutual TLS.
#
# Usage: tests/interop/run.sh [PATH/TO/coffer]   (default target/debug/coffer)
# Prints `ok - NAME` / `not ok - NAME` per check and a final `N passed, M failed`.
set -euo pipefail

cd "$(dirname "$0")/../.."
repo_root=$(pwd)
coffer=${1:-target/debug/coffer}
case $coffer in
  /*) ;;
  *) coffer="$repo_root/$coffer" ;;
esac
if [[ ! -x $coffer ]]; then
  echo "coffer binary not found or not executable: $coffer" >&2
  exit 2
fi
client="$repo_root/tests/interop/reflection_client.py"

if ! python3 -c 'import grpc, grpc_reflection, google.protobuf' >/dev/null 2>&1; then
  echo "installing grpcio, grpcio-reflection and protobuf" >&2
  python3 -m pip install --quiet grpcio grpcio-reflection protobuf
fi

tmp=$(mktemp -d)
coffer_pid=
cleanup() {
  if [[ -n $coffer_pid ]]; then
    kill "$coffer_pid" 2>/dev/null || true
    wait "$coffer_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
addr="127.0.0.1:$port"
dev="$tmp/dev"

"$coffer" dev --dir "$dev" --listen "$addr" >"$tmp/coffer.log" 2>&1 &
coffer_pid=$!

base=(python3 "$client" --addr "$addr" --cacert "$dev/ca.pem" --server-name localhost)
admin=("${base[@]}" --cert "$dev/admin-cert.pem" --key "$dev/admin-key.pem")

ready=0
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
  if ! kill -0 "$coffer_pid" 2>/dev/null; then
    break
  fi
  if [[ -s $dev/demo-key-id ]] && "${admin[@]}" list >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.5
done
if ((ready == 0)); then
  echo "coffer dev did not become ready within 60 s; its log:" >&2
  cat "$tmp/coffer.log" >&2 || true
  echo "0 passed, 1 failed"
  exit 1
fi

passed=0
failed=0
pass() {
  echo "ok - $1"
  passed=$((passed + 1))
}
fail() {
  echo "not ok - $1"
  shift
  local line
  for line in "$@"; do
    echo "#   $line"
  done
  failed=$((failed + 1))
}

# Runs the client; sets $out (stdout) and $rc (exit code). Never fails the script.
run_client() {
  rc=0
  out=$("$@" 2>"$tmp/client.err") || rc=$?
}

# json_get JSON EXPR: evaluates a Python expression over the parsed JSON `j`;
# prints the result (empty on any error).
json_get() {
  python3 -c '
import json, sys
try:
    j = json.loads(sys.argv[1])
    v = eval(sys.argv[2])
    print("" if v is None else v)
except Exception:
    print("")
' "$1" "$2"
}

# a. reflection lists the keys and health services
run_client "${admin[@]}" list
if ((rc == 0)) && grep -qx 'coffer.keys.v1.Keys' <<<"$out" && grep -qx 'coffer.audit.v1.Audit' <<<"$out" && grep -qx 'grpc.health.v1.Health' <<<"$out"; then
  pass "reflection lists coffer.keys.v1.Keys, coffer.audit.v1.Audit and grpc.health.v1.Health"
else
  fail "reflection lists coffer.keys.v1.Keys, coffer.audit.v1.Audit and grpc.health.v1.Health" "exit $rc" "$out" "$(cat "$tmp/client.err")"
fi

# b. CreateKey
run_client "${admin[@]}" invoke coffer.keys.v1.Keys/CreateKey '{"description":"interop"}'
key_id=""
state=$(json_get "$out" 'j["key_metadata"]["key_state"]')
if ((rc == 0)); then
  key_id=$(json_get "$out" 'j["key_metadata"]["key_id"]')
fi
if ((rc == 0)) && [[ $state == Enabled && -n $key_id ]]; then
  pass "CreateKey returns an Enabled key"
else
  fail "CreateKey returns an Enabled key" "exit $rc" "$out" "$(cat "$tmp/client.err")"
fi

# c. Encrypt then Decrypt round trip
blob=""
if [[ -n $key_id ]]; then
  request=$(python3 -c 'import json, sys; print(json.dumps({"key_id": sys.argv[1], "plaintext": "aW50ZXJvcA=="}))' "$key_id")
  run_client "${admin[@]}" invoke coffer.keys.v1.Keys/Encrypt "$request"
  if ((rc == 0)); then
    blob=$(json_get "$out" 'j["ciphertext_blob"]')
  fi
  if [[ -n $blob ]]; then
    pass "Encrypt returns a ciphertext_blob"
  else
    fail "Encrypt returns a ciphertext_blob" "exit $rc" "$out" "$(cat "$tmp/client.err")"
  fi
else
  fail "Encrypt returns a ciphertext_blob" "no key id from CreateKey"
fi

if [[ -n $blob ]]; then
  request=$(python3 -c 'import json, sys; print(json.dumps({"ciphertext_blob": sys.argv[1]}))' "$blob")
  run_client "${admin[@]}" invoke coffer.keys.v1.Keys/Decrypt "$request"
  plaintext=$(json_get "$out" 'j["plaintext"]')
  if ((rc == 0)) && [[ $plaintext == "aW50ZXJvcA==" ]]; then
    pass "Decrypt without key_id returns the original plaintext"
  else
    fail "Decrypt without key_id returns the original plaintext" "exit $rc" "$out" "$(cat "$tmp/client.err")"
  fi
else
  fail "Decrypt without key_id returns the original plaintext" "no ciphertext blob from Encrypt"
fi

# d. Decrypt of a tampered blob
if [[ -n $blob ]]; then
  tampered=$(python3 -c '
import base64, sys
raw = bytearray(base64.b64decode(sys.argv[1]))
raw[len(raw) // 2] ^= 0x01
print(base64.b64encode(bytes(raw)).decode())
' "$blob")
  request=$(python3 -c 'import json, sys; print(json.dumps({"ciphertext_blob": sys.argv[1]}))' "$tampered")
  run_client "${admin[@]}" invoke coffer.keys.v1.Keys/Decrypt "$request"
  code=$(json_get "$out" 'j["code"]')
  if ((rc == 3)) && [[ $code == INVALID_ARGUMENT ]]; then
    pass "Decrypt of a tampered blob is INVALID_ARGUMENT"
  else
    fail "Decrypt of a tampered blob is INVALID_ARGUMENT" "exit $rc" "$out" "$(cat "$tmp/client.err")"
  fi
else
  fail "Decrypt of a tampered blob is INVALID_ARGUMENT" "no ciphertext blob from Encrypt"
fi

# e. DescribeKey of an unknown key
unknown=$(python3 -c 'import uuid; print(uuid.uuid4())')
run_client "${admin[@]}" invoke coffer.keys.v1.Keys/DescribeKey "{\"key_id\":\"$unknown\"}"
code=$(json_get "$out" 'j["code"]')
if ((rc == 3)) && [[ $code == NOT_FOUND ]]; then
  pass "DescribeKey of an unknown key is NOT_FOUND"
else
  fail "DescribeKey of an unknown key is NOT_FOUND" "exit $rc" "$out" "$(cat "$tmp/client.err")"
fi

# f. no client certificate, no service
run_client "${base[@]}" invoke coffer.keys.v1.Keys/ListKeys '{}'
code=$(json_get "$out" 'j["code"]')
if ((rc == 3)) && [[ -n $code && $code != OK ]]; then
  pass "a call without a client certificate is refused ($code)"
else
  fail "a call without a client certificate is refused" "exit $rc" "$out" "$(cat "$tmp/client.err")"
fi

# g. the audit service shows the caller its own Decrypt
run_client "${admin[@]}" invoke coffer.audit.v1.Audit/LookupEvents \
  '{"lookup_attributes":[{"attribute_key":"EventName","attribute_value":"Decrypt"}],"max_results":50}'
decrypts=$(json_get "$out" 'sum(1 for e in j.get("events", []) if e["event_name"] == "Decrypt" and e["username"] == "admin")')
if ((rc == 0)) && [[ -n $decrypts && $decrypts -ge 1 ]]; then
  pass "LookupEvents lists the Decrypt calls made above ($decrypts)"
else
  fail "LookupEvents lists the Decrypt calls made above" "exit $rc" "$out" "$(cat "$tmp/client.err")"
fi

echo "$passed passed, $failed failed"
((failed == 0))
