#!/usr/bin/env bash
# The main job: install what is needed, build, then run `kvmesh demo`: three
# nodes on loopback (emulated slow devices) sharing prompt states, compared
# with the same stream on nodes that do not share. The demo makes the default
# model (a synthetic Gemma 3 270M, q8_0, ~300 MB) into models/ on first use.
# Extra arguments go to `kvmesh demo` (e.g. --nodes 4 --prompts 30).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" release
cd "$root" # the default model path, models/gemma3-270m-q8_0.gguf, is relative
exec "$root/build/kvmesh" demo "$@"
