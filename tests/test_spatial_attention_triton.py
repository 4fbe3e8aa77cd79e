"""The fused Triton core of spatial self-attention (kernels/spatial_attention.py) against the reference.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py) in float64, float32 and
float16; with a GPU they run there, with bfloat16 and ST-TR's real shapes added. Every buffer the
kernels fill starts as NaN, inputs are fresh random draws, and errors are norm-relative to a
float64 reference given the kernel's own DropAttention mask.
"""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from sttr_fast import STTR, SpatialSelfAttention, ops  # noqa: E402
from sttr_fast.kernels.dropattention_rng import (keep_keys, load_rng_state, materialize_key_mask,  # noqa: E402
                                                 new_rng_state)
from sttr_fast.ops import reference, triton_spatial  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# The interpreter's bfloat16 is wrong and CUDA kernels take no float64.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [torch.float64])
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}

SHAPES = [  # (N', T, V, heads, dk per head, dv per head)
    (2, 5, 25, 2, 4, 8),     # ST-TR's 25 joints; 10 frames in blocks of 4 leave a ragged last block
    (1, 7, 11, 3, 1, 3),     # odd joints and head dims, dk per head 1
    (3, 3, 16, 1, 16, 16),   # joints fill the tile exactly; dk per head 16
    (1, 9, 33, 2, 5, 7),     # more than 32 joints: 64-wide tiles
    (4, 1, 2, 1, 2, 2),      # one frame per sequence, two joints: many all-dropped rows at p=0.5
]


@pytest.fixture(autouse=True)
def nan_poisoned_buffers(monkeypatch):
    """Every output, statistics and gradient buffer starts as NaN, so an element a kernel fails
    to write fails the finiteness checks."""
    def allocate(shape, dtype, device, memory_format):
        return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format).fill_(float("nan"))
    monkeypatch.setattr(triton_spatial, "_allocate", allocate)


def fresh_seed() -> int:
    return random.randrange(2**31)


def random_qkv(shape, dtype, seed, memory_format=torch.contiguous_format):
    n, t, v, heads, dkh, dvh = shape
    generator = torch.Generator(DEVICE).manual_seed(seed)
    qkv = torch.randn(n, 2 * heads * dkh + heads * dvh, t, v, dtype=torch.float64, device=DEVICE,
                      generator=generator) * 1.5
    qkv = qkv.to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    return qkv, heads, heads * dkh, heads * dvh


def relative_error(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """‖actual − expected‖ / (scale or ‖expected‖); infinite when actual has NaN or inf."""
    if not torch.isfinite(actual).all():
        return float("inf")
    denominator = scale if scale is not None else expected.norm().item()
    return (actual.double() - expected.double()).norm().item() / denominator


def run_triton(qkv, heads, dk, dv, p, seed):
    """The triton backend's output, and the key mask it drew (regenerated from the same seed)."""
    torch.manual_seed(seed)
    out = ops.spatial_attention(qkv, heads, dk, dv, p=p, backend="triton")
    n, _, t, v = qkv.shape
    torch.manual_seed(seed)
    mask = materialize_key_mask(new_rng_state(qkv.device), (n, t, heads, v), p) if p > 0 else None
    return out, mask


def float64_reference(qkv, heads, dk, dv, mask):
    exact = qkv.detach().double().requires_grad_(True)
    return exact, reference.spatial_attention(exact, heads, dk, dv, key_mask=mask, use_sdpa=False)


def assert_gradients_match(qkv, exact, dk, tolerance, seed):
    """dq, dk and dv each against the reference, relative to the larger of their own norm and a
    tenth of the whole gradient's: with two joints and one dropped, dq and dk are pure 1e-8-term
    effects ~1e-7 of dv, which no float32 arithmetic (the reference's included) resolves."""
    whole = exact.grad.norm().item()
    for name, channels in (("dq", slice(0, dk)), ("dk", slice(dk, 2 * dk)), ("dv", slice(2 * dk, None))):
        expected = exact.grad[:, channels]
        scale = max(expected.norm().item(), 0.1 * whole)
        error = relative_error(qkv.grad[:, channels], expected, scale)
        assert error <= tolerance, f"{name}: relative error {error:.2e} > {tolerance:.0e} (seed {seed})"


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_the_reference(shape, dtype, p):
    seed = fresh_seed()
    qkv, heads, dk, dv = random_qkv(shape, dtype, seed)
    out, mask = run_triton(qkv, heads, dk, dv, p, seed)
    exact, expected = float64_reference(qkv, heads, dk, dv, mask)
    assert out.dtype == dtype and out.shape == expected.shape
    error = relative_error(out, expected)
    assert error <= TOLERANCE[dtype], f"output: relative error {error:.2e} (seed {seed})"
    grad_out = torch.randn(expected.shape, dtype=torch.float64, device=DEVICE,
                           generator=torch.Generator(DEVICE).manual_seed(seed))
    out.backward(grad_out.to(dtype))
    expected.backward(grad_out)
    assert_gradients_match(qkv, exact, dk, TOLERANCE[dtype], seed)


@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.float64] if not CUDA else []), ids=str)
def test_drop_attention_keeps_its_1e8_term(dtype):
    """A dropped key that holds nearly all the softmax mass: acc / (K + 1e-8 L) then differs
    several-fold from a plain softmax over the kept keys, and the kernel must give the former."""
    n, t, v, heads, dkh, dvh = 1, 16, 6, 1, 2, 3
    seed = fresh_seed()
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, 2 * dkh + dvh, t, v, dtype=torch.float64, generator=generator)
    qkv[:, :dkh] = 1.0                      # every query the same vector
    # Key 0 scores 20.5 more than the others: with it dropped, each kept key adds e^-20.5 ≈ 1.3e-9
    # to K, and K / (K + 1e-8 L) stays below 0.4.
    qkv[:, dkh:2 * dkh, :, 0] = 14.5
    qkv[:, dkh:2 * dkh, :, 1:] = 0.0
    qkv = qkv.to(DEVICE, dtype)
    out, mask = run_triton(qkv, heads, dkh, dvh, 0.5, seed)
    _, expected = float64_reference(qkv, heads, dkh, dvh, mask)
    assert relative_error(out, expected) <= TOLERANCE[dtype]
    out, expected, mask = out[0].double().cpu(), expected[0].cpu(), mask[0, :, 0].cpu()  # (d, T, V), (T, V)
    q, k, v = qkv[0].double().cpu().split([dkh, dkh, dvh])
    probs = torch.softmax(torch.einsum("dti,dtj->tij", q, k) * dkh ** -0.5, -1)
    kept = probs * mask[:, None, :]
    plain = torch.einsum("tij,dtj->dti", kept / kept.sum(-1, keepdim=True).clamp_min(1e-300), v)
    frames = ~mask[:, 0] & mask[:, 1:].any(-1)  # key 0 dropped, another kept
    assert frames.any(), f"no frame drops key 0 and keeps another (seed {seed})"
    assert (expected[:, frames] / plain[:, frames] < 0.5).all(), "the case does not separate the formulas"
    torch.testing.assert_close(out[:, frames], expected[:, frames], rtol=TOLERANCE[dtype] * 10, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_key_dropped_gives_zero_output_and_zero_gradients(dtype):
    seed = fresh_seed()
    qkv, heads, dk, dv = random_qkv(SHAPES[0], dtype, seed)
    out = ops.spatial_attention(qkv, heads, dk, dv, p=1.0, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))
    out.backward(torch.randn_like(out))
    assert torch.equal(qkv.grad, torch.zeros_like(qkv.grad))


def test_the_seed_reproduces_the_mask_and_the_keep_rate_is_one_minus_p():
    qkv, heads, dk, dv = random_qkv(SHAPES[0], torch.float32, fresh_seed())
    torch.manual_seed(7)
    first = ops.spatial_attention(qkv, heads, dk, dv, p=0.5, backend="triton")
    torch.manual_seed(7)
    again = ops.spatial_attention(qkv, heads, dk, dv, p=0.5, backend="triton")
    different = ops.spatial_attention(qkv, heads, dk, dv, p=0.5, backend="triton")
    assert torch.equal(first, again)
    assert not torch.equal(first, different)
    mask = materialize_key_mask(new_rng_state(DEVICE), (64, 10, 8, 25), 0.3)
    assert mask.dtype == torch.bool and mask.device.type == DEVICE.type
    assert abs(mask.float().mean().item() - 0.7) < 0.01


@triton.jit
def _keep_keys_at(rng_ptr, out_ptr, first_index, p, BLOCK: tl.constexpr):
    lanes = tl.arange(0, BLOCK)
    seed, call_offset = load_rng_state(rng_ptr)
    tl.store(out_ptr + lanes, keep_keys(seed, call_offset, first_index + lanes.to(tl.int64), p))


def test_the_rng_counter_uses_all_64_index_bits_and_the_call_offset():
    def keep(rng_state, first_index, count=1024):
        out = torch.empty(count, dtype=torch.bool, device=DEVICE)
        _keep_keys_at[(1,)](rng_state, out, first_index, 0.5, BLOCK=count)
        return out

    rng_state = new_rng_state(DEVICE)
    low = keep(rng_state, 0)
    assert torch.equal(low, materialize_key_mask(rng_state, (1024,), 0.5))
    assert torch.equal(low, keep(rng_state, 0))
    for other in (keep(rng_state, 2**32), keep(rng_state + torch.tensor([0, 1], device=DEVICE), 0),
                  keep(rng_state + torch.tensor([1, 0], device=DEVICE), 0)):
        agreement = (other == low).float().mean().item()
        assert 0.4 < agreement < 0.6, f"streams agree on {agreement:.0%} of keys; independent ones ~50%"


def test_strided_inputs_and_zero_stride_gradients():
    """channels_last qkv gives channels_last output and gradient; a channel slice of a larger
    tensor and the expanded gradient of out.sum() are read through their strides."""
    seed = fresh_seed()
    dtype = torch.float32
    shape = SHAPES[0]
    qkv, heads, dk, dv = random_qkv(shape, dtype, seed, memory_format=torch.channels_last)
    out, mask = run_triton(qkv, heads, dk, dv, 0.5, seed)
    assert out.is_contiguous(memory_format=torch.channels_last)
    exact, expected = float64_reference(qkv, heads, dk, dv, mask)
    assert relative_error(out, expected) <= TOLERANCE[dtype]
    out.sum().backward()
    expected.sum().backward()
    assert qkv.grad.is_contiguous(memory_format=torch.channels_last)
    assert_gradients_match(qkv, exact, dk, TOLERANCE[dtype], seed)

    wider, _, _, _ = random_qkv((shape[0], shape[1], shape[2], heads, 5, 9), dtype, seed)
    sliced = wider.detach()[:, 3:3 + qkv.shape[1]].requires_grad_(True)
    assert not sliced.is_contiguous()
    out, mask = run_triton(sliced, heads, dk, dv, 0.5, seed)
    _, expected = float64_reference(sliced, heads, dk, dv, mask)
    assert relative_error(out, expected) <= TOLERANCE[dtype]


def assert_all_gradients_close(fused_grads, plain_grads, tolerance):
    """Some gradients vanish exactly (the bias before a training-mode BatchNorm, the key bias under
    softmax's shift invariance) and hold rounding noise; they are measured on the largest's scale."""
    largest = max(grad.norm().item() for grad in plain_grads)
    for index, (fused_grad, plain_grad) in enumerate(zip(fused_grads, plain_grads)):
        scale = max(plain_grad.norm().item(), 1e-3 * largest)
        assert relative_error(fused_grad, plain_grad, scale) <= tolerance, f"gradient {index}"


def ssa_pair(dtype, drop_attention, seed, in_channels=16, out_channels=32):
    torch.manual_seed(seed)
    fused = SpatialSelfAttention(in_channels, out_channels, num_heads=4, drop_attention=drop_attention,
                                 backend="triton")
    plain = SpatialSelfAttention(in_channels, out_channels, num_heads=4, drop_attention=drop_attention,
                                 backend="reference")
    plain.load_state_dict(fused.state_dict())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    return fused.to(DEVICE, dtype), plain.to(DEVICE, dtype)


MODULE_DTYPE = torch.float32 if CUDA else torch.float64


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_ssa_unit_with_triton_equals_the_reference_unit(mode):
    seed = fresh_seed()
    fused, plain = ssa_pair(MODULE_DTYPE, 0.0, seed)
    x = torch.randn(2, 16, 5, 25, dtype=MODULE_DTYPE, device=DEVICE,
                    generator=torch.Generator(DEVICE).manual_seed(seed))
    outputs, grads = [], []
    for module in (fused, plain):
        module.train(mode == "train")
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(torch.cos(out.detach()))
        outputs.append(out)
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    tolerance = TOLERANCE[MODULE_DTYPE] * 10
    assert relative_error(outputs[0], outputs[1]) <= tolerance
    assert_all_gradients_close(grads[0], grads[1], tolerance)


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_traces_the_unit_without_graph_breaks(compiler):
    """fullgraph=True fails on any graph break; the compiled unit must also equal the eager one,
    in training with DropAttention too where the seed comes from the same generator (aot_eager;
    Inductor generates its own random numbers)."""
    seed = fresh_seed()
    fused, _ = ssa_pair(torch.float32, 0.5, seed)
    compiled = torch.compile(fused, fullgraph=True, backend=compiler)
    x = torch.randn(2, 16, 5, 25, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    modes = ["eval", "train"] if compiler == "aot_eager" else ["eval"]
    for mode in modes:
        fused.train(mode == "train")
        results = []
        for module in (compiled, fused):
            xi = x.clone().requires_grad_(True)
            torch.manual_seed(seed)
            out = module(xi)
            out.square().sum().backward()
            results.append((out.detach(), xi.grad))
        for compiled_value, eager_value in zip(*results):
            assert relative_error(compiled_value, eager_value) <= 1e-5, mode
    torch._dynamo.reset()


def test_autocast_passes_its_dtype_through():
    seed = fresh_seed()
    fused, plain = ssa_pair(torch.float32, 0.0, seed)
    x = torch.randn(2, 16, 5, 25, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    low = torch.bfloat16 if CUDA else torch.float16
    results = []
    for module in (fused, plain):
        module.eval()
        xi = x.clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=low):
            qkv = module.qkv(xi)
            attended = ops.spatial_attention(qkv, 4, module.dk, module.dv, backend=module.backend)
            out = module(xi)
        assert qkv.dtype == low and attended.dtype == low
        out.float().square().sum().backward()
        results.append((out.float(), xi.grad))
    for fused_value, plain_value in zip(*results):
        assert relative_error(fused_value, plain_value) <= 2e-2


@pytest.mark.parametrize("call,message", [
    (lambda x: ops.spatial_attention(x, 2, 8, 16, backend="triton",
                                     key_mask=torch.ones(2, 5, 2, 25, dtype=torch.bool, device=DEVICE)),
     "key_mask needs backend='reference'"),
    (lambda x: ops.temporal_attention(x, 2, 8, 16, backend="triton"), "no temporal_attention core"),
    (lambda x: ops.spatial_attention(torch.randn(1, 32, 2, 65, device=DEVICE), 2, 8, 16, backend="triton"),
     "at most 64 joints"),
    (lambda x: ops.spatial_attention(torch.randn(1, 131, 2, 3, device=DEVICE), 1, 65, 1, backend="triton"),
     "'dk per head': 65"),
])
def test_the_triton_backend_rejects_what_it_cannot_run(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(2, 32, 5, 25, device=DEVICE))


@needs_gpu
def test_on_a_gpu_triton_rejects_cpu_and_float64_tensors_and_auto_leaves_them_to_the_reference():
    with pytest.raises(ValueError, match="needs a CUDA tensor, got one on cpu"):
        ops.spatial_attention(torch.randn(2, 32, 5, 25), 2, 8, 16, backend="triton")
    qkv = torch.randn(2, 32, 5, 25, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match="got torch.float64"):
        ops.spatial_attention(qkv, 2, 8, 16, backend="triton")
    assert torch.equal(ops.spatial_attention(qkv, 2, 8, 16, backend="auto"),
                       ops.spatial_attention(qkv, 2, 8, 16, backend="reference"))


def environment_without_interpreter() -> dict:
    return {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}


def test_without_the_interpreter_backends_tell_the_truth():
    """In a fresh process without TRITON_INTERPRET: triton is offered exactly when there is a GPU,
    "auto" keeps CPU tensors on the reference, and triton refuses a CPU tensor clearly."""
    script = (
        "import json, torch\n"
        "from sttr_fast import ops\n"
        "qkv = torch.randn(2, 32, 5, 25)\n"
        "auto = ops.spatial_attention(qkv, 2, 8, 16, backend='auto')\n"
        "same = torch.equal(auto, ops.spatial_attention(qkv, 2, 8, 16, backend='reference'))\n"
        "try:\n"
        "    ops.spatial_attention(qkv, 2, 8, 16, backend='triton')\n"
        "    error = None\n"
        "except ValueError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'backends': ops.available_backends(), 'auto_is_reference': same, 'error': error}))\n")
    result = subprocess.run([sys.executable, "-c", script], env=environment_without_interpreter(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backends"] == (["reference", "triton"] if CUDA else ["reference"])
    assert report["auto_is_reference"]
    expected = "needs a CUDA tensor" if CUDA else "needs a CUDA GPU, or TRITON_INTERPRET=1"
    assert report["error"] is not None and expected in report["error"], report["error"]


@pytest.mark.slow
def test_every_config_the_launcher_may_pick_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    """Ahead-of-time compilation in its own process (the interpreter must be off there). Where no
    config is within the register budget the launcher falls back to the most warps; only float32
    with 64-wide joint tiles may spill there, and every other pick must not spill."""
    from sttr_fast.kernels import compile_report

    rows_path = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, "-m", "sttr_fast.kernels.compile_report", "--matrix", "ci",
                             "--json", str(rows_path)], env=environment_without_interpreter(),
                            capture_output=True, text=True, timeout=900)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = json.loads(rows_path.read_text())
    assert {r["arch"] for r in rows} == {80, 90}
    compiled = {(r["kernel"], r["dtype"], tuple(r["shape"])) for r in rows}
    expected = {(v.kernel, v.dtype, v.shape) for v in compile_report.variants("ci")}
    assert compiled == expected
    assert all(r["picked"] and 0 < r["registers"] <= 255 for r in rows)
    assert compile_report.failures(rows) == []
    spilling = {(r["kernel"], r["dtype"], tuple(r["shape"])) for r in rows if r["spills"]}
    assert all(dtype == "fp32" and shape[0] > 32 for _, dtype, shape in spilling), spilling


# --- on a GPU: bfloat16 and ST-TR's real shapes ---------------------------------------------------

# (T, dk per head, dv per head) of the six SSA layers with joints (units 3-8); joints+bones doubles
# the head dims. N = 32 clips of M = 2 persons.
SSA_LAYERS = [(300, 4, 16), (150, 4, 16), (150, 4, 16), (150, 8, 32), (75, 8, 32), (75, 8, 32)]


@needs_gpu
@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("streams", [1, 2], ids=["joints", "joints+bones"])
@pytest.mark.parametrize("layer", range(6))
def test_real_ssa_shapes_on_the_gpu(layer, streams, dtype, p):
    t, dkh, dvh = SSA_LAYERS[layer]
    seed = fresh_seed()
    qkv, heads, dk, dv = random_qkv((64, t, 25, 8, dkh * streams, dvh * streams), dtype, seed)
    out, mask = run_triton(qkv, heads, dk, dv, p, seed)
    exact, expected = float64_reference(qkv, heads, dk, dv, mask)
    assert relative_error(out, expected) <= TOLERANCE[dtype]
    grad_out = torch.randn_like(expected)
    out.backward(grad_out.to(dtype))
    expected.backward(grad_out)
    assert_gradients_match(qkv, exact, dk, TOLERANCE[dtype], seed)


@needs_gpu
@pytest.mark.parametrize("in_channels,base", [(3, 64), (6, 128)], ids=["joints", "joints+bones"])
def test_the_s_tr_network_with_triton_equals_the_reference_network(in_channels, base):
    seed = fresh_seed()
    torch.manual_seed(seed)
    fused = STTR(num_classes=60, in_channels=in_channels, base_channels=base, backend="triton").to(DEVICE)
    plain = STTR(num_classes=60, in_channels=in_channels, base_channels=base, backend="reference").to(DEVICE)
    plain.load_state_dict(fused.state_dict())
    generator = torch.Generator(DEVICE).manual_seed(seed)
    with torch.no_grad():
        x = torch.randn(32, in_channels, 300, 25, 2, device=DEVICE, generator=generator)
        fused.eval(), plain.eval()
        assert relative_error(fused(x), plain(x)) <= 1e-4
    for model in (fused, plain):
        model.train()
        for module in model.modules():
            if isinstance(module, SpatialSelfAttention):
                module.drop_attention = 0.0
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    x = x[:4].clone()
    losses = [model(x).square().mean() for model in (fused, plain)]
    for loss in losses:
        loss.backward()
    assert relative_error(losses[0].detach(), losses[1].detach()) <= 1e-4
    assert_all_gradients_close([p.grad for p in fused.parameters()], [p.grad for p in plain.parameters()],
                               1e-3)
