#!/usr/bin/env bash
# Installs what kvmesh needs to build, idempotently:
#   1. Debian packages (only the missing ones; apt-get runs only when something is missing),
#   2. llama.cpp from the pinned source (the git bundle inside the npm package
#      node-llama-cpp@3.22.1, llama.cpp tag v0.5.0), built once into a cached local prefix.
#
# Environment:
#   LLAMA_CPP_DIR=<source tree>   build this llama.cpp tree instead of the pinned bundle
#   KVMESH_DEPS=<dir>             where the cached prefix lives (default: <repo>/.deps)
#
# On success the llama.cpp prefix is $KVMESH_DEPS/llama/prefix (llama-custom/prefix with
# LLAMA_CPP_DIR); scripts/build.sh points CMake at it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps=${KVMESH_DEPS:-$root/.deps}
node_llama_cpp_version=3.22.1

say() { printf '[setup] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- Debian packages
packages=(build-essential cmake pkg-config git ca-certificates
          libcmocka-dev libxxhash-dev libbloom-dev libhiredis-dev libzstd-dev redis-server
          clang libclang-rt-14-dev)   # libFuzzer, for tests/fuzz
packages+=(iproute2)   # ip and tc, for kvmesh bench link
packages+=(gnuplot-nox)   # the charts of kvmesh bench mmlu
packages+=(libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libsodium-dev)   # kvmesh node: HTTP API, peer client, JSON, mesh MACs
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        say "error: packages missing and not root; run as root or install: ${missing[*]}"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- npm (tests only)
# The official OpenAI JavaScript client, for the test that kvmesh node works
# with it unchanged. Pinned; installed once into $deps/npm. Without network the
# test skips with a message (nothing else needs it).
openai_js_version=7.55.0
if [ ! -f "$deps/npm/node_modules/openai/package.json" ] \
   || ! grep -q "\"version\": \"$openai_js_version\"" "$deps/npm/node_modules/openai/package.json"; then
    say "installing the OpenAI JavaScript client (npm openai@$openai_js_version) into $deps/npm"
    mkdir -p "$deps/npm"
    (cd "$deps/npm" && npm install --no-audit --no-fund --silent --no-save "openai@$openai_js_version" >/dev/null 2>&1) \
        || say "warning: npm install openai failed; the OpenAI client test will be skipped"
fi

# ---------------------------------------------------------------- llama.cpp
# The build is native (-march=native); the stamp records the CPU flags so a cached prefix
# built on another CPU is rebuilt rather than crashing with an illegal instruction.
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)
llama=$deps/llama
if [ -n "${LLAMA_CPP_DIR:-}" ]; then
    src=$(cd "$LLAMA_CPP_DIR" && pwd)
    origin="dir:$src"
    llama=$deps/llama-custom
else
    src=$llama/src
    origin="node-llama-cpp@$node_llama_cpp_version"
fi
prefix=$llama/prefix
stamp="origin=$origin cpu=$cpu_flags build=shared-release-1"

if [ -f "$prefix/.kvmesh-stamp" ] && [ "$(cat "$prefix/.kvmesh-stamp")" = "$stamp" ]; then
    exit 0
fi

mkdir -p "$llama"
if [ -z "${LLAMA_CPP_DIR:-}" ] && [ ! -f "$src/include/llama.h" ]; then
    say "fetching llama.cpp source: npm pack node-llama-cpp@$node_llama_cpp_version"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "node-llama-cpp@$node_llama_cpp_version" >/dev/null)
    tar -xzf "$tmp"/node-llama-cpp-*.tgz -C "$tmp" package/llama/gitRelease.bundle
    rm -rf "$src.partial"
    git clone -q "$tmp/package/llama/gitRelease.bundle" "$src.partial" 2>/dev/null
    mv "$src.partial" "$src"
fi
[ -f "$src/include/llama.h" ] || { say "error: $src is not a llama.cpp source tree"; exit 1; }

say "building llama.cpp ($origin) into $prefix; this takes a few minutes once"
rm -rf "$llama/build" "$prefix"
cmake -S "$src" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON >"$llama/configure.log" 2>&1 \
    || { say "error: llama.cpp configure failed, see $llama/configure.log"; exit 1; }
cmake --build "$llama/build" --target llama -j"$(nproc)" >"$llama/build.log" 2>&1 \
    || { say "error: llama.cpp build failed, see $llama/build.log"; exit 1; }
cmake --install "$llama/build" >"$llama/install.log" 2>&1 \
    || { say "error: llama.cpp install failed, see $llama/install.log"; exit 1; }
# The vocab GGUFs (tokenizers for gen-model) live in the source tree's models/.
mkdir -p "$prefix/share/kvmesh"
cp "$src"/models/ggml-vocab-*.gguf "$prefix/share/kvmesh/" 2>/dev/null || true
echo "$stamp" >"$prefix/.kvmesh-stamp"
say "llama.cpp ready in $prefix"
