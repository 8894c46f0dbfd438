#!/usr/bin/env bash
# Configures and builds kvmesh into a build directory (after scripts/setup.sh).
#   scripts/build.sh [release|sanitize]     -> build/ or build-asan/
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps=${KVMESH_DEPS:-$root/.deps}
kind=${1:-release}
if [ -n "${LLAMA_CPP_DIR:-}" ]; then prefix=$deps/llama-custom/prefix; else prefix=$deps/llama/prefix; fi
case "$kind" in
    release)  dir=$root/build;      flags=(-DCMAKE_BUILD_TYPE=Release) ;;
    sanitize) dir=$root/build-asan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVMESH_SANITIZE=ON) ;;
    *) echo "usage: scripts/build.sh [release|sanitize]" >&2; exit 2 ;;
esac
mkdir -p "$dir"
cmake -S "$root" -B "$dir" -DCMAKE_PREFIX_PATH="$prefix" -DKVMESH_NPM_DIR="$deps/npm" "${flags[@]}" >"$dir/configure.log" 2>&1 \
    || { cat "$dir/configure.log" >&2; exit 1; }
cmake --build "$dir" -j"$(nproc)" 2>&1 | grep -vE '^\[ *[0-9]+%\]|^-- ' >&2 || true
[ "${PIPESTATUS[0]}" -eq 0 ] && [ -x "$dir/kvmesh" ] || { echo "build failed" >&2; exit 1; }
