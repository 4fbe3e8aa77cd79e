"""What the attention-core benchmarks share: the cases, the peers, and the speed-of-light bound.

Every implementation starts from the qkv projection's output in the layout the units pass it (the
projection writes (N', C, V, T); the core gets its (N', C, T, V) transpose, a view) and ends with
the head-concatenated (N', dv, T, V) output, so head permutes and DropAttention mask sampling are
inside the timing. Peers, same shapes, same run:

- ``reference``: the eager backend, the ground truth; ``compiled``: ``torch.compile`` of it
  (cold compiles take seconds to minutes, so only with ``STTR_BENCH_COMPILE=1``);
- ``sdpa-*``: ``F.scaled_dot_product_attention`` on one SDPA backend with the DropAttention key mask
  as a boolean ``attn_mask`` (a plain masked softmax: it stands in for speed only, and returns NaN
  for rows whose keys are all dropped); a backend that refuses the mask, dtype or head size skips
  the row with its own reason;
- ``triton`` and ``cuda``: the fused backends.

Cases: on CUDA, ST-TR's layer shapes as the cost model counts them (N' = 64: 32 clips x 2 persons;
docs/cost-model.md §5), bf16 and fp32, four modes (forward and forward+backward, DropAttention on
and off). ``STTR_BENCH_SET=full`` runs every layer, mode and SDPA backend; the default ``quick``
set, sized for the six-minute GPU script, keeps the largest and the smallest spatial layer and both
temporal ones, inference and training (with DropAttention), and the SDPA backends that take a mask. On the CPU, one small layer per core with the backends that run there.

Beside each CUDA row: ``bound_ms``, the time the cost model's minimum bytes and exponentials
(bench/results/cost-model-sm90.json, the launchers' first configs, which is what
``STTR_PIN_CONFIGS=1`` runs) take at this device's measured copy bandwidth and exp rate, summed over
the kernels one call launches; ``fraction_of_bound`` = bound / measured median; and
``predicted_fraction``, what the cost model predicted for those kernels (sm_90 only).
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from measure import backend_unavailable, record, rotation
from sttr_fast import ops

HEADS, JOINTS = 8, 25
COST_MODEL = Path(__file__).parent / "results" / "cost-model-sm90.json"
BENCH_SET = os.environ.get("STTR_BENCH_SET", "quick")
COMPILE = os.environ.get("STTR_BENCH_COMPILE") == "1"

# mode: (DropAttention p, with backward)
MODES = {"inference": (0.0, False), "forward with DropAttention": (0.5, False),
         "training": (0.5, True), "training without DropAttention": (0.0, True)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SDPA_BACKENDS = {"cuda": ("efficient", "cudnn", "flash", "math"), "cpu": ("math", "flash")}
QUICK_SDPA = ("efficient", "cudnn")
QUICK_MODES = ("inference", "training")
OPS = {"spatial": ops.spatial_attention, "temporal": ops.temporal_attention}


@dataclass(frozen=True)
class Layer:
    """One layer's core problem: N' sequences-batches of T frames, head dims before the streams'
    doubling (joints+bones has twice the channels, so twice the per-head dims)."""
    batch: int     # N'
    frames: int    # T of the core's input (TSA: T' after the stride)
    dkh: int
    dvh: int
    quick: bool    # part of the default GPU set


CUDA_LAYERS = {
    "spatial": [Layer(64, 300, 4, 16, True), Layer(64, 150, 4, 16, False), Layer(64, 150, 8, 32, False),
                Layer(64, 75, 8, 32, True)],
    "temporal": [Layer(64, 150, 4, 16, True), Layer(64, 75, 8, 32, True)],
}
CPU_LAYERS = {"spatial": [Layer(4, 32, 4, 16, True)], "temporal": [Layer(4, 75, 8, 32, True)]}


@dataclass(frozen=True)
class Case:
    op: str
    device: str
    layer: Layer
    streams: int   # 1 joints, 2 joints+bones
    dtype: str
    mode: str
    implementation: str

    @property
    def stream(self) -> str:
        return "joints+bones" if self.streams == 2 else "joints"

    @property
    def group(self) -> str:
        layer = self.layer
        return (f"{self.op} core, {self.stream}, T={layer.frames} {layer.dkh * self.streams}/"
                f"{layer.dvh * self.streams} N'={layer.batch}, {self.dtype}, {self.mode} [{self.device}]")

    @property
    def id(self) -> str:
        mode = self.mode.replace("forward with DropAttention", "fwd-drop").replace(
            "training without DropAttention", "train-nodrop").replace("training", "train").replace(
            "inference", "infer")
        return (f"{self.device}-T{self.layer.frames}-{self.stream}-{self.dtype}-{mode}-"
                f"{self.implementation}")


def implementations(device: str, dtype: str) -> list[str]:
    """In the order rows should come back when a run is cut short: ours and the reference first."""
    sdpa = SDPA_BACKENDS[device]
    if device == "cuda" and BENCH_SET != "full":
        sdpa = QUICK_SDPA if dtype == "bf16" else ()
    return ["triton", "cuda", "reference", *(f"sdpa-{b}" for b in sdpa), "compiled"]


def cases(op: str) -> list[Case]:
    """CUDA rows first (bf16, then fp32), then the CPU subset."""
    found = []
    for device, layers in (("cuda", CUDA_LAYERS[op]), ("cpu", CPU_LAYERS[op])):
        for dtype in DTYPES:
            for layer in layers:
                if device == "cuda" and BENCH_SET != "full" and not layer.quick:
                    continue
                for streams in (1, 2):
                    for mode in MODES:
                        if device == "cuda" and BENCH_SET != "full" and mode not in QUICK_MODES:
                            continue
                        found += [Case(op, device, layer, streams, dtype, mode, implementation)
                                  for implementation in implementations(device, dtype)]
    return found


# Axis orders that turn (N', H, d, T, V) head views into (N', sequence, H, L, d), as in the reference.
_ORDERS = {"spatial": (0, 3, 1, 4, 2), "temporal": (0, 4, 1, 3, 2)}


def sdpa_core(op: str, qkv, dk: int, dv: int, p: float, backend: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, _, t, v = qkv.shape
    order = _ORDERS[op]
    sequences, length = (t, v) if op == "spatial" else (v, t)
    mask = ops.sample_key_mask((n, sequences, HEADS, length), p, qkv.device) if p > 0 else None

    def heads(x, width):  # (N', H*width, T, V) -> (N'*sequences, H, L, width): a permute copy
        return x.reshape(n, HEADS, width, t, v).permute(order).reshape(n * sequences, HEADS, length, width)

    q, k = heads(qkv[:, :dk], dk // HEADS), heads(qkv[:, dk:2 * dk], dk // HEADS)
    value = heads(qkv[:, 2 * dk:], dv // HEADS)
    attn_mask = None if mask is None else mask.view(n * sequences, HEADS, 1, length)
    with sdpa_kernel([getattr(SDPBackend, {"efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                                           "flash": "FLASH_ATTENTION", "math": "MATH"}[backend])]):
        out = F.scaled_dot_product_attention(q, k, value, attn_mask=attn_mask)
    inverse = tuple(order.index(axis) for axis in range(5))
    return out.view(n, sequences, HEADS, length, dv // HEADS).permute(inverse).reshape(n, dv, t, v)


@functools.cache
def _compiled(op: str):
    return torch.compile(functools.partial(OPS[op], backend="reference"))


def core(op: str, implementation: str):
    """``f(qkv, dk, dv, p)`` computing ``op``'s core the way ``implementation`` does."""
    if implementation in ("triton", "cuda", "reference"):
        return lambda qkv, dk, dv, p: OPS[op](qkv, HEADS, dk, dv, p=p, backend=implementation)
    if implementation == "compiled":
        return lambda qkv, dk, dv, p: _compiled(op)(qkv, HEADS, dk, dv, p=p)
    return lambda qkv, dk, dv, p: sdpa_core(op, qkv, dk, dv, p, implementation.removeprefix("sdpa-"))


# --- the speed-of-light bound -------------------------------------------------------------------

def measure_device_rates() -> dict:
    """This GPU's device-to-device copy bandwidth (bytes read + written per second) and exp rate."""
    import triton
    import triton.language as tl
    import triton.testing

    @triton.jit
    def exp_chain(x_ptr, out_ptr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets)
        for _ in tl.static_range(ROUNDS):
            x = tl.exp(x) * -0.5  # stays in (-0.5, 0): never overflows, never folds away
        tl.store(out_ptr + offsets, x)

    def median_ms(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    source = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    copy_ms = median_ms(lambda: target.copy_(source))
    values = -torch.rand(2**24, device="cuda")
    result = torch.empty_like(values)
    rounds, block = 64, 1024
    exp_ms = median_ms(lambda: exp_chain[(values.numel() // block,)](values, result, ROUNDS=rounds, BLOCK=block))
    return {"bytes_per_s": 2 * source.numel() / (copy_ms * 1e-3),
            "exp_per_s": rounds * values.numel() / (exp_ms * 1e-3)}


# The kernels one call of a core launches: (kernel, with the mask kernel when DropAttention is on).
_KERNELS = {("spatial", False): ["spatial_forward"],
            ("spatial", True): ["spatial_forward", "spatial_backward"],
            ("temporal", False): ["temporal_forward"],
            ("temporal", True): ["temporal_forward", "temporal_backward_query", "temporal_backward_key"]}


@functools.cache
def _cost_model_rows() -> dict:
    report = json.loads(COST_MODEL.read_text())
    return {(row["kernel"], row["layer"], row["dtype"], row["drop"]): row
            for row in report["rows"] if row["choice"] == "first"}


def cost_model_bound(case: Case, rates: dict) -> dict | None:
    """The case's bound at the measured rates and the cost model's prediction, or None when the
    cost model has no row for it (another batch or layer)."""
    p, backward = MODES[case.mode]
    layer = case.layer
    name = (f"{'JB' if case.streams == 2 else 'J'}{layer.frames} {layer.dkh * case.streams}/"
            f"{layer.dvh * case.streams}")
    kernels = [(k, case.dtype, p > 0) for k in _KERNELS[(case.op, backward)]]
    if p > 0:
        kernels.append((f"{case.op}_key_mask", "bool", True))
    rows = _cost_model_rows()
    try:
        chosen = [rows[(kernel, name, dtype, drop)] for kernel, dtype, drop in kernels]
    except KeyError:
        return None
    if layer.batch != 64:
        return None
    bound = sum(1e3 * max(row["bytes"] / rates["bytes_per_s"], row["exps"] / rates["exp_per_s"])
                for row in chosen)
    predicted = sum(row["bound_us"] for row in chosen) / sum(row["predicted_us"] for row in chosen)
    return {"bound_ms": bound, "bytes": sum(row["bytes"] for row in chosen),
            "exps": sum(row["exps"] for row in chosen), "predicted_fraction": predicted}


# --- one row ------------------------------------------------------------------------------------

def run_case(benchmark, case: Case, rates_of) -> None:
    """Time one case; ``rates_of()`` gives the device rates (measured once per session, CUDA only)."""
    reason = backend_unavailable(case.implementation, case.device, COMPILE)
    if reason:
        pytest.skip(reason)
    device = torch.device(case.device)
    p, backward = MODES[case.mode]
    dkh, dvh = case.layer.dkh * case.streams, case.layer.dvh * case.streams
    dk, dv = HEADS * dkh, HEADS * dvh
    n, t = case.layer.batch, case.layer.frames
    dtype = DTYPES[case.dtype]
    generator = torch.Generator(device).manual_seed(0)

    def make_inputs(_):
        # The projection's (N', C, V, T) output, transposed as the units pass it.
        qkv = torch.randn(n, 2 * dk + dv, JOINTS, t, device=device, dtype=dtype,
                          generator=generator).transpose(2, 3)
        grad = torch.randn(n, dv, t, JOINTS, device=device, dtype=dtype, generator=generator)
        return qkv.requires_grad_(backward), grad

    run = core(case.op, case.implementation)

    def step(inputs):
        qkv, grad = inputs
        if backward:
            torch.autograd.grad(run(qkv, dk, dv, p), qkv, grad)
        else:
            with torch.no_grad():
                run(qkv, dk, dv, p)

    input_bytes = n * t * JOINTS * (2 * dk + 2 * dv) * torch.finfo(dtype).bits // 8
    inputs = rotation(make_inputs, input_bytes, device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(inputs[0])
    except RuntimeError as error:  # an SDPA backend that refuses this mask, dtype or head size
        if case.implementation.startswith("sdpa-"):
            # SDPA says why in a warning; the error only says that no kernel was left
            reasons = [str(w.message).split(" (Triggered")[0] for w in caught]
            why = "; ".join(r for r in reasons if not r.endswith(":")) or str(error).splitlines()[0]
            pytest.skip(f"{case.implementation} does not run this case: {why}")
        raise
    extra = dict(op=case.op, stream=case.stream, dtype=case.dtype, mode=case.mode,
                 layer=f"T={t} {dkh}/{dvh}", batch=n)
    if device.type == "cuda":
        rates = rates_of()
        bound = cost_model_bound(case, rates)
        if bound is not None:
            extra.update(bound, **rates)
            if torch.cuda.get_device_capability() != (9, 0):
                extra.pop("predicted_fraction")
    record(benchmark, step, inputs, device, case.group, case.implementation, "core", **extra)
