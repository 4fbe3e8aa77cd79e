#!/usr/bin/env bash
# One call on a lent GPU machine (offline; its image has torch, triton, pytest, pytest-benchmark and
# compute-sanitizer): check the fused backends and time them, within six minutes, and always come
# back with what was measured. Everything goes under $OUT (default /tmp/sttr-gpu-check); the last
# lines printed are the summary.
#
#   bash bench/gpu_check.sh [core|models|autotune] [--plan]
#
#   core      (default) install, environment, cuda-build, smoke check, compute-sanitizer, GPU tests,
#             core benchmarks, report
#   models    install, environment, cuda-build, the unit and whole-network benchmarks, report
#   autotune  install, environment, the smoke check at real shapes with autotuning on: which configs win
#   --plan    print the steps and their time limits, run nothing
#
# Every step runs under `timeout -s INT`: pytest, interrupted, still prints its failures and
# pytest-benchmark still writes its JSON. Configs are pinned (STTR_PIN_CONFIGS=1) except in
# autotune, so timings are reproducible and no step waits on autotuning.
# Keep the results: python bench/report.py $OUT/bench.json --save bench/results
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
mode=core
plan_only=0
for arg in "$@"; do
  case "$arg" in
    core|models|autotune) mode=$arg ;;
    --plan) plan_only=1 ;;
    *) echo "gpu_check.sh: error: unknown argument '$arg' (expected core, models, autotune or --plan)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
out=${OUT:-/tmp/sttr-gpu-check}
grace=1  # seconds between SIGINT and SIGKILL for a step that ignores the interrupt

# name:limit in seconds, in order
case "$mode" in
  core) steps=(install:40 environment:15 cuda-build:65 smoke:50 memcheck:30 tests:60 bench:70 report:15) ;;
  models) steps=(install:40 environment:15 cuda-build:65 models:200 report:15) ;;
  autotune) steps=(install:40 environment:15 autotune:275) ;;
esac

total=0
for step in "${steps[@]}"; do total=$((total + ${step#*:} + grace)); done
if [ "$plan_only" = 1 ]; then
  echo "bench/gpu_check.sh $mode: ${#steps[@]} steps, at most $total s (each limit + ${grace} s to stop)"
  for step in "${steps[@]}"; do printf '  %-12s %4d s\n' "${step%%:*}" "${step#*:}"; done
  exit 0
fi
mkdir -p "$out"

run_install() {
  # Without the cuda backend's extension: its build gets a step of its own, so that a slow or
  # failed build cannot cost the package (the Triton steps need only the install).
  STTR_SKIP_CUDA_BUILD=1 "$python" -m pip install -e . --no-deps --no-build-isolation --no-index
}

run_cuda-build() {
  # The cuda backend's just-in-time build (ninja, nvcc; this GPU's architecture only), cached for
  # the steps after it; without it their cuda rows skip with the reason.
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$python" -c 'import torch
from sttr_fast.ops import cuda_backend
cuda_backend.library(torch.device("cuda"))
print("cuda backend built and loaded")'
}

run_environment() {
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv
  "$python" -c 'import json, sys; sys.path.insert(0, "bench"); from measure import environment; print(json.dumps(environment(), indent=1))'
  "$python" -c 'from sttr_fast import ops; print("attention backends:", ops.available_backends())'
}

run_smoke() { STTR_PIN_CONFIGS=1 "$python" bench/gpu_smoke.py --configs "$out/configs.json"; }

run_memcheck() {
  # Without PyTorch's caching allocator every tensor is its own allocation, so memcheck sees a
  # kernel step outside its tensor instead of into a neighbour in the same cached block.
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 STTR_PIN_CONFIGS=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
    "$python" bench/gpu_smoke.py --small
}

run_tests() {
  # The kernels' GPU tests; the cuda backend's host-build and nvcc tests are CPU work CI does.
  local files=(tests/test_spatial_attention_triton.py tests/test_temporal_attention_triton.py
               tests/test_cuda_backend_gpu.py)
  STTR_PIN_CONFIGS=1 "$python" -m pytest "${files[@]}" -m "not slow" -q -rfEs -p no:cacheprovider \
    --junitxml="$out/tests.xml"
}

run_bench() {
  STTR_PIN_CONFIGS=1 "$python" -m pytest bench/bench_spatial_attention.py bench/bench_temporal_attention.py \
    -k "cuda-" -s -q -rs -p no:cacheprovider --benchmark-json "$out/bench.json" --benchmark-disable-gc
}

run_models() {
  STTR_PIN_CONFIGS=1 "$python" -m pytest bench/bench_units.py bench/bench_model.py -k "cuda-" -s -q -rs \
    -p no:cacheprovider --benchmark-json "$out/bench.json"
}

run_autotune() { "$python" bench/gpu_smoke.py --configs "$out/configs.json"; }

run_report() {
  "$python" bench/report.py "$out/bench.json" --out "$out/report" && "$python" bench/report.py --brief "$out/bench.json"
}

declare -A status
for step in "${steps[@]}"; do
  name=${step%%:*}
  limit=${step#*:}
  echo "== $name (limit $limit s)"
  start=$SECONDS
  timeout -s INT -k "$grace" "$limit" bash -c "$(declare -f "run_$name"); $(declare -p python out); run_$name" \
    > >(tee "$out/$name.log") 2>&1
  rc=$?
  case $rc in
    0) status[$name]="ok" ;;
    124|137) status[$name]="cut at $limit s" ;;
    *) status[$name]="exit $rc" ;;
  esac
  echo "== $name: ${status[$name]} after $((SECONDS - start)) s"
  # Nothing later can run without the package installed.
  if [ "$name" = install ] && [ "$rc" != 0 ]; then tail -n 20 "$out/install.log"; break; fi
done

echo
echo "== summary ($mode; files under $out)"
for step in "${steps[@]}"; do
  name=${step%%:*}
  printf '  %-12s %s\n' "$name" "${status[$name]:-not run}"
done
[ -f "$out/smoke.log" ] && grep -E '^gpu_smoke:' "$out/smoke.log" | tail -n 1
[ -f "$out/tests.log" ] && tail -n 1 "$out/tests.log"
[ -f "$out/report.log" ] && grep -v '^wrote ' "$out/report.log"
failed=0
for step in "${steps[@]}"; do [ "${status[${step%%:*}]:-}" = ok ] || failed=1; done
exit $failed
