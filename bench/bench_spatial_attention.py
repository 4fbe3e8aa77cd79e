"""GPU: the spatial attention core (SSA) — our Triton kernels against their peers, same shapes, same run.

Peers: the reference backend (eager), ``torch.compile`` of it, and ``F.scaled_dot_product_attention``
with the DropAttention key mask as a boolean ``attn_mask`` on every SDPA backend that takes one
(SDPA computes a plain masked softmax: it stands in for speed only, and returns NaN for rows whose
keys are all dropped). Every implementation starts from the qkv projection's output and ends with
the head-concatenated (N', dv, T, V) output, so permute copies and mask sampling are included.

Times are medians of CUDA-event timings (``triton.testing.do_bench``, many repetitions) and go to
``extra_info`` with the lower bound DESIGN.md asks for: the fewest bytes the op must move (qkv read
and output written once; backward: qkv and dO read, dqkv written) over the measured device-to-device
copy bandwidth, and the exponentials (V x V per frame and head, and with tiles padded to 32 x 32 as
the kernels compute them) over the measured exp rate; ``fraction_of_bound`` = bound / achieved.
pytest-benchmark's own table times the same calls with a synchronising host clock.

    python -m pytest bench/bench_spatial_attention.py --benchmark-json results.json

``STTR_BENCH_SUMMARY=path`` also writes a plain-text table of the event-timed medians. Without a
CUDA GPU every benchmark is skipped.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F

from sttr_fast import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA GPU")

HEADS, JOINTS, BATCH = 8, 25, 64  # N = 32 clips x M = 2 persons
# The SSA layers' distinct (T, dk per head, dv per head), joints; joints+bones doubles head dims.
LAYERS = {"unit3": (300, 4, 16), "unit4-5": (150, 4, 16), "unit6": (150, 8, 32), "unit7-8": (75, 8, 32)}
SDPA_BACKENDS = ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
PEERS = ["triton", "reference", "compiled-reference"] + [f"sdpa-{b.lower()}" for b in SDPA_BACKENDS]
# Mixed precision is how ST-TR trains fast, so bf16 meets every peer; fp32 compares our kernels
# with the reference only.
IMPLEMENTATIONS = {torch.bfloat16: PEERS, torch.float32: ["triton", "reference"]}
MODES = {"eval forward": (0.0, False), "train forward": (0.5, False), "train forward+backward": (0.5, True)}
CASES = [(layer, streams, dtype, mode, implementation) for layer in LAYERS for streams in (1, 2)
         for dtype in IMPLEMENTATIONS for mode in MODES for implementation in IMPLEMENTATIONS[dtype]]
_SUMMARY: list[str] = []


def _median_ms(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


@pytest.fixture(scope="module")
def device_rates():
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
    copy_ms = _median_ms(lambda: target.copy_(source))
    values = -torch.rand(2**24, device="cuda")
    result = torch.empty_like(values)
    rounds, block = 64, 1024
    exp_ms = _median_ms(lambda: exp_chain[(values.numel() // block,)](values, result, ROUNDS=rounds, BLOCK=block))
    return {"bytes_per_s": 2 * source.numel() / (copy_ms * 1e-3),
            "exp_per_s": rounds * values.numel() / (exp_ms * 1e-3)}


def _lower_bound_ms(rates, t, dkh, dvh, element_size, backward):
    dk, dv = HEADS * dkh, HEADS * dvh
    tokens = BATCH * t * JOINTS
    qkv_bytes, out_bytes = tokens * (2 * dk + dv) * element_size, tokens * dv * element_size
    moved = qkv_bytes + out_bytes
    if backward:
        moved += qkv_bytes + out_bytes + qkv_bytes
    passes = 2 if backward else 1
    exps = passes * BATCH * t * HEADS * JOINTS * JOINTS
    padded_exps = passes * BATCH * t * HEADS * 32 * 32
    return {"bytes": moved, "exps": exps, "padded_exps": padded_exps,
            "bound_ms": 1e3 * max(moved / rates["bytes_per_s"], padded_exps / rates["exp_per_s"])}


def _sdpa_core(qkv, dk, dv, p, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, _, t, v = qkv.shape
    mask = ops.sample_key_mask((n, t, HEADS, v), p, qkv.device) if p > 0 else None

    def heads(x, width):  # (N', H*width, T, V) -> (N'*T, H, V, width): a permute copy
        return x.view(n, HEADS, width, t, v).permute(0, 3, 1, 4, 2).reshape(n * t, HEADS, v, width)

    q, k, val = heads(qkv[:, :dk], dk // HEADS), heads(qkv[:, dk:2 * dk], dk // HEADS), heads(qkv[:, 2 * dk:], dv // HEADS)
    attn_mask = None if mask is None else mask.view(n * t, HEADS, 1, v)
    with sdpa_kernel([getattr(SDPBackend, backend)]):
        out = F.scaled_dot_product_attention(q, k, val, attn_mask=attn_mask)
    return out.view(n, t, HEADS, v, dv // HEADS).permute(0, 2, 4, 1, 3).reshape(n, dv, t, v)


@functools.cache
def _compiled_reference():
    # Dynamic shapes: one compilation serves every layer instead of one per shape.
    return torch.compile(functools.partial(ops.spatial_attention, backend="reference"), dynamic=True)


def _core(implementation):
    if implementation in ("triton", "reference"):
        return lambda qkv, dk, dv, p: ops.spatial_attention(qkv, HEADS, dk, dv, p=p, backend=implementation)
    if implementation == "compiled-reference":
        return lambda qkv, dk, dv, p: _compiled_reference()(qkv, HEADS, dk, dv, p=p)
    backend = implementation.removeprefix("sdpa-").upper()
    return lambda qkv, dk, dv, p: _sdpa_core(qkv, dk, dv, p, backend)


@pytest.fixture(scope="module", autouse=True)
def summary_table():
    yield
    path = os.environ.get("STTR_BENCH_SUMMARY")
    if path and _SUMMARY:
        header = f"{'case':<44}{'implementation':<24}{'median ms':>10}{'bound ms':>10}{'of bound':>9}"
        with open(path, "w") as f:
            f.write("\n".join([header] + _SUMMARY) + "\n")


def _case_id(case):
    layer, streams, dtype, mode, implementation = case
    return f"{layer}-{'joints+bones' if streams == 2 else 'joints'}-{str(dtype)[6:]}-{mode.replace(' ', '-')}-{implementation}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def bench_spatial_attention(benchmark, device_rates, case):
    layer, streams, dtype, mode, implementation = case
    p, backward = MODES[mode]
    t, dkh, dvh = LAYERS[layer]
    dkh, dvh = dkh * streams, dvh * streams
    dk, dv = HEADS * dkh, HEADS * dvh
    generator = torch.Generator("cuda").manual_seed(0)
    qkv = torch.randn(BATCH, 2 * dk + dv, t, JOINTS, device="cuda", dtype=dtype, generator=generator)
    core = _core(implementation)
    if backward:
        qkv.requires_grad_(True)
        grad_out = torch.randn(BATCH, dv, t, JOINTS, device="cuda", dtype=dtype, generator=generator)

        def step():
            torch.autograd.grad(core(qkv, dk, dv, p), qkv, grad_out)
    else:
        def step():
            with torch.no_grad():
                core(qkv, dk, dv, p)
    try:
        step()
    except RuntimeError as error:  # an SDPA backend that refuses this mask, dtype or head size
        if implementation.startswith("sdpa-"):
            pytest.skip(f"{implementation} does not run this case: {str(error).splitlines()[0]}")
        raise
    median_ms = _median_ms(step)
    bound = _lower_bound_ms(device_rates, t, dkh, dvh, qkv.element_size(), backward)
    group = f"{layer} {'joints+bones' if streams == 2 else 'joints'} {str(dtype)[6:]} {mode}"
    benchmark.group = group
    benchmark.extra_info.update(median_ms=median_ms, fraction_of_bound=bound["bound_ms"] / median_ms,
                                device=torch.cuda.get_device_name(), torch=torch.__version__,
                                **bound, **device_rates)
    _SUMMARY.append(f"{group:<44}{implementation:<24}{median_ms:>10.4f}{bound['bound_ms']:>10.4f}"
                    f"{bound['bound_ms'] / median_ms:>9.2f}")

    def synchronised():
        step()
        torch.cuda.synchronize()
    benchmark.pedantic(synchronised, rounds=10, warmup_rounds=1)
