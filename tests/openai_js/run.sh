#!/bin/sh
# Runs client_test.mjs (the official OpenAI JavaScript client) against a
# kvmesh node on a free loopback port, with an API key. Skips with a message
# when node or the npm package (installed by scripts/setup.sh) is missing.
# usage: run.sh KVMESH_BIN MODEL NPM_DIR
set -eu
bin=$1 model=$2 npm_dir=$3
case "$npm_dir" in /*) ;; *) npm_dir=$(pwd)/$npm_dir ;; esac
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null 2>&1 || [ ! -f "$npm_dir/node_modules/openai/package.json" ]; then
    echo "SKIP: node or the npm package openai is missing (scripts/setup.sh installs it into $npm_dir)"
    exit 0
fi
[ -f "$model" ] || { echo "SKIP: test model $model missing"; exit 0; }
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
printf 'js-client-key-0123\n' >"$tmp/key"
chmod 600 "$tmp/key"
# --queue 4: a burst of the test overflows it (the client retries when told)
"$bin" node --model "$model" --listen 127.0.0.1:0 --port-file "$tmp/port" --api-key-file "$tmp/key" --queue 4 &
pid=$!
i=0
while [ ! -s "$tmp/port" ]; do
    i=$((i + 1))
    [ $i -gt 600 ] && { echo "kvmesh node did not start"; exit 1; }
    kill -0 "$pid" 2>/dev/null || { echo "kvmesh node exited"; exit 1; }
    sleep 0.1
done
port=$(cat "$tmp/port")
# ESM resolves packages from the script's directory: run a copy beside node_modules
ln -s "$npm_dir/node_modules" "$tmp/node_modules"
cp "$here/client_test.mjs" "$tmp/"
node "$tmp/client_test.mjs" "http://127.0.0.1:$port" js-client-key-0123
kill "$pid"
wait "$pid"
status=$?
pid=
[ $status -eq 0 ] || { echo "kvmesh node exited with $status after SIGTERM"; exit 1; }
