#!/usr/bin/env bash
# Build and run the C++ unit tests (tests/cpp: every test_*.cpp, i.e. the thread pool, the
# process pool and its scheduler) under sanitizers, each in its own build directory under
# build/ (gitignored):
#
#   bash tests/cpp/run_sanitizers.sh            # address (ASan + UBSan), then thread (TSan)
#   bash tests/cpp/run_sanitizers.sh address    # one of: address, thread, none
#
# Needs cmake, g++ (with libasan/libtsan, as Debian's g++ has) and a Python with pip:
# oneTBB's headers and TBBConfig.cmake come from the tbb-devel wheel (the version the
# package builds against), installed once into build/cpp-tbb, never into a venv.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
python="${PYTHON:-$(command -v python3 || command -v python)}"
jobs="$(nproc 2>/dev/null || echo 2)"
kinds=("$@")
[ ${#kinds[@]} -eq 0 ] && kinds=(address thread)

tbb_prefix="$root/build/cpp-tbb"
tbb_version="$(sed -n 's/.*"tbb-devel==\([0-9.]*\)".*/\1/p' pyproject.toml)"
if ! ls "$tbb_prefix"/lib*/cmake/*/TBBConfig.cmake >/dev/null 2>&1; then
    # --ignore-installed: the tbb runtime must land in the prefix too (the devel
    # wheel's libtbb.so points at it), even where the calling venv already has it.
    "$python" -m pip install -q --disable-pip-version-check --ignore-installed \
        --prefix "$tbb_prefix" "tbb-devel==${tbb_version:?no tbb-devel pin in pyproject.toml}"
fi
tbb_dir="$(dirname "$(ls "$tbb_prefix"/lib*/cmake/*/TBBConfig.cmake | head -n 1)")"

# halt_on_error: the first finding fails the run; TSan's second_deadlock_stack helps
# read lock-order reports.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"

for kind in "${kinds[@]}"; do
    case "$kind" in
        address|thread) sanitize="$kind" ;;
        none) sanitize="" ;;
        *) echo "run_sanitizers.sh: unknown kind '$kind' (address, thread or none)" >&2; exit 2 ;;
    esac
    build="$root/build/cpp-tests-$kind"
    echo "== C++ tests, sanitizer: $kind ($build)"
    start=$SECONDS
    cmake -S tests/cpp -B "$build" -DTBB_DIR="$tbb_dir" -DGILFREE_SANITIZE="$sanitize" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j "$jobs"
    ctest --test-dir "$build" --output-on-failure
    echo "== $kind: passed in $((SECONDS - start)) s"
done
