"""The fused Triton core of spatial self-attention (kernels/spatial_attention.py) against the reference.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py) in float64, float32 and
float16; with a GPU they run there, with bfloat16 and ST-TR's real shapes added. Every buffer the
kernels fill starts as NaN, inputs are fresh random draws, and errors are norm-relative to a
float64 reference given the kernel's own DropAttention mask.
"""
import json
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from sttr_fast import STTR, SpatialSelfAttention, ops  # noqa: E402
from sttr_fast.kernels import spatial_attention as spatial_kernels  # noqa: E402
from sttr_fast.kernels.dropattention_rng import keep_keys, load_rng_state, materialize_key_mask  # noqa: E402
from sttr_fast.ops.custom_ops import new_rng_state  # noqa: E402
from triton_harness import (CUDA, DEVICE, DTYPES, MODULE_DTYPE, TOLERANCE,  # noqa: E402
                            assert_all_gradients_close, assert_compiled_unit_matches_eager,
                            assert_matches_reference, check_core_against_reference,
                            compare_under_autocast, compare_units, environment_without_interpreter,
                            float64_reference, nan_poisoned_buffers, needs_gpu, random_qkv,
                            relative_error, without_compile_caches)
from triton_harness import run_triton as run_op  # noqa: E402

pytestmark = pytest.mark.usefixtures(nan_poisoned_buffers.__name__)

SHAPES = [  # (N', T, V, heads, dk per head, dv per head)
    (2, 5, 25, 2, 4, 8),     # ST-TR's 25 joints; 10 frames in blocks of 4 leave a ragged last block
    (1, 7, 11, 3, 1, 3),     # odd joints and head dims, dk per head 1
    (3, 3, 16, 1, 16, 16),   # joints fill the tile exactly; dk per head 16
    (1, 9, 33, 2, 5, 7),     # more than 32 joints: 64-wide tiles
    (4, 1, 2, 1, 2, 2),      # one frame per sequence, two joints: many all-dropped rows at p=0.5
]


def run_triton(qkv, heads, dk, dv, p, seed):
    return run_op("spatial", qkv, heads, dk, dv, p, seed)


def spatial_reference(qkv, heads, dk, dv, mask):
    return float64_reference("spatial", qkv, heads, dk, dv, mask)


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_the_reference(shape, dtype, p, seed):
    check_core_against_reference("spatial", shape, dtype, p, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + ([torch.float64] if not CUDA else []),
                         ids=str)
def test_drop_attention_keeps_its_1e8_term(dtype, seed):
    """A dropped key that holds nearly all the softmax mass: acc / (K + 1e-8 L) then differs
    several-fold from a plain softmax over the kept keys, and the kernel must give the former.
    The kept keys' weights relative to the dropped maximum (e^-20.5) are below float16's
    smallest number, so 16-bit inputs also check that they survive as dot operands."""
    n, t, v, heads, dkh, dvh = 1, 16, 6, 1, 2, 3
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, 2 * dkh + dvh, t, v, dtype=torch.float64, generator=generator)
    qkv[:, :dkh] = 1.0                      # every query the same vector
    # Key 0 scores 20.5 more than the others: with it dropped, each kept key adds e^-20.5 ≈ 1.3e-9
    # to K, and K / (K + 1e-8 L) stays below 0.4.
    qkv[:, dkh:2 * dkh, :, 0] = 14.5
    qkv[:, dkh:2 * dkh, :, 1:] = 0.0
    qkv = qkv.to(DEVICE, dtype)
    out, mask = run_triton(qkv, heads, dkh, dvh, 0.5, seed)
    _, expected = spatial_reference(qkv, heads, dkh, dvh, mask)
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


def run_kernels_with_mask(qkv, heads, dkh, dvh, keep, grad_out):
    """The forward and backward kernels launched directly with a given key mask (N'*T, H, V):
    out, the statistics Λ and qkv's gradient, in NaN-filled buffers."""
    n, _, t, v = qkv.shape
    stats_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    out = torch.full((n, heads * dvh, t, v), float("nan"), dtype=qkv.dtype, device=DEVICE)
    stats = torch.full((n * t, heads, v), float("nan"), dtype=stats_dtype, device=DEVICE)
    grad_qkv = torch.full_like(qkv, float("nan"))
    spatial_kernels.spatial_attention_forward(qkv, heads, heads * dkh, heads * dvh, 0.5, keep, out, stats)
    spatial_kernels.spatial_attention_backward(grad_out, qkv, stats, heads, heads * dkh, heads * dvh, 0.5,
                                               keep, grad_qkv)
    return out, stats, grad_qkv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16 if CUDA else torch.float64],
                         ids=str)
def test_the_statistic_and_the_output_where_kept_keys_lie_far_below_a_dropped_one(dtype, seed):
    """Λ = max s + log(K + 1e-8·L), the output and the gradients against float64 given the same
    mask, one frame each: random scores with every other key dropped; a dropped key 20 above the
    kept ones (their weights relative to it are below float16's range); one 141 above (with
    float16 operands the weights are taken relative to the kept maximum, and that key's 2^(s -
    anchor) would overflow float32 unless the anchor is capped); every key dropped. Nothing may
    be inf or NaN."""
    n, t, v, heads, dkh, dvh = 1, 4, 6, 1, 2, 3
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, 2 * dkh + dvh, t, v, dtype=torch.float64, generator=generator)
    qkv[:, :dkh, 1:] = 1.0
    qkv[:, dkh:2 * dkh, 1:, 1:] = 0.0
    qkv[:, dkh:2 * dkh, 1, 0] = 14.5
    qkv[:, dkh:2 * dkh, 2, 0] = 100.0
    qkv = qkv.to(dtype)
    keep = torch.ones(n * t, heads, v, dtype=torch.bool)
    keep[0, 0, ::2] = False
    keep[1:3, 0, 0] = False
    keep[3] = False
    grad_out = torch.randn(n, heads * dvh, t, v, dtype=torch.float64, generator=generator)
    out, stats, grad_qkv = run_kernels_with_mask(qkv.to(DEVICE), heads, dkh, dvh, keep.to(DEVICE),
                                                 grad_out.to(DEVICE, dtype))
    assert torch.isfinite(out).all() and torch.isfinite(stats).all() and torch.isfinite(grad_qkv).all()

    exact, expected = float64_reference("spatial", qkv, heads, heads * dkh, heads * dvh,
                                        keep.view(n, t, heads, v))
    expected.backward(grad_out)
    q, k, _ = exact.detach()[0].split([dkh, dkh, dvh])
    scores = torch.einsum("dti,dtj->tij", q, k) * dkh ** -0.5
    row_max = scores.amax(-1, keepdim=True)
    weights = torch.exp(scores - row_max)
    kept = weights * keep.view(t, 1, v)
    statistic = row_max[..., 0] + torch.log(kept.sum(-1) + 1e-8 * weights.sum(-1))
    tolerance = TOLERANCE[torch.float64] if dtype == torch.float64 else TOLERANCE[torch.float32]
    torch.testing.assert_close(stats.cpu().double().view(t, v), statistic, rtol=tolerance, atol=tolerance)
    assert relative_error(out.cpu(), expected.detach()) <= TOLERANCE[dtype]
    assert relative_error(grad_qkv.cpu(), exact.grad) <= TOLERANCE[dtype]


def test_int64_offsets_within_a_frame_give_the_same_results(monkeypatch, seed):
    """The launcher switches to int64 offsets within a frame when a tensor's channels and joints
    span 2^31 elements; forced on, that code path must agree with the reference too."""
    monkeypatch.setattr(spatial_kernels, "_needs_wide_offsets", lambda *tensors: True)
    check_core_against_reference("spatial", SHAPES[0], DTYPES[-1], 0.5, seed)


def test_pinned_configs_launch_the_first_config(monkeypatch, seed):
    """STTR_PIN_CONFIGS=1: no autotuning, the launcher's first config for the shape."""
    monkeypatch.setattr(spatial_kernels, "PIN_CONFIGS", True)
    check_core_against_reference("spatial", SHAPES[0], torch.float32, 0.5, seed)


@pytest.mark.parametrize("element_size", [2, 4])
@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_the_launcher_covers_each_row_with_one_warp_and_keeps_st_tr_within_the_register_budget(
        kernel, element_size):
    """Every config the launcher may pick for ST-TR's head splits (25 joints) is within the
    register budget and, with 16-bit dots (mma.sync, 16 rows per warp), puts one warp on every 16
    padded joints, so that no warp repeats another's rows."""
    configs = spatial_kernels._configs(interpreting=False)
    for dkh, dvh in ((4, 16), (8, 32), (16, 64)):
        blocks = spatial_kernels.block_sizes(25, dkh, dvh)
        shape = (element_size, blocks["BLOCK_V"], blocks["BLOCK_DK"], blocks["BLOCK_DV"])
        picked = spatial_kernels.fitting_configs(configs, kernel, *shape)
        assert picked and all(spatial_kernels.within_budget(c, kernel, *shape) for c in picked)
        if element_size == 2:
            assert all(c.num_warps * 16 == blocks["BLOCK_V"] for c in picked)


def test_the_autotuner_keys_the_frame_count_by_power_of_two_buckets():
    """A smaller last batch (56 clips instead of 64) reuses the tuned config; the bucket is a
    kernel argument because the autotuner keys only on arguments."""
    assert spatial_kernels.frames_bucket(64 * 300) == spatial_kernels.frames_bucket(56 * 300) == 2**15
    key = spatial_kernels._AUTOTUNE_KEY
    assert "frames_bucket" in key and "n_frames" not in key


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_key_dropped_gives_zero_output_and_zero_gradients(dtype, seed):
    qkv, heads, dk, dv = random_qkv(SHAPES[0], dtype, seed)
    out = ops.spatial_attention(qkv, heads, dk, dv, p=1.0, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))
    out.backward(torch.randn_like(out))
    assert torch.equal(qkv.grad, torch.zeros_like(qkv.grad))


def test_the_seed_reproduces_the_mask_and_the_keep_rate_is_one_minus_p(seed):
    qkv, heads, dk, dv = random_qkv(SHAPES[0], torch.float32, seed)
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


def test_strided_inputs_and_zero_stride_gradients(seed):
    """channels_last qkv gives channels_last output and gradient; a channel slice of a larger
    tensor and the expanded gradient of out.sum() are read through their strides."""
    dtype = torch.float32
    shape = SHAPES[0]
    qkv, heads, dk, dv = random_qkv(shape, dtype, seed, memory_format=torch.channels_last)
    out, mask = run_triton(qkv, heads, dk, dv, 0.5, seed)
    assert out.is_contiguous(memory_format=torch.channels_last)
    summed = torch.ones((), dtype=dtype, device=DEVICE).expand(out.shape)  # the gradient of out.sum()
    assert_matches_reference("spatial", qkv, heads, dk, dv, out, mask, summed, seed)
    assert qkv.grad.is_contiguous(memory_format=torch.channels_last)

    wider, _, _, _ = random_qkv((shape[0], shape[1], shape[2], heads, 5, 9), dtype, seed)
    sliced = wider.detach()[:, 3:3 + qkv.shape[1]].requires_grad_(True)
    assert not sliced.is_contiguous()
    out, mask = run_triton(sliced, heads, dk, dv, 0.5, seed)
    assert_matches_reference("spatial", sliced, heads, dk, dv, out, mask, torch.randn_like(out), seed)


def ssa_pair(dtype, drop_attention, seed, in_channels=16, out_channels=32):
    torch.manual_seed(seed)
    fused = SpatialSelfAttention(in_channels, out_channels, num_heads=4, drop_attention=drop_attention,
                                 backend="triton")
    plain = SpatialSelfAttention(in_channels, out_channels, num_heads=4, drop_attention=drop_attention,
                                 backend="reference")
    plain.load_state_dict(fused.state_dict())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    return fused.to(DEVICE, dtype), plain.to(DEVICE, dtype)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_ssa_unit_with_triton_equals_the_reference_unit(mode, seed):
    fused, plain = ssa_pair(MODULE_DTYPE, 0.0, seed)
    x = torch.randn(2, 16, 5, 25, dtype=MODULE_DTYPE, device=DEVICE,
                    generator=torch.Generator(DEVICE).manual_seed(seed))
    compare_units(fused, plain, x, mode, TOLERANCE[MODULE_DTYPE] * 10)


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.usefixtures(without_compile_caches.__name__)
def test_torch_compile_traces_the_unit_without_graph_breaks(compiler, seed):
    """fullgraph=True fails on any graph break; the compiled unit must also equal the eager one,
    in training with DropAttention too where the seed comes from the same generator (aot_eager;
    Inductor generates its own random numbers)."""
    fused, _ = ssa_pair(torch.float32, 0.5, seed)
    compiled = torch.compile(fused, fullgraph=True, backend=compiler)
    x = torch.randn(2, 16, 5, 25, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    assert_compiled_unit_matches_eager(fused, compiled, x, seed,
                                       ("eval", "train") if compiler == "aot_eager" else ("eval",))


def test_autocast_passes_its_dtype_through(seed):
    fused, plain = ssa_pair(torch.float32, 0.0, seed)
    x = torch.randn(2, 16, 5, 25, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    compare_under_autocast("spatial", fused, plain, x, heads=4)


@pytest.mark.parametrize("call,message", [
    (lambda x: ops.spatial_attention(x, 2, 8, 16, backend="triton",
                                     key_mask=torch.ones(2, 5, 2, 25, dtype=torch.bool, device=DEVICE)),
     "key_mask needs backend='reference'"),
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
    # On a GPU the cuda backend joins them where its extension builds and loads.
    expected_backends = [["reference", "triton"], ["reference", "triton", "cuda"]] if CUDA else [["reference"]]
    assert report["backends"] in expected_backends
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
                             "--family", "spatial", "--json", str(rows_path)],
                            env=environment_without_interpreter(), capture_output=True, text=True, timeout=900)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = json.loads(rows_path.read_text())
    assert {r["arch"] for r in rows} == {80, 90}
    compiled = {(r["kernel"], r["dtype"], tuple(r["shape"])) for r in rows}
    expected = {(v.kernel, v.dtype, v.shape) for v in compile_report.variants("ci", "spatial")}
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
def test_real_ssa_shapes_on_the_gpu(layer, streams, dtype, p, seed):
    t, dkh, dvh = SSA_LAYERS[layer]
    check_core_against_reference("spatial", (64, t, 25, 8, dkh * streams, dvh * streams), dtype, p, seed)


@needs_gpu
@pytest.mark.parametrize("in_channels,base", [(3, 64), (6, 128)], ids=["joints", "joints+bones"])
def test_the_s_tr_network_with_triton_equals_the_reference_network(in_channels, base, seed):
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
