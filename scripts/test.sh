#!/usr/bin/env bash
# The whole test suite: install what is needed, build with AddressSanitizer and
# UndefinedBehaviorSanitizer, run every test with ctest. Tests that need
# ../shared (MMLU, stories260K) skip with a message when it is absent.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" sanitize
cd "$root/build-asan"
# llama.cpp itself is not instrumented; its allocations are not ours to judge.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
ctest --output-on-failure --timeout 900 "$@"
