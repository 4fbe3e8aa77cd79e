"""The cuda backend's device build on a GPU: the Triton test matrix re-used for ``backend="cuda"``.

Skipped without a CUDA GPU (the host build's tests, tests/test_cuda_backend_host.py, check the
same kernel code on the CPU). On a GPU: the shapes of the Triton tests and ST-TR's real layer
shapes in float32, float16 and bfloat16, p = 0 and 0.5, against the float64 reference given the
kernels' own mask, within the reference backend's own error in the same dtype
(tests/triton_harness.py); and the cuda backend against the triton backend for the same seed.
"""
import pytest
import torch

from sttr_fast import ops
from sttr_fast.ops import cuda_backend, custom_ops
from triton_harness import (DEVICE, assert_matches_reference, key_mask_shape, needs_gpu, poison_buffers,
                            random_qkv, relative_error)

pytestmark = needs_gpu

OPS = {"spatial": ops.spatial_attention, "temporal": ops.temporal_attention}
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N', T, V, heads, dk per head, dv per head), as in the Triton tests.
SHAPES = {
    "spatial": [(2, 5, 25, 2, 4, 8), (1, 7, 11, 3, 1, 3), (3, 3, 16, 1, 16, 16), (1, 9, 33, 2, 5, 7),
                (4, 1, 2, 1, 2, 2)],
    "temporal": [(1, 1, 3, 2, 4, 8), (2, 7, 2, 3, 1, 3), (1, 75, 2, 2, 8, 16), (1, 150, 1, 1, 4, 16),
                 (1, 301, 1, 1, 16, 5), (2, 20, 3, 2, 5, 7), (1, 40, 2, 1, 4, 32)],
}
# ST-TR's layers (T or L, dk per head, dv per head) at N' = 64, 8 heads; joints+bones doubles the
# head dims.
REAL_LAYERS = {"spatial": [(300, 4, 16), (150, 8, 32), (75, 8, 32)],
               "temporal": [(150, 4, 16), (75, 8, 32), (300, 4, 16)]}


@pytest.fixture(autouse=True)
def nan_poisoned_buffers(monkeypatch):
    poison_buffers(monkeypatch, cuda_backend)


def check_cuda_against_reference(op, shape, dtype, p, seed):
    qkv, heads, dk, dv = random_qkv(shape, dtype, seed)
    torch.manual_seed(seed)
    out = OPS[op](qkv, heads, dk, dv, p=p, backend="cuda")
    torch.manual_seed(seed)
    mask = (cuda_backend.materialize_key_mask(custom_ops.new_rng_state(DEVICE), key_mask_shape(op, qkv, heads), p)
            if p > 0 else None)
    grad_out = torch.randn(out.shape, dtype=torch.float64, device=DEVICE,
                           generator=torch.Generator(DEVICE).manual_seed(seed))
    assert_matches_reference(op, qkv, heads, dk, dv, out, mask, grad_out.to(dtype), seed)


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("op,shape", [(op, shape) for op in SHAPES for shape in SHAPES[op]], ids=str)
def test_cuda_on_the_gpu_matches_the_reference(op, shape, dtype, p, seed):
    check_cuda_against_reference(op, shape, dtype, p, seed)


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("streams", [1, 2], ids=["joints", "joints+bones"])
@pytest.mark.parametrize("op,layer", [(op, layer) for op in REAL_LAYERS for layer in REAL_LAYERS[op]], ids=str)
def test_cuda_on_real_st_tr_shapes(op, layer, streams, dtype, p, seed):
    t, dkh, dvh = layer
    check_cuda_against_reference(op, (64, t, 25, 8, dkh * streams, dvh * streams), dtype, p, seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("op", ["spatial", "temporal"])
def test_cuda_equals_triton_for_the_same_seed(op, dtype, seed):
    """The same seed gives both backends the same mask, so they compute the same function; each
    rounds on its own, so they agree to the dtype's precision."""
    qkv, heads, dk, dv = random_qkv((8, 75, 25, 8, 8, 32), dtype, seed)
    outputs = []
    for backend in ("cuda", "triton"):
        torch.manual_seed(seed)
        outputs.append(OPS[op](qkv, heads, dk, dv, p=0.5, backend=backend))
    assert relative_error(outputs[0], outputs[1]) <= (1e-5 if dtype == torch.float32 else 2e-2)


def test_the_gpu_build_rejects_float64(seed):
    qkv, heads, dk, dv = random_qkv((1, 4, 25, 2, 4, 16), torch.float64, seed)
    with pytest.raises(ValueError, match="GPU build\\) takes torch.float16, torch.bfloat16, torch.float32"):
        ops.spatial_attention(qkv, heads, dk, dv, backend="cuda")
