#!/bin/sh
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a
# bounded time: a smoke run in the test suite, longer by hand:
#   tests/fuzz/run.sh <llama prefix> <tiny model> <work dir> [seconds per target]
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
prefix=$1
model=$2
work=$3
secs=${4:-15}
if ! command -v clang >/dev/null 2>&1; then
    echo "SKIP: clang not installed (scripts/setup.sh installs it)"
    exit 0
fi
mkdir -p "$work"
cflags="-std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I$src/src -I$prefix/include"
clang $cflags "$src/tests/fuzz/fuzz_blob.c" "$src/src/blob.c" "$src/src/prefix.c" "$src/src/util.c" -lxxhash -lzstd -lsodium -o "$work/fuzz_blob"
clang $cflags "$src/tests/fuzz/fuzz_catalog.c" "$src/src/catalog.c" "$src/src/util.c" -lbloom -lxxhash -lm -o "$work/fuzz_catalog"
clang $cflags "$src/tests/fuzz/fuzz_mmlu_csv.c" "$src/src/mmlu.c" "$src/src/util.c" -o "$work/fuzz_mmlu_csv"
clang $cflags "$src/tests/fuzz/fuzz_gossip.c" "$src/src/members.c" "$src/src/netallow.c" "$src/src/prefix.c" "$src/src/util.c" -ljansson -lxxhash -lm -lpthread -o "$work/fuzz_gossip"
clang $cflags "$src/tests/fuzz/fuzz_peerauth.c" "$src/src/peerauth.c" "$src/src/util.c" -lsodium -lpthread -o "$work/fuzz_peerauth"
clang $cflags "$src/tests/fuzz/fuzz_peerframe.c" "$src/src/peerframe.c" "$src/src/util.c" -lsodium -o "$work/fuzz_peerframe"
clang $cflags "$src/tests/fuzz/fuzz_state.c" "$src/src/engine.c" "$src/src/prefix.c" "$src/src/util.c" \
    -L"$prefix/lib" -Wl,--disable-new-dtags,-rpath,"$prefix/lib" -lllama -lggml -lggml-base -lxxhash -lpthread -lm \
    -o "$work/fuzz_state"
# llama.cpp is not instrumented and keeps its own allocations for the process.
export ASAN_OPTIONS=detect_leaks=0
for t in blob catalog mmlu_csv state gossip peerauth peerframe; do
    mkdir -p "$work/corpus-$t"
done
KVMESH_FUZZ_MODEL=$model KVMESH_FUZZ_SEED_OUT="$work/corpus-state/seed" "$work/fuzz_state" -runs=0 "$work/corpus-state" >/dev/null 2>&1
KVMESH_FUZZ_SEED_OUT="$work/corpus-blob/seed" "$work/fuzz_blob" -runs=0 "$work/corpus-blob" >/dev/null 2>&1
for t in blob catalog mmlu_csv state gossip peerauth peerframe; do
    echo "fuzz_$t: ${secs}s"
    if ! KVMESH_FUZZ_MODEL=$model "$work/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 \
            -artifact_prefix="$work/" "$work/corpus-$t" >"$work/fuzz_$t.log" 2>&1; then
        tail -40 "$work/fuzz_$t.log"
        echo "fuzz_$t found a failing input (saved in $work)"
        exit 1
    fi
    grep -E "stat::number_of_executed_units" "$work/fuzz_$t.log" || true
done
