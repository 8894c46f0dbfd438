#!/usr/bin/env bash
# The whole test suite: install what is needed, build with AddressSanitizer and
# UndefinedBehaviorSanitizer, run every test with ctest. Tests that need
# ../shared (MMLU, stories260K) skip with a message when it is absent; those
# messages are repeated after the run. Extra arguments go to ctest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" sanitize
cd "$root/build-asan"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
set +e
ctest --output-on-failure --timeout 900 "$@" | tee ctest.out
rc=${PIPESTATUS[0]}
set -e
skips=$(grep -h "SKIP:" Testing/Temporary/LastTest.log 2>/dev/null | sort -u || true)
if [ -n "$skips" ]; then
    echo
    echo "skipped checks:"
    echo "$skips"
    echo
    grep -E "tests passed|tests failed" ctest.out | tail -1
fi
exit "$rc"
