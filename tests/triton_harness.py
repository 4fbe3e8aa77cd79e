"""What the tests of the fused Triton cores share: devices, the accuracy yardstick, NaN-poisoned
buffers, random inputs, the kernels' own DropAttention mask, a float64 reference and error measures.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py) in float64, float32
and float16; with one they run there, with bfloat16 added. Errors are norm-relative to a float64
reference given the kernel's own DropAttention mask. Inputs come from the ``seed`` each test is
given (tests/conftest.py): fixed by default, fresh ones in the opt-in fuzzing mode.
"""
import os

import pytest
import torch

from sttr_fast import ops
from sttr_fast.kernels.dropattention_rng import materialize_key_mask
from sttr_fast.ops.custom_ops import new_rng_state
from sttr_fast.ops import reference, triton_backend

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# The interpreter's bfloat16 is wrong and CUDA kernels take no float64.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [torch.float64])
# Fixed error bounds, for float64 (whose rounding is far below any error of a wrong formula) and
# for the checks that compare whole units or use no yardstick.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# In float32, float16 and bfloat16 a kernel may be at most YARDSTICK times less accurate than the
# reference backend computing the same problem in the same dtype, plus FLOOR_ULPS units of the
# dtype's rounding: rounding then never fails a correct kernel, while a wrong term or a lost mask
# bit is an error of order one and fails on every seed (float64 judges the formulas at 1e-12).
# float32 gets the larger floor because the kernels' backward rebuilds the weights as exp(s − Λ)
# and D as rowsum(dO ⊙ O), which carry rounding the reference's direct softmax does not: where a
# row has one or two keys the reference's dq and dk come out exact or nearly so while the kernel's
# hold a few 1e-6 of noise (fuzzing 900 float32 cases needed up to 20 units beyond 4x). In 16 bits
# the rounding of the inputs dominates both.
YARDSTICK = 4.0
FLOOR_ULPS = {torch.float32: 64, torch.float16: 1, torch.bfloat16: 1}
# Units are checked in float32 on a GPU; the interpreter affords float64 and so a tighter check.
MODULE_DTYPE = torch.float32 if CUDA else torch.float64

OPS = {"spatial": ops.spatial_attention, "temporal": ops.temporal_attention}
REFERENCE_CORES = {"spatial": reference.spatial_attention, "temporal": reference.temporal_attention}


def poison_buffers(monkeypatch, backend) -> None:
    """Every output, statistics, scratch and gradient buffer the fused ``backend`` module
    (triton_backend, cuda_backend) allocates starts as NaN, so an element a kernel fails to write
    fails the finiteness checks."""
    def allocate(shape, dtype, device):
        return torch.empty(shape, dtype=dtype, device=device).fill_(float("nan"))
    monkeypatch.setattr(backend, "_allocate", allocate)


@pytest.fixture
def nan_poisoned_buffers(monkeypatch):
    poison_buffers(monkeypatch, triton_backend)


def random_qkv(shape, dtype, seed, memory_format=torch.contiguous_format, device=DEVICE):
    """qkv of ``shape`` = (N', T, V, heads, dk per head, dv per head), values of scale 1.5 so that
    softmax rows range from flat to peaked; returns it with heads, dk and dv."""
    n, t, v, heads, dkh, dvh = shape
    generator = torch.Generator(device).manual_seed(seed)
    qkv = torch.randn(n, 2 * heads * dkh + heads * dvh, t, v, dtype=torch.float64, device=device,
                      generator=generator) * 1.5
    qkv = qkv.to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    return qkv, heads, heads * dkh, heads * dvh


def stride_order(tensor: torch.Tensor) -> list[int]:
    """The axes from the outermost (largest stride) to the innermost."""
    return sorted(range(tensor.dim()), key=lambda axis: (-tensor.stride(axis), axis))


def key_mask_shape(op: str, qkv: torch.Tensor, heads: int) -> tuple[int, ...]:
    n, _, t, v = qkv.shape
    return (n, t, heads, v) if op == "spatial" else (n, v, heads, t)


def relative_error(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """‖actual − expected‖ / (scale or ‖expected‖), the absolute error where that scale is zero
    (every key dropped); infinite when actual has NaN or inf."""
    if not torch.isfinite(actual).all():
        return float("inf")
    denominator = scale if scale is not None else expected.norm().item()
    return (actual.double() - expected.double()).norm().item() / (denominator or 1.0)


def allowed_error(dtype: torch.dtype, yardstick_error: float) -> float:
    """The error a kernel may make in ``dtype``, given the reference backend's error in it."""
    if dtype == torch.float64:
        return TOLERANCE[dtype]
    return YARDSTICK * yardstick_error + FLOOR_ULPS[dtype] * torch.finfo(dtype).eps


def run_triton(op, qkv, heads, dk, dv, p, seed):
    """The triton backend's output, and the key mask it drew (regenerated from the same seed)."""
    torch.manual_seed(seed)
    out = OPS[op](qkv, heads, dk, dv, p=p, backend="triton")
    torch.manual_seed(seed)
    mask = (materialize_key_mask(new_rng_state(qkv.device), key_mask_shape(op, qkv, heads), p)
            if p > 0 else None)
    return out, mask


def float64_reference(op, qkv, heads, dk, dv, mask):
    exact = qkv.detach().double().requires_grad_(True)
    return exact, REFERENCE_CORES[op](exact, heads, dk, dv, key_mask=mask, path="explicit")


def same_dtype_reference(op, qkv, heads, dk, dv, mask):
    """The reference backend on the same problem in qkv's own dtype: the yardstick of rounding."""
    same = qkv.detach().clone().requires_grad_(True)
    return same, REFERENCE_CORES[op](same, heads, dk, dv, key_mask=mask, path="explicit")


def gradient_errors(grad, exact_grad, dk) -> dict[str, float]:
    """dq, dk and dv errors, each relative to its own norm, or to the whole gradient's where its
    own is under a tenth of that: with two keys and one dropped, dq and dk are pure 1e-8-term
    effects ~1e-7 of dv, and their rounding comes from terms of the whole gradient's size."""
    whole = exact_grad.norm().item()
    errors = {}
    for name, channels in (("dq", slice(0, dk)), ("dk", slice(dk, 2 * dk)), ("dv", slice(2 * dk, None))):
        expected = exact_grad[:, channels]
        own = expected.norm().item()
        errors[name] = relative_error(grad[:, channels], expected, own if own >= 0.1 * whole else whole)
    return errors


def assert_matches_reference(op, qkv, heads, dk, dv, out, mask, grad_out, seed):
    """The kernel's output, and qkv's gradient after ``out.backward(grad_out)``, against the float64
    reference given the kernel's own mask, within the bound that the reference backend's error in
    qkv's dtype sets (allowed_error)."""
    dtype = qkv.dtype
    exact, expected = float64_reference(op, qkv, heads, dk, dv, mask)
    same, yardstick = same_dtype_reference(op, qkv, heads, dk, dv, mask)
    assert out.dtype == dtype and out.shape == expected.shape
    error, bound = relative_error(out, expected), allowed_error(dtype, relative_error(yardstick, expected))
    assert error <= bound, f"output: relative error {error:.2e} > {bound:.2e} (seed {seed})"
    out.backward(grad_out)
    expected.backward(grad_out.double())
    yardstick.backward(grad_out)
    yardstick_errors = gradient_errors(same.grad, exact.grad, dk)
    for name, error in gradient_errors(qkv.grad, exact.grad, dk).items():
        bound = allowed_error(dtype, yardstick_errors[name])
        assert error <= bound, f"{name}: relative error {error:.2e} > {bound:.2e} (seed {seed})"


def check_core_against_reference(op, shape, dtype, p, seed):
    """Forward and all three gradients of one random problem against the float64 reference."""
    qkv, heads, dk, dv = random_qkv(shape, dtype, seed)
    out, mask = run_triton(op, qkv, heads, dk, dv, p, seed)
    grad_out = torch.randn(out.shape, dtype=torch.float64, device=DEVICE,
                           generator=torch.Generator(DEVICE).manual_seed(seed))
    assert_matches_reference(op, qkv, heads, dk, dv, out, mask, grad_out.to(dtype), seed)


def assert_all_gradients_close(fused_grads, plain_grads, tolerance):
    """Some gradients vanish exactly (the bias before a training-mode BatchNorm, the key bias under
    softmax's shift invariance) and hold rounding noise; they are measured on the largest's scale."""
    largest = max(grad.norm().item() for grad in plain_grads)
    for index, (fused_grad, plain_grad) in enumerate(zip(fused_grads, plain_grads)):
        scale = max(plain_grad.norm().item(), 1e-3 * largest)
        assert relative_error(fused_grad, plain_grad, scale) <= tolerance, f"gradient {index}"


def compare_units(fused, plain, x, mode, tolerance):
    """A unit with the triton backend against the same unit (same state) with the reference:
    output, input gradient and every parameter gradient, in ``mode`` ("eval" or "train")."""
    outputs, grads = [], []
    for module in (fused, plain):
        module.train(mode == "train")
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(torch.cos(out.detach()))
        outputs.append(out)
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    assert relative_error(outputs[0], outputs[1]) <= tolerance
    assert_all_gradients_close(grads[0], grads[1], tolerance)


def compare_under_autocast(op, fused, plain, x, heads):
    """Under autocast the qkv projection and the core both run in the low dtype, and the unit with
    the triton backend equals the one with the reference in eval mode, output and input gradient."""
    low = torch.bfloat16 if CUDA else torch.float16
    results = []
    for module in (fused, plain):
        module.eval()
        xi = x.clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=low):
            qkv = module.qkv(xi)
            attended = OPS[op](qkv, heads, module.dk, module.dv, backend=module.backend)
            out = module(xi)
        assert qkv.dtype == low and attended.dtype == low
        out.float().square().sum().backward()
        results.append((out.float(), xi.grad))
    for fused_value, plain_value in zip(*results):
        assert relative_error(fused_value, plain_value) <= 2e-2


def assert_compiled_unit_matches_eager(unit, compiled, x, seed, modes=("eval", "train")) -> None:
    """The compiled unit equals the eager one, output and input gradient, in each mode; in
    training both draw DropAttention's seed from the same generator state."""
    for mode in modes:
        unit.train(mode == "train")
        results = []
        for module in (compiled, unit):
            xi = x.clone().requires_grad_(True)
            torch.manual_seed(seed)
            out = module(xi)
            out.square().sum().backward()
            results.append((out.detach(), xi.grad))
        for compiled_value, eager_value in zip(*results):
            assert relative_error(compiled_value, eager_value) <= 1e-5, mode
    torch._dynamo.reset()


def environment_without_interpreter() -> dict:
    return {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}


@pytest.fixture
def without_compile_caches():
    """torch.compile recompiles instead of loading graphs cached by an earlier run: its caches key a
    graph without the schemas of the custom ops in it, so a graph cached before a schema change
    would call the ops with stale arguments."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield
