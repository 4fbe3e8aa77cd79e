"""The cuda backend's kernels (csrc/) through their host build, against the reference.

The host build compiles the kernels' own per-thread code with the C++ compiler and runs it on CPU
tensors over emulated blocks and threads (csrc/host_launch.cpp), float64 and float32; these tests
switch it on (``cuda_backend.HOST_BUILD``) and go through ``sttr_fast.ops`` and the custom ops, so
the autograd formula, the buffers and the torch.compile tracing are the GPU path's. The build is
compiled once per machine (cached by torch.utils.cpp_extension, ninja) and loaded once per session.
Every buffer starts as NaN, shared memory and registers start every emulated block as NaN, and
errors are norm-relative to a float64 reference given the kernels' own DropAttention mask
(tests/triton_harness.py: float64 at 1e-12, float32 against the reference's own rounding).
"""
import functools
import json
import subprocess
import sys

import pytest
import torch

from sttr_fast import SpatialSelfAttention, TemporalSelfAttention, ops
from sttr_fast.ops import cuda_backend, custom_ops
from triton_harness import (TOLERANCE, assert_all_gradients_close, assert_compiled_unit_matches_eager,
                            assert_matches_reference, environment_without_interpreter, float64_reference,
                            key_mask_shape, poison_buffers, relative_error, without_compile_caches)
from triton_harness import random_qkv as harness_random_qkv

CPU = torch.device("cpu")
DTYPES = [torch.float64, torch.float32]
OPS = {"spatial": ops.spatial_attention, "temporal": ops.temporal_attention}

# (N', T, V, heads, dk per head, dv per head). ST-TR's head splits 4/16, 8/32 and 16/64 run their
# exact instantiations; the others the generic one (odd, small and one-channel dims).
SPATIAL_SHAPES = [
    (2, 5, 25, 2, 4, 16),    # 25 joints: five frames per block, ten frames leave a partial block
    (1, 3, 25, 2, 8, 32),
    (1, 2, 25, 1, 16, 64),   # two frames per block (shared-memory budget)
    (2, 5, 25, 2, 4, 8),     # generic
    (1, 7, 11, 3, 1, 3),     # odd joints and head dims, dk per head 1
    (3, 3, 16, 1, 16, 16),
    (1, 9, 33, 2, 5, 7),     # more than 32 joints: three frames per block
    (4, 1, 2, 1, 2, 2),      # two joints: many all-dropped rows at p=0.5
]
TEMPORAL_SHAPES = [
    (1, 150, 1, 1, 4, 16),   # T-TR units 3-5: five key tiles, the last partial
    (1, 75, 2, 2, 8, 32),    # T-TR units 6-8
    (1, 40, 1, 1, 16, 64),
    (1, 1, 3, 2, 4, 8),      # one frame: one key, many all-dropped rows at p=0.5
    (2, 7, 2, 3, 1, 3),      # one partial tile; dk per head 1
    (1, 301, 1, 1, 16, 5),   # past 256 frames: two blocks of 160 queries per sequence
    (1, 200, 1, 1, 4, 16),   # two key chunks, the second of two tiles (after a chunk of five)
    (2, 20, 3, 2, 5, 7),     # several joints and persons: sequence offsets through the V stride
]
SHAPES = {"spatial": SPATIAL_SHAPES, "temporal": TEMPORAL_SHAPES}


@pytest.fixture(autouse=True)
def host_build(monkeypatch):
    """The host build serves CPU tensors, and every buffer it fills starts as NaN."""
    monkeypatch.setattr(cuda_backend, "HOST_BUILD", True)
    reason = cuda_backend.unavailable_reason(device=False)
    assert reason is None, reason

    poison_buffers(monkeypatch, cuda_backend)


# The host build takes CPU tensors, whatever device the machine has.
random_qkv = functools.partial(harness_random_qkv, device=CPU)


def run_cuda(op, qkv, heads, dk, dv, p, seed):
    """The cuda backend's output and the key mask it drew (regenerated from the same seed)."""
    torch.manual_seed(seed)
    out = OPS[op](qkv, heads, dk, dv, p=p, backend="cuda")
    torch.manual_seed(seed)
    mask = (cuda_backend.materialize_key_mask(custom_ops.new_rng_state(CPU), key_mask_shape(op, qkv, heads), p)
            if p > 0 else None)
    return out, mask


def check_against_reference(op, shape, dtype, p, seed, memory_format=torch.contiguous_format):
    qkv, heads, dk, dv = random_qkv(shape, dtype, seed, memory_format)
    out, mask = run_cuda(op, qkv, heads, dk, dv, p, seed)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert_matches_reference(op, qkv, heads, dk, dv, out, mask, grad_out.to(dtype), seed)
    return qkv, out


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=str)
def test_spatial_forward_and_gradients_match_the_reference(shape, dtype, p, seed):
    check_against_reference("spatial", shape, dtype, p, seed)


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", TEMPORAL_SHAPES, ids=str)
def test_temporal_forward_and_gradients_match_the_reference(shape, dtype, p, seed):
    check_against_reference("temporal", shape, dtype, p, seed)


@pytest.mark.parametrize("op", ["spatial", "temporal"])
def test_the_modules_layout_channels_last_slices_and_expanded_gradients(op, seed):
    """The units' transposed view (frames unit-stride), channels_last, a channel slice of a larger
    tensor and the zero-stride gradient of out.sum() are read and written through their strides;
    outputs and gradients come in qkv's stride order."""
    shape = SHAPES[op][0]
    n, t, v, heads, dkh, dvh = shape
    base, _, dk, dv = random_qkv((n, v, t, heads, dkh, dvh), torch.float64, seed)
    transposed = base.detach().transpose(2, 3).requires_grad_(True)  # (N', C, T, V), frames unit-stride
    out, mask = run_cuda(op, transposed, heads, dk, dv, 0.5, seed)
    assert out.stride(2) == 1
    assert_matches_reference(op, transposed, heads, dk, dv, out, mask, torch.randn_like(out), seed)
    assert transposed.grad.stride(2) == 1

    qkv, out = check_against_reference(op, shape, torch.float64, 0.5, seed, torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert qkv.grad.is_contiguous(memory_format=torch.channels_last)

    wider, _, _, _ = random_qkv((n, t, v, heads, dkh + 3, dvh + 5), torch.float64, seed)
    sliced = wider.detach()[:, 3:3 + qkv.shape[1]].requires_grad_(True)
    out, mask = run_cuda(op, sliced, heads, dk, dv, 0.5, seed)
    summed = torch.ones((), dtype=torch.float64).expand(out.shape)
    assert_matches_reference(op, sliced, heads, dk, dv, out, mask, summed, seed)


def test_the_mask_is_bit_for_bit_the_triton_backends(seed):
    """Same seed and offset, same keep decisions (docs/kernels.md §6): the host build's Philox
    against triton's materialize_key_mask, for seeds and offsets with high words set."""
    pytest.importorskip("triton")
    from sttr_fast.kernels.dropattention_rng import materialize_key_mask

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(seed)
    states = [torch.randint(0, 2**63 - 1, (2,), generator=generator) for _ in range(3)]
    states += [torch.tensor([2**62 + 12345, 2**40 + 3]), torch.tensor([5, 0])]
    for rng_state in states:
        for p in (0.0, 0.3, 0.5, 0.7777, 1.0):
            mine = cuda_backend.materialize_key_mask(rng_state, (3, 7, 2, 25), p)
            triton_mask = materialize_key_mask(rng_state.to(device), (3, 7, 2, 25), p)
            assert torch.equal(mine, triton_mask.cpu()), (rng_state.tolist(), p)
    mask = cuda_backend.materialize_key_mask(states[0], (64, 10, 8, 25), 0.3)
    assert abs(mask.float().mean().item() - 0.7) < 0.01


def test_the_seed_reproduces_the_output(seed):
    qkv, heads, dk, dv = random_qkv(SPATIAL_SHAPES[0], torch.float32, seed)
    torch.manual_seed(7)
    first = ops.spatial_attention(qkv, heads, dk, dv, p=0.5, backend="cuda")
    torch.manual_seed(7)
    again = ops.spatial_attention(qkv, heads, dk, dv, p=0.5, backend="cuda")
    different = ops.spatial_attention(qkv, heads, dk, dv, p=0.5, backend="cuda")
    assert torch.equal(first, again) and not torch.equal(first, different)


@pytest.mark.parametrize("op", ["spatial", "temporal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_key_dropped_gives_zero_output_and_zero_gradients(op, dtype, seed):
    qkv, heads, dk, dv = random_qkv(SHAPES[op][0], dtype, seed)
    out = OPS[op](qkv, heads, dk, dv, p=1.0, backend="cuda")
    assert torch.equal(out, torch.zeros_like(out))
    out.backward(torch.randn_like(out))
    assert torch.equal(qkv.grad, torch.zeros_like(qkv.grad))


def run_library(op, qkv, heads, dkh, dvh, keep, grad_out):
    """The kernels called directly with a given key mask: out, Λ and qkv's gradient."""
    lib = cuda_backend.library(CPU)
    n, _, t, v = qkv.shape
    sequences, tokens = (n * t, v) if op == "spatial" else (n * v, t)
    out = torch.full((n, heads * dvh, t, v), float("nan"), dtype=qkv.dtype)
    stats = torch.full((sequences, heads, tokens), float("nan"), dtype=torch.float64 if qkv.dtype == torch.float64
                       else torch.float32)
    grad_qkv = torch.full_like(qkv, float("nan"))
    if op == "spatial":
        lib.spatial_forward(qkv, out, stats, keep, heads, dkh, dvh)
        lib.spatial_backward(grad_out, qkv, stats, keep, grad_qkv, heads, dkh, dvh)
    else:
        lib.temporal_forward(qkv, out, stats, keep, heads, dkh, dvh)
        delta = torch.full_like(stats, float("nan"))
        lib.temporal_backward(grad_out, qkv, out, stats, delta, keep, grad_qkv, heads, dkh, dvh)
    return out, stats, grad_qkv


@pytest.mark.parametrize("op", ["spatial", "temporal"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16], ids=str)
def test_the_statistic_output_and_gradients_where_kept_keys_lie_far_below_a_dropped_one(op, dtype, seed):
    """Λ = max s + log(K + 1e-8·L), the output and the gradients against float64 given one mask:
    per sequence, random scores with every other key dropped; a dropped key 20 above the kept ones
    (acc / (K + 1e-8·L) then differs several-fold from a softmax over the kept keys); one 141
    above (the kept weights underflow); every key dropped. Nothing may be inf or NaN. Float16 runs
    the kernels' float16 branch with float16's rounding (the library called directly; the ops
    keep the host build to float32 and float64): relative to the dropped key the kept weights
    (e^-20.5) are below float16's smallest number, so the temporal forward's P·V is right only
    with its power-of-two scaling (docs/kernels.md §8)."""
    dkh, dvh, heads, tokens = 2, 3, 1, 6
    shape = (1, 2 * dkh + dvh, 4, tokens) if op == "spatial" else (1, 2 * dkh + dvh, tokens, 4)
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(shape, dtype=torch.float64, generator=generator)
    token_axis, sequence_axis = (3, 2) if op == "spatial" else (2, 3)

    def at(channels, sequence, token):  # index of (channels, sequence, token) in qkv
        index = [0, channels, 0, 0]
        index[sequence_axis], index[token_axis] = sequence, token
        return tuple(index)
    for sequence, height in ((1, 14.5), (2, 100.0)):
        qkv[at(slice(0, dkh), sequence, slice(None))] = 1.0
        qkv[at(slice(dkh, 2 * dkh), sequence, slice(1, None))] = 0.0
        qkv[at(slice(dkh, 2 * dkh), sequence, 0)] = height
    qkv = qkv.to(dtype)
    keep = torch.ones(4, heads, tokens, dtype=torch.bool)
    keep[0, 0, ::2] = False
    keep[1:3, 0, 0] = False
    keep[3] = False
    grad_out = torch.randn(1, heads * dvh, *shape[2:], dtype=torch.float64, generator=generator)
    out, stats, grad_qkv = run_library(op, qkv, heads, dkh, dvh, keep, grad_out.to(dtype))
    assert torch.isfinite(out).all() and torch.isfinite(stats).all() and torch.isfinite(grad_qkv).all()

    mask = keep.view(1, 4, heads, tokens)
    exact, expected = float64_reference(op, qkv, heads, heads * dkh, heads * dvh, mask)
    expected.backward(grad_out)
    q, k, _ = exact.detach()[0].split([dkh, dkh, dvh])
    pattern = "dsi,dsj->sij" if op == "spatial" else "dis,djs->sij"
    scores = torch.einsum(pattern, q, k) * dkh ** -0.5
    row_max = scores.amax(-1, keepdim=True)
    weights = torch.exp(scores - row_max)
    statistic = row_max[..., 0] + torch.log((weights * keep.view(4, 1, tokens)).sum(-1) + 1e-8 * weights.sum(-1))
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(stats.double().view(4, tokens), statistic, rtol=tolerance, atol=tolerance)
    assert relative_error(out, expected.detach()) <= tolerance
    assert relative_error(grad_qkv, exact.grad) <= tolerance


def test_float16_kept_weights_far_below_a_dropped_maximum_across_key_tiles(seed):
    """The temporal float16 branch over two key tiles (frames 0-31, 32-49): frame 40 scores 22.6
    above the others and is dropped, so the running maximum jumps in the second tile, the first
    tile's kept weights are rescaled and the second's (e^-22.6, below float16's smallest number)
    reach P·V only through the power-of-two scaling (docs/kernels.md §8). The output and the
    gradients against float64 given the mask; a softmax over the kept frames would differ
    several-fold."""
    t, v, heads, dkh, dvh = 50, 4, 1, 2, 3
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(1, 2 * dkh + dvh, t, v, dtype=torch.float64, generator=generator)
    qkv[:, :dkh] = 1.0                      # every query the same vector
    qkv[:, dkh:2 * dkh] = 0.0
    qkv[:, dkh:2 * dkh, 40] = 16.0          # score 16·2 / sqrt(2) = 22.6
    qkv = qkv.to(torch.float16)
    keep = torch.rand(v, heads, t, generator=generator) >= 0.5
    keep[:, :, 40] = False
    keep[:, :, 45] = True                   # every sequence keeps a frame in the second tile
    grad_out = torch.randn(1, heads * dvh, t, v, dtype=torch.float64, generator=generator)
    out, _, grad_qkv = run_library("temporal", qkv, heads, dkh, dvh, keep, grad_out.to(torch.float16))

    exact, expected = float64_reference("temporal", qkv, heads, heads * dkh, heads * dvh,
                                        keep.view(1, v, heads, t))
    expected.backward(grad_out)
    values = qkv[0, 2 * dkh:].double()
    plain = torch.stack([values[:, keep[joint, 0], joint].mean(dim=1) for joint in range(v)], dim=-1)
    assert (expected.detach()[0] / plain[:, None] < 0.4).all(), "the case does not separate the formulas"
    assert relative_error(out, expected.detach()) <= TOLERANCE[torch.float16]
    assert relative_error(grad_qkv, exact.grad) <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("op", ["spatial", "temporal"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_units_with_cuda_equal_the_reference_units(op, mode, seed):
    """A unit with backend="cuda" against the same unit with the reference: output, input
    gradient and every parameter gradient (training without DropAttention, whose masks differ)."""
    torch.manual_seed(seed)
    if op == "spatial":
        make = lambda backend: SpatialSelfAttention(16, 32, num_heads=4, drop_attention=0.0, backend=backend)
        x = torch.randn(2, 16, 5, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    else:
        make = lambda backend: TemporalSelfAttention(32, stride=1, num_heads=4, drop_attention=0.0,
                                                     backend=backend)
        x = torch.randn(2, 32, 20, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fused, plain = make("cuda").double(), make("reference").double()
    plain.load_state_dict(fused.state_dict())
    outputs, grads = [], []
    for module in (fused, plain):
        module.train(mode == "train")
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(torch.cos(out.detach()))
        outputs.append(out)
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    assert relative_error(outputs[0], outputs[1]) <= TOLERANCE[torch.float64] * 10
    assert_all_gradients_close(grads[0], grads[1], TOLERANCE[torch.float64] * 10)


@pytest.mark.usefixtures(without_compile_caches.__name__)
def test_torch_compile_traces_the_unit_without_graph_breaks(seed):
    """fullgraph=True fails on any graph break; the compiled unit with DropAttention equals the
    eager one when both draw their seed from the same generator state."""
    torch.manual_seed(seed)
    unit = SpatialSelfAttention(16, 32, num_heads=4, drop_attention=0.5, backend="cuda")
    compiled = torch.compile(unit, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, 5, 25, generator=torch.Generator().manual_seed(seed))
    assert_compiled_unit_matches_eager(unit, compiled, x, seed)


@pytest.mark.parametrize("call,message", [
    (lambda: ops.spatial_attention(torch.randn(1, 32, 2, 25, dtype=torch.float16), 2, 8, 16, backend="cuda"),
     r"host build\) takes torch.float32, torch.float64 input, got torch.float16"),
    (lambda: ops.temporal_attention(torch.randn(1, 3 * 17, 5, 2), 1, 17, 17, backend="cuda"),
     "at most 16 key and 64 value channels per head"),
    (lambda: ops.spatial_attention(torch.randn(1, 32, 2, 65), 2, 8, 16, backend="cuda"),
     r"'V \(joints\)': 65"),
    (lambda: ops.spatial_attention(torch.randn(1, 32, 2, 25), 2, 8, 16, backend="cuda",
                                   key_mask=torch.ones(1, 2, 2, 25, dtype=torch.bool)),
     "key_mask needs backend='reference'"),
])
def test_the_cuda_backend_rejects_what_it_cannot_run(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_without_the_host_build_the_backend_tells_why(monkeypatch):
    """On a CPU tensor without the host build switched on, one ValueError says why; on a machine
    without a GPU it also says why the GPU build is unavailable."""
    monkeypatch.setattr(cuda_backend, "HOST_BUILD", False)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA tensor, got one on cpu"):
            ops.spatial_attention(torch.randn(2, 32, 5, 25), 2, 8, 16, backend="cuda")
        return
    assert "cuda" not in ops.available_backends()
    with pytest.raises(ValueError, match="the cuda backend cannot run here: GPU build: .*STTR_CUDA_HOST_BUILD=1"):
        ops.spatial_attention(torch.randn(2, 32, 5, 25), 2, 8, 16, backend="cuda")


def test_the_environment_variable_switches_the_host_build_on_in_a_fresh_process():
    """STTR_CUDA_HOST_BUILD=1, read at import, makes a fresh process offer cuda for CPU tensors
    (without it, test_without_the_host_build_the_backend_tells_why covers the answer)."""
    script = ("import json, torch\n"
              "from sttr_fast import ops\n"
              "out = ops.spatial_attention(torch.randn(1, 24, 2, 25), 2, 4, 16, backend='cuda')\n"
              "print(json.dumps({'backends': ops.available_backends(), 'finite': bool(out.isfinite().all())}))\n")
    environment = {**environment_without_interpreter(), "STTR_CUDA_HOST_BUILD": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "cuda" in report["backends"] and report["finite"]
