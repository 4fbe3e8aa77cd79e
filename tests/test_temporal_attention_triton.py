"""The fused Triton core of temporal self-attention (kernels/temporal_attention.py) against the reference.

Without a GPU these run in Triton's CPU interpreter (16 x 16 tiles, so L = 75 already spans five
ragged key and query blocks); with a GPU they run there, with bfloat16, every autotuned tile shape
and ST-TR's real shapes. Every buffer the kernels fill starts as NaN (tests/triton_harness.py).
"""
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from sttr_fast import STTR, TemporalSelfAttention, ops  # noqa: E402
from sttr_fast.kernels import temporal_attention as kernels  # noqa: E402
from triton_harness import (CUDA, DEVICE, DTYPES, MODULE_DTYPE, TOLERANCE,  # noqa: E402
                            assert_all_gradients_close, assert_matches_reference, check_core_against_reference,
                            compare_under_autocast, compare_units, environment_without_interpreter,
                            float64_reference, nan_poisoned_buffers, needs_gpu, random_qkv, relative_error,
                            run_triton, stride_order, without_compile_caches)

pytestmark = pytest.mark.usefixtures(nan_poisoned_buffers.__name__)

# (N', T, V, heads, dk per head, dv per head); a sequence is one joint's T frames.
SHAPES = [
    (1, 1, 3, 2, 4, 8),      # one frame: one key, many all-dropped rows at p=0.5
    (2, 7, 2, 3, 1, 3),      # one ragged block; dk per head 1
    (1, 75, 2, 2, 8, 16),    # T-TR units 6-8: five 16-blocks, the last ragged
    (1, 150, 1, 1, 4, 16),   # T-TR units 3-5
    (1, 301, 1, 1, 16, 5),   # past 300: 19 blocks; dk per head 16, odd dv per head
    (2, 20, 3, 2, 5, 7),     # several joints and persons: sequence offsets through the V stride
    (1, 40, 2, 1, 4, 32),    # dv per head 32, wider than the 16-query tile: the mask goes on the scores
]


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_the_reference(shape, dtype, p, seed):
    check_core_against_reference("temporal", shape, dtype, p, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + ([torch.float64] if not CUDA else []),
                         ids=str)
def test_drop_attention_keeps_its_1e8_term_across_key_blocks(dtype, seed):
    """Frame 40 (in the third key block) holds nearly all the softmax mass; where it is dropped
    acc / (K + 1e-8 L) differs several-fold from a plain softmax over the kept frames, and the
    kernel must give the former. The kept weights relative to the dropped maximum (e^-20.5) are
    below float16's smallest number, and the maximum moves between key blocks, so this checks
    both running maxima of the online softmax."""
    n, t, v, heads, dkh, dvh = 1, 50, 16, 1, 2, 3
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, 2 * dkh + dvh, t, v, dtype=torch.float64, generator=generator)
    qkv[:, :dkh] = 1.0                      # every query the same vector
    # Frame 40 scores 22.6 more than the others: with it dropped, each of ~25 kept frames adds
    # e^-22.6 ≈ 1.5e-10 to K, and K / (K + 1e-8 L) stays below 0.4.
    qkv[:, dkh:2 * dkh] = 0.0
    qkv[:, dkh:2 * dkh, 40] = 16.0
    qkv = qkv.to(DEVICE, dtype)
    out, mask = run_triton("temporal", qkv, heads, dkh, dvh, 0.5, seed)
    _, expected = float64_reference("temporal", qkv, heads, dkh, dvh, mask)
    assert relative_error(out, expected) <= TOLERANCE[dtype]
    values, out, expected = qkv[0, 2 * dkh:].double().cpu(), out[0].double().cpu(), expected[0].cpu()
    mask = mask[0, :, 0].cpu()              # (V, T)
    joints = [joint for joint in range(v) if not mask[joint, 40] and mask[joint].any()]
    assert joints, f"no joint drops frame 40 and keeps another (seed {seed})"
    for joint in joints:
        # Every query sees the same scores, so the kept frames share the weight equally.
        plain = values[:, mask[joint], joint].mean(dim=1, keepdim=True)
        assert (expected[:, :, joint] / plain < 0.4).all(), "the case does not separate the formulas"
        torch.testing.assert_close(out[:, :, joint], expected[:, :, joint], rtol=TOLERANCE[dtype] * 10,
                                   atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_key_dropped_gives_zero_output_and_zero_gradients(dtype, seed):
    qkv, heads, dk, dv = random_qkv((1, 40, 2, 2, 4, 8), dtype, seed)
    out = ops.temporal_attention(qkv, heads, dk, dv, p=1.0, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))
    out.backward(torch.randn_like(out))
    assert torch.equal(qkv.grad, torch.zeros_like(qkv.grad))


def test_the_seed_reproduces_the_mask_and_the_backward_is_deterministic(seed):
    qkv, heads, dk, dv = random_qkv((1, 40, 2, 2, 4, 8), torch.float32, seed)
    grad_out = torch.randn(1, dv, 40, 2, device=DEVICE)
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        out = ops.temporal_attention(qkv, heads, dk, dv, p=0.5, backend="triton")
        (grad,) = torch.autograd.grad(out, qkv, grad_out)
        results.append((out, grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][0], results[2][0])


def test_strided_inputs_are_read_in_place(seed):
    """TSA's own qkv (the convolution output (N', C, V, T) transposed, frames unit-stride) and a
    channels_last qkv give an output and a gradient in qkv's stride order, so no copy appears
    around the core. A channel slice of a wider tensor and the expanded gradient of out.sum() are
    read through their strides."""
    dtype = torch.float32
    n, t, v, heads, dkh, dvh = 2, 20, 3, 2, 4, 8
    base, _, dk, dv = random_qkv((n, v, t, heads, dkh, dvh), dtype, seed)
    transposed = base.detach().transpose(2, 3).requires_grad_(True)  # (N', C, T, V), T unit-stride
    channels_last = random_qkv((n, t, v, heads, dkh, dvh), dtype, seed, memory_format=torch.channels_last)[0]
    for qkv in (transposed, channels_last):
        out, mask = run_triton("temporal", qkv, heads, dk, dv, 0.5, seed)
        assert stride_order(out) == stride_order(qkv)
        summed = torch.ones((), dtype=dtype, device=DEVICE).expand(out.shape)  # the gradient of out.sum()
        # The kernel's own gradient buffer (qkv.grad would take the leaf's strides).
        (grad,) = torch.autograd.grad(out, qkv, summed, retain_graph=True)
        assert stride_order(grad) == stride_order(qkv)
        assert_matches_reference("temporal", qkv, heads, dk, dv, out, mask, summed, seed)

    wider, _, _, _ = random_qkv((n, t, v, heads, 5, 9), dtype, seed)
    sliced = wider.detach()[:, 3:3 + 2 * dk + dv].requires_grad_(True)
    assert not sliced.is_contiguous()
    out, mask = run_triton("temporal", sliced, heads, dk, dv, 0.5, seed)
    assert_matches_reference("temporal", sliced, heads, dk, dv, out, mask, torch.randn_like(out), seed)


def tsa_pair(dtype, stride, drop_attention, seed, channels=16, joints=5):
    torch.manual_seed(seed)
    kwargs = dict(stride=stride, num_heads=4, drop_attention=drop_attention, num_joints=joints)
    fused = TemporalSelfAttention(channels, backend="triton", **kwargs)
    plain = TemporalSelfAttention(channels, backend="reference", **kwargs)
    plain.load_state_dict(fused.state_dict())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    return fused.to(DEVICE, dtype), plain.to(DEVICE, dtype)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_tsa_unit_with_triton_equals_the_reference_unit(mode, stride, seed):
    fused, plain = tsa_pair(MODULE_DTYPE, stride, 0.0, seed)
    x = torch.randn(2, 16, 36, 5, dtype=MODULE_DTYPE, device=DEVICE,
                    generator=torch.Generator(DEVICE).manual_seed(seed))
    compare_units(fused, plain, x, mode, TOLERANCE[MODULE_DTYPE] * 10)


def test_autocast_passes_its_dtype_through(seed):
    fused, plain = tsa_pair(torch.float32, 2, 0.0, seed)
    x = torch.randn(2, 16, 36, 5, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    compare_under_autocast("temporal", fused, plain, x, heads=4)


def t_tr_pair(seed, backend_dtype=torch.float32, num_person=2):
    torch.manual_seed(seed)
    kwargs = dict(num_classes=5, base_channels=8, num_heads=2, stream="temporal", num_person=num_person)
    fused = STTR(backend="triton", **kwargs).to(DEVICE, backend_dtype)
    plain = STTR(backend="reference", **kwargs).to(DEVICE, backend_dtype)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.slow
@pytest.mark.usefixtures(without_compile_caches.__name__)
def test_torch_compile_traces_a_t_tr_model_without_graph_breaks(seed):
    """fullgraph=True fails on any graph break; the compiled model, in training with
    DropAttention (the seed drawn from the same generator under aot_eager), equals the eager one."""
    # One clip of one person: every kernel call runs one sequence batch, which keeps the
    # interpreter's share of this test (it runs the whole network twice) to about a minute.
    fused, _ = t_tr_pair(seed, num_person=1)
    fused.train()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 3, 16, 25, 1, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    results = []
    for model in (compiled, fused):
        torch.manual_seed(seed)
        out = model(x)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    for compiled_value, eager_value in zip(*results):
        assert relative_error(compiled_value, eager_value, max(eager_value.norm().item(), 1e-6)) <= 1e-5
    torch._dynamo.reset()


@pytest.mark.parametrize("call,message", [
    (lambda x: ops.temporal_attention(x, 2, 8, 16, backend="triton",
                                      key_mask=torch.ones(2, 25, 2, 5, dtype=torch.bool, device=DEVICE)),
     "key_mask needs backend='reference'"),
    (lambda x: ops.temporal_attention(torch.randn(1, 131, 2, 3, device=DEVICE), 1, 65, 1, backend="triton"),
     "'dk per head': 65"),
    (lambda x: ops.temporal_attention(torch.randn(1, 65, 2, 3, device=DEVICE), 1, 0, 65, backend="triton"),
     "must be positive"),
])
def test_the_triton_backend_rejects_what_it_cannot_run(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(2, 32, 5, 25, device=DEVICE))


def test_many_joints_are_fine_for_the_temporal_kernel(seed):
    """Unlike the spatial kernel, the temporal one has no limit on V (the sequences)."""
    check_core_against_reference("temporal", (1, 3, 70, 1, 2, 2), torch.float32, 0.5, seed)


def test_the_tile_rule_picks_tiles_for_st_trs_lengths():
    """16-bit operands: one warp per 16 rows of a program's tile (none repeats another's work),
    tiles padding the scores at most PADDING_SLACK times the least, in order of preference, so
    that 64 x 32 runs at L = 150 (within 4 % of each kernel's fastest tile under the cost model)
    and 16 x 16 at L = 75 (the fastest there; 64 x 32 would compute 1.9 times the scores).
    Float32 and float64: 16 x 16 tiles on two warps, which no head width makes spill."""
    configs = kernels._configs(interpreting=False)

    def tiles(length, element_size):
        picked = kernels.pick_configs(configs, length, element_size)
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) for c in picked]

    assert tiles(75, 2) == [(16, 16, 1), (32, 16, 2)]
    assert tiles(150, 2) == [(64, 32, 4), (16, 16, 1), (32, 16, 2)]
    assert tiles(300, 2) == tiles(1024, 2) == tiles(150, 2)
    assert tiles(7, 2) == [(16, 16, 1)]
    for length in (7, 75, 150, 1024):
        assert tiles(length, 4) == tiles(length, 8) == [(16, 16, 2)]


def test_pinned_configs_launch_without_the_autotuner(seed, monkeypatch):
    """STTR_PIN_CONFIGS=1: each kernel runs the first config the launcher may pick, directly."""
    monkeypatch.setattr(kernels, "PIN_CONFIGS", True)
    monkeypatch.setattr(kernels, "_AUTOTUNED", {})  # any autotuned launch would fail
    check_core_against_reference("temporal", (1, 20, 2, 2, 4, 8), torch.float32, 0.5, seed)


def test_int64_tile_offsets_give_the_same_results(seed, monkeypatch):
    """Strides whose tile offsets overflow int32 make the launcher compile int64 offsets (WIDE);
    forced here on small tensors."""
    monkeypatch.setattr(kernels, "_wide_offsets", lambda *tensors: True)
    check_core_against_reference("temporal", (2, 20, 2, 2, 4, 8), MODULE_DTYPE, 0.5, seed)


def test_batches_beyond_the_grid_are_refused(monkeypatch):
    monkeypatch.setattr(kernels, "_GRID_LIMIT", 1)
    qkv, heads, dk, dv = random_qkv((2, 5, 1, 1, 2, 2), torch.float32, 0)
    with pytest.raises(ValueError, match="at most 1 sequences"):
        ops.temporal_attention(qkv, heads, dk, dv, backend="triton")


@pytest.mark.slow
def test_every_temporal_config_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    """Ahead-of-time compilation of every config of the three temporal kernels at T-TR's shapes,
    in its own process (the interpreter must be off there): none may use stack or local memory."""
    from sttr_fast.kernels import compile_report

    rows_path = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, "-m", "sttr_fast.kernels.compile_report", "--matrix", "ci",
                             "--family", "temporal", "--json", str(rows_path)],
                            env=environment_without_interpreter(), capture_output=True, text=True,
                            timeout=1200)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = json.loads(rows_path.read_text())
    assert {r["arch"] for r in rows} == {80, 90}
    expected = {(v.kernel, v.dtype, v.shape) for v in compile_report.variants("ci", "temporal")}
    assert {(r["kernel"], r["dtype"], tuple(r["shape"])) for r in rows} == expected
    assert all(0 < r["registers"] <= 255 for r in rows)
    assert [r for r in rows if r["spills"]] == []


# --- on a GPU: bfloat16 and ST-TR's real shapes ---------------------------------------------------

# (T', dk per head, dv per head) of T-TR's TSA layers with joints (units 3-5 at L = 150, 6-8 at 75);
# joints+bones doubles the head dims. N = 32 clips of M = 2 persons.
TSA_LAYERS = [(150, 4, 16), (75, 8, 32), (300, 4, 16)]


@needs_gpu
@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("streams", [1, 2], ids=["joints", "joints+bones"])
@pytest.mark.parametrize("layer", range(len(TSA_LAYERS)))
def test_real_tsa_shapes_on_the_gpu(layer, streams, dtype, p, seed):
    t, dkh, dvh = TSA_LAYERS[layer]
    check_core_against_reference("temporal", (64, t, 25, 8, dkh * streams, dvh * streams), dtype, p, seed)


@needs_gpu
@pytest.mark.parametrize("length", [1, 16, 17, 64, 100, 1024])
def test_long_and_short_sequences_on_the_gpu(length, seed):
    check_core_against_reference("temporal", (2, length, 25, 8, 8, 32), torch.bfloat16, 0.5, seed)


@needs_gpu
def test_the_t_tr_network_with_triton_equals_the_reference_network(seed):
    torch.manual_seed(seed)
    fused = STTR(num_classes=60, stream="temporal", backend="triton").to(DEVICE)
    plain = STTR(num_classes=60, stream="temporal", backend="reference").to(DEVICE)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(16, 3, 300, 25, 2, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
    fused.eval(), plain.eval()
    with torch.no_grad():
        assert relative_error(fused(x), plain(x)) <= 1e-4
    fused.train(), plain.train()
    for model in (fused, plain):
        for module in model.modules():
            if isinstance(module, TemporalSelfAttention):
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
