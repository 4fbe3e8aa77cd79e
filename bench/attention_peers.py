"""What the GPU attention-core benchmarks share: the peers, timing, the lower bound, the summary.

Peers: the reference backend (eager), ``torch.compile`` of it, and ``F.scaled_dot_product_attention``
with the DropAttention key mask as a boolean ``attn_mask`` on every SDPA backend that takes one
(SDPA computes a plain masked softmax: it stands in for speed only, and returns NaN for rows whose
keys are all dropped). Every implementation starts from the qkv projection's output and ends with
the head-concatenated (N', dv, T, V) output, so permute copies and mask sampling are included.

Times are medians of CUDA-event timings (``triton.testing.do_bench``, many repetitions) and go to
``extra_info`` with a lower bound for each op: the fewest bytes the op must move (qkv read
and output written once; backward: qkv and dO read, dqkv written) over the measured device-to-device
copy bandwidth, and the exponentials the kernels compute (padded tiles included) over the measured
exp rate; ``fraction_of_bound`` = bound / achieved. pytest-benchmark's own table times the same
calls with a synchronising host clock. ``STTR_BENCH_SUMMARY=path`` also writes a plain-text table
of the event-timed medians (bench/conftest.py's ``summary`` fixture, at the end of the session).
"""
from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F

from sttr_fast import ops

HEADS, JOINTS, BATCH = 8, 25, 64  # N = 32 clips x M = 2 persons
SDPA_BACKENDS = ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
PEERS = ["triton", "reference", "compiled-reference"] + [f"sdpa-{b.lower()}" for b in SDPA_BACKENDS]
# Mixed precision is how ST-TR trains fast, so bf16 meets every peer; fp32 compares our kernels
# with the reference only.
IMPLEMENTATIONS = {torch.bfloat16: PEERS, torch.float32: ["triton", "reference"]}
MODES = {"eval forward": (0.0, False), "train forward": (0.5, False), "train forward+backward": (0.5, True)}
OPS = {"spatial": ops.spatial_attention, "temporal": ops.temporal_attention}

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA GPU")


def cases(layers: dict) -> list[tuple]:
    """(layer, streams, dtype, mode, implementation) for every layer; streams 2 = joints+bones."""
    return [(layer, streams, dtype, mode, implementation) for layer in layers for streams in (1, 2)
            for dtype in IMPLEMENTATIONS for mode in MODES for implementation in IMPLEMENTATIONS[dtype]]


def case_id(case) -> str:
    layer, streams, dtype, mode, implementation = case
    return (f"{layer}-{'joints+bones' if streams == 2 else 'joints'}-{str(dtype)[6:]}-"
            f"{mode.replace(' ', '-')}-{implementation}")


def median_ms(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def measure_device_rates() -> dict:
    """Measured device-to-device copy bandwidth (bytes read + written per second) and exp rate."""
    import triton
    import triton.language as tl

    @triton.jit
    def exp_chain(x_ptr, out_ptr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets)
        for _ in tl.static_range(ROUNDS):
            x = tl.exp(x) * -0.5  # stays in (-0.5, 0): never overflows, never folds away
        tl.store(out_ptr + offsets, x)

    source = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    copy_ms = median_ms(lambda: target.copy_(source))
    values = -torch.rand(2**24, device="cuda")
    result = torch.empty_like(values)
    rounds, block = 64, 1024
    exp_ms = median_ms(lambda: exp_chain[(values.numel() // block,)](values, result, ROUNDS=rounds, BLOCK=block))
    return {"bytes_per_s": 2 * source.numel() / (copy_ms * 1e-3),
            "exp_per_s": rounds * values.numel() / (exp_ms * 1e-3)}


def lower_bound_ms(rates: dict, tokens: int, dk: int, dv: int, element_size: int, backward: bool,
                   exps: int, padded_exps: int) -> dict:
    """Bytes moved and exps computed (per pass; the backward recomputes them once more)."""
    qkv_bytes, out_bytes = tokens * (2 * dk + dv) * element_size, tokens * dv * element_size
    moved = qkv_bytes + out_bytes
    if backward:
        moved += qkv_bytes + out_bytes + qkv_bytes
    passes = 2 if backward else 1
    return {"bytes": moved, "exps": passes * exps, "padded_exps": passes * padded_exps,
            "bound_ms": 1e3 * max(moved / rates["bytes_per_s"], passes * padded_exps / rates["exp_per_s"])}


# Axis orders that turn (N', H, d, T, V) head views into (N', sequence, H, L, d), as in the reference.
_ORDERS = {"spatial": (0, 3, 1, 4, 2), "temporal": (0, 4, 1, 3, 2)}


def sdpa_core(op, qkv, dk, dv, p, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, _, t, v = qkv.shape
    order = _ORDERS[op]
    sequences, length = (t, v) if op == "spatial" else (v, t)
    mask = ops.sample_key_mask((n, sequences, HEADS, length), p, qkv.device) if p > 0 else None

    def heads(x, width):  # (N', H*width, T, V) -> (N'*sequences, H, L, width): a permute copy
        return x.view(n, HEADS, width, t, v).permute(order).reshape(n * sequences, HEADS, length, width)

    q, k = heads(qkv[:, :dk], dk // HEADS), heads(qkv[:, dk:2 * dk], dk // HEADS)
    val = heads(qkv[:, 2 * dk:], dv // HEADS)
    attn_mask = None if mask is None else mask.view(n * sequences, HEADS, 1, length)
    with sdpa_kernel([getattr(SDPBackend, backend)]):
        out = F.scaled_dot_product_attention(q, k, val, attn_mask=attn_mask)
    inverse = tuple(order.index(axis) for axis in range(5))
    return out.view(n, sequences, HEADS, length, dv // HEADS).permute(inverse).reshape(n, dv, t, v)


@functools.cache
def _compiled_reference(op):
    # Dynamic shapes: one compilation serves every layer instead of one per shape.
    return torch.compile(functools.partial(OPS[op], backend="reference"), dynamic=True)


def core(op, implementation):
    """``f(qkv, dk, dv, p)`` running ``op``'s core the way ``implementation`` does."""
    if implementation in ("triton", "reference"):
        return lambda qkv, dk, dv, p: OPS[op](qkv, HEADS, dk, dv, p=p, backend=implementation)
    if implementation == "compiled-reference":
        return lambda qkv, dk, dv, p: _compiled_reference(op)(qkv, HEADS, dk, dv, p=p)
    backend = implementation.removeprefix("sdpa-").upper()
    return lambda qkv, dk, dv, p: sdpa_core(op, qkv, dk, dv, p, backend)


class Summary:
    """Rows of the plain-text table written to ``STTR_BENCH_SUMMARY`` when the module finishes."""

    def __init__(self):
        self.rows: list[str] = []

    def add(self, group: str, implementation: str, median: float, bound: float | None = None):
        bound_text = f"{bound:>10.4f}{bound / median:>9.2f}" if bound is not None else f"{'-':>10}{'-':>9}"
        self.rows.append(f"{group:<48}{implementation:<24}{median:>10.4f}{bound_text}")

    def write(self):
        path = os.environ.get("STTR_BENCH_SUMMARY")
        if path and self.rows:
            header = f"{'case':<48}{'implementation':<24}{'median ms':>10}{'bound ms':>10}{'of bound':>9}"
            with open(path, "w") as f:
                f.write("\n".join([header] + self.rows) + "\n")


def time_core(benchmark, rates, summary, op, case, layer_shape, exp_counts):
    """Time one case: ``layer_shape`` = (T, dk per head, dv per head) before the streams'
    doubling; ``exp_counts(t)`` = (exps, padded exps) of one forward pass over the batch."""
    layer, streams, dtype, mode, implementation = case
    p, backward = MODES[mode]
    t, dkh, dvh = layer_shape
    dkh, dvh = dkh * streams, dvh * streams
    dk, dv = HEADS * dkh, HEADS * dvh
    generator = torch.Generator("cuda").manual_seed(0)
    qkv = torch.randn(BATCH, 2 * dk + dv, t, JOINTS, device="cuda", dtype=dtype, generator=generator)
    run = core(op, implementation)
    if backward:
        qkv.requires_grad_(True)
        grad_out = torch.randn(BATCH, dv, t, JOINTS, device="cuda", dtype=dtype, generator=generator)

        def step():
            torch.autograd.grad(run(qkv, dk, dv, p), qkv, grad_out)
    else:
        def step():
            with torch.no_grad():
                run(qkv, dk, dv, p)
    try:
        step()
    except RuntimeError as error:  # an SDPA backend that refuses this mask, dtype or head size
        if implementation.startswith("sdpa-"):
            pytest.skip(f"{implementation} does not run this case: {str(error).splitlines()[0]}")
        raise
    median = median_ms(step)
    bound = lower_bound_ms(rates, BATCH * t * JOINTS, dk, dv, qkv.element_size(), backward, *exp_counts(t))
    group = f"{op} {layer} {'joints+bones' if streams == 2 else 'joints'} {str(dtype)[6:]} {mode}"
    benchmark.group = group
    benchmark.extra_info.update(median_ms=median, fraction_of_bound=bound["bound_ms"] / median,
                                device=torch.cuda.get_device_name(), torch=torch.__version__,
                                **bound, **rates)
    summary.add(group, implementation, median, bound["bound_ms"])

    def synchronised():
        step()
        torch.cuda.synchronize()
    benchmark.pedantic(synchronised, rounds=10, warmup_rounds=1)
