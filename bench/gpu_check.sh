#!/usr/bin/env bash
# One call on a lent GPU machine (offline; torch, triton, pytest and pytest-benchmark installed):
# install this checkout, run the whole test suite on CUDA, run the GPU benchmarks, and leave
# everything under $OUT (default bench/results/<date>-<gpu>) for committing to bench/results/.
#
#   bash bench/gpu_check.sh [all|tests|bench]     # default: all
#
# Steps are time-limited so that one call fits a 10-minute device lease: tests get
# STTR_TEST_TIMEOUT seconds (default 330), benchmarks STTR_BENCH_TIMEOUT (default 230); a step cut
# short still leaves its log. The last lines printed are the summary.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
step=${1:-all}
python=${PYTHON:-python3}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr ' ' '-')
out=${OUT:-bench/results/$(date -u +%Y%m%d)-${gpu:-no-gpu}}
mkdir -p "$out"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$python" - <<'EOF'
import platform, torch, triton
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("triton", triton.__version__)
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print("device", props.name, "sm", f"{props.major}{props.minor}", "multiprocessors", props.multi_processor_count)
EOF
} > "$out/environment.txt" 2>&1

"$python" -m pip install -e . --no-deps --no-build-isolation > "$out/pip_install.log" 2>&1 \
  || { echo "pip install failed; see $out/pip_install.log"; tail -n 20 "$out/pip_install.log"; exit 1; }

tests_rc=skipped
if [ "$step" = all ] || [ "$step" = tests ]; then
  timeout "${STTR_TEST_TIMEOUT:-330}" "$python" -m pytest -q -rs --durations=15 > "$out/tests.txt" 2>&1
  tests_rc=$?
fi

bench_rc=skipped
if [ "$step" = all ] || [ "$step" = bench ]; then
  STTR_BENCH_SUMMARY="$out/bench_attention_summary.txt" \
    timeout "${STTR_BENCH_TIMEOUT:-230}" "$python" -m pytest bench/bench_spatial_attention.py \
    bench/bench_temporal_attention.py -q --benchmark-json "$out/bench_attention.json" \
    --benchmark-group-by=group > "$out/bench_attention.txt" 2>&1
  bench_rc=$?
fi

echo "== results in $out (tests exit $tests_rc, benchmarks exit $bench_rc; 124 = timed out)"
cat "$out/environment.txt"
[ -f "$out/tests.txt" ] && tail -n 25 "$out/tests.txt"
[ -f "$out/bench_attention_summary.txt" ] && cat "$out/bench_attention_summary.txt"
[ "$tests_rc" = 0 ] || [ "$tests_rc" = skipped ] || exit 1
[ "$bench_rc" = 0 ] || [ "$bench_rc" = skipped ] || exit 1
exit 0
