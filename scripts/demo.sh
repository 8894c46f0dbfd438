#!/usr/bin/env bash
# The main job: install what is needed, build, make the default model once
# (a synthetic Gemma 3 270M, q8_0), then show the local prompt cache at work.
# Extra arguments go to `kvmesh demo` (e.g. --threads 2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" release
model=$root/models/gemma3-270m-q8_0.gguf
if [ ! -f "$model" ]; then
    echo "[demo] generating the default model (synthetic gemma3-270m, q8_0, ~300 MB) once" >&2
    "$root/build/kvmesh" gen-model --preset gemma3-270m --type q8_0 --out "$model"
fi
exec "$root/build/kvmesh" demo --model "$model" "$@"
