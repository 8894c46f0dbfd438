#!/bin/sh
# Generates the synthetic models the tests use (once; kept in the build directory).
set -e
bin=$1
dir=$2
mkdir -p "$dir"
for spec in "tiny f16" "tiny q8_0" "tiny q4_0"; do
    set -- $spec
    out="$dir/$1-$2.gguf"
    [ -f "$out" ] || "$bin" gen-model --preset "$1" --type "$2" --seed 7 --out "$out"
done
# A second tiny model with other weights: same shape, different fingerprint.
[ -f "$dir/tiny-f16-seed8.gguf" ] || "$bin" gen-model --preset tiny --type f16 --seed 8 --out "$dir/tiny-f16-seed8.gguf"
