"""How every benchmark in bench/ times, measures memory and records its row.

One row = one pytest-benchmark entry whose ``extra_info`` carries what ``bench/report.py`` reads:
``suite`` (core, unit, model), ``implementation``, ``median_ms`` and ``peak_bytes``, plus, for the
attention cores on a GPU, the speed-of-light bound and the cost model's prediction.

- CUDA: CUDA-event timing (``triton.testing.do_bench``, which also flushes the L2 cache before every
  repetition), median of many repetitions, warm-up outside the timing, and the inputs rotated over
  several copies so that a layer small enough to sit in L2 is not timed from it. Peak memory is
  ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
- CPU: pytest-benchmark's own rounds (median), one warm-up round outside them. Peak memory is the
  process's resident set sampled every millisecond during one call, above its level before the call:
  during that call glibc gives every freed block of 128 KiB or more back to the system, so this
  follows the live tensors closely, but it is a sample, not an allocator count. The timed rounds
  run with glibc's thresholds where its own defaults settle in a long-running program (freed
  tensors up to 32 MiB reused from its heap), not with the measurement's, which would make every
  large allocation fault its pages in again.

Rows print as they finish when pytest runs with ``-s`` (the GPU script relies on it).
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import os
import statistics
import sys
import threading
import time

import pytest
import torch

CUDA = torch.cuda.is_available()
# Devices a benchmark row can ask for; the cuda rows skip with this reason on a machine without one.
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# The GPU image's L2 is 50-60 MB; inputs are rotated until the rotation spans twice that.
ROTATION_BYTES = 128 * 2**20
MAX_ROTATION = 8
# Rounds of pytest-benchmark's own timing; on CUDA it only backs up the event timing.
CPU_ROUNDS = 7
CUDA_ROUNDS = 3


def backend_unavailable(implementation: str, device: str, compile_included: bool) -> str | None:
    """Why a row of ``implementation`` (an attention backend, ``compiled`` or an SDPA peer) cannot
    run on ``device`` here, or None."""
    from sttr_fast import ops

    if device == "cuda" and not CUDA:
        return "needs a CUDA GPU"
    if implementation in ("triton", "cuda"):
        if device == "cpu":
            return f"the {implementation} backend runs on CUDA tensors"
        if implementation not in ops.available_backends():
            return f"the {implementation} backend is not available here (available: {ops.available_backends()})"
    if implementation == "compiled" and not compile_included:
        return ("cold torch.compile (tens of seconds per case on a small CPU) is left out of this "
                "run; STTR_BENCH_COMPILE=1 includes it")
    return None


def rotation(make_inputs, input_bytes: int, device: torch.device) -> list:
    """Copies of ``make_inputs(i)`` to cycle through: enough to exceed the L2 cache on CUDA."""
    count = 1
    if device.type == "cuda":
        count = max(1, min(MAX_ROTATION, -(-ROTATION_BYTES // max(1, input_bytes))))
    return [make_inputs(i) for i in range(count)]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_median_ms(step, inputs: list) -> float:
    """Median CUDA-event time of ``step(inputs[i])``, cycling through ``inputs``."""
    import triton.testing

    cycle = itertools.cycle(inputs)
    return triton.testing.do_bench(lambda: step(next(cycle)), warmup=25, rep=100, return_mode="median")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's options (malloc.h)


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _return_freed_memory() -> None:
    """Make glibc serve every block of 128 KiB or more by mmap and unmap it when freed, so that the
    resident set falls when tensors are freed (by default glibc raises that threshold after the
    first large free and then keeps freed tensors in its heap, which hides every later peak)."""
    if _libc() is not None:
        _libc().mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        _libc().malloc_trim(0)  # and give back what the timed rounds left in the heap


def _keep_freed_memory() -> None:
    """Back to where glibc's own thresholds settle once large tensors have been freed: blocks under
    32 MiB (its dynamic ceiling on 64-bit) from the heap, the heap trimmed above twice that, so
    timed calls reuse freed memory as a long-running program's do."""
    if _libc() is not None:
        _libc().mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        _libc().mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes(step, inputs, device: torch.device) -> int:
    """Memory one call of ``step(inputs)`` needs above what was already held (see the module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(inputs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not os.path.exists("/proc/self/statm"):
        return 0
    _return_freed_memory()
    before = _resident_bytes()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        step(inputs)
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _resident_bytes())
        _keep_freed_memory()
    return max(0, peak[0] - before)


def record(benchmark, step, inputs: list, device: torch.device, group: str, implementation: str,
           suite: str, rounds: int = CPU_ROUNDS, **extra) -> dict:
    """Warm up, time and measure ``step`` on ``inputs`` (a rotation, see ``rotation``), and fill
    the benchmark row (``rounds`` of pytest-benchmark's timing on the CPU); with a ``bound_ms`` in ``extra`` the row gets its ``fraction_of_bound``."""
    step(inputs[0])  # warm-up: compilation, autotuning, caches, handles
    _synchronise(device)
    memory = peak_bytes(step, inputs[0], device)
    benchmark.group = group
    cycle = itertools.cycle(inputs)

    def synchronised():
        step(next(cycle))
        _synchronise(device)

    if device.type == "cuda":
        median = cuda_median_ms(step, inputs)
        benchmark.pedantic(synchronised, rounds=CUDA_ROUNDS, warmup_rounds=0)
    else:
        benchmark.pedantic(synchronised, rounds=rounds, warmup_rounds=1)
        if benchmark.stats is None:  # --benchmark-disable: one unmeasured run, time it here
            start = time.perf_counter()
            synchronised()
            median = 1e3 * (time.perf_counter() - start)
        else:
            median = 1e3 * benchmark.stats.stats.median
    info = dict(suite=suite, implementation=implementation, median_ms=median, peak_bytes=memory,
                device=device_name(device), **extra)
    if "bound_ms" in info:
        info["fraction_of_bound"] = info["bound_ms"] / median
    benchmark.extra_info.update(info)
    print_row(group, implementation, median, memory, info.get("fraction_of_bound"))
    return info


def paired_speed_up(baseline, candidate, x, pairs: int = 5, settle: bool = False) -> float:
    """Median over ``pairs`` of baseline time / candidate time, the two run back to back (after
    one warm-up call each): a shared machine's speed drifts between rows measured a minute apart
    (runs here saw one row vary by 2x); a pair sees the same machine. ``settle``: each timed call
    follows an untimed one of the same step, as in a loop of one kind (a bf16 training step right
    after a float32 one refaults the memory glibc trimmed, and took ~30 % longer here). CPU only
    (no synchronise)."""
    baseline(x), candidate(x)
    ratios = []
    for _ in range(pairs):
        if settle:
            baseline(x)
        start = time.perf_counter()
        baseline(x)
        seconds = time.perf_counter() - start
        if settle:
            candidate(x)
        start = time.perf_counter()
        candidate(x)
        ratios.append(seconds / (time.perf_counter() - start))
    return statistics.median(ratios)


def print_row(group: str, implementation: str, median: float, memory: int, fraction) -> None:
    bound = f"  {fraction:6.1%} of bound" if fraction is not None else ""
    sys.stdout.write(f"\n[bench] {group} | {implementation}: {median:.4f} ms, "
                     f"peak {memory / 2**20:.1f} MiB{bound}\n")
    sys.stdout.flush()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def cpu_model_and_bf16_flags() -> dict:
    """The CPU's model name and its native bfloat16 flags (what CPU timings in bf16 depend on)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    def field(name):
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), "")
    flags = sorted(flag for flag in field("flags").split() if "bf16" in flag)
    return {"cpu_model": field("model name") or None, "cpu_bf16_flags": flags}


def environment() -> dict:
    """What a result means nothing without: device, driver, torch, triton, CUDA versions."""
    import platform
    import subprocess

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "cpu_threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, compute_capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["device"] = device_name(torch.device("cpu"))
        info["driver"] = None
        info.update(cpu_model_and_bf16_flags())
    return info
