"""The CUDA backend of ``sttr_fast.ops``: torch custom ops around the kernels of ``csrc/``.

The kernels exist in two builds of the same per-thread code (docs/kernels.md §11):

- the **device build** runs them on a GPU: the extension ``sttr_fast._cuda_kernels`` that
  ``setup.py`` compiles when CUDA is present, or else a cached just-in-time build of the same
  sources through ``torch.utils.cpp_extension.load`` (ninja, nvcc);
- the **host build** runs them on the CPU over emulated blocks and threads, float32 and float64,
  so that their arithmetic is tested on machines without a GPU. It serves CPU tensors when
  ``STTR_CUDA_HOST_BUILD=1`` is set (or ``HOST_BUILD`` is set true, as the tests do), like
  ``TRITON_INTERPRET=1`` does for the Triton backend.

Each core is a pair of custom ops, ``sttr_fast::<op>_cuda`` and ``sttr_fast::<op>_cuda_backward``,
built by the scaffold both fused backends share (``custom_ops``). The forward op turns the
DropAttention seed into the key mask once with the kernels' own Philox code (docs/kernels.md §6):
the same seed and offset give the Triton backend's mask bit for bit.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from . import custom_ops

# Serve CPU tensors with the host build of the kernels.
HOST_BUILD = os.environ.get("STTR_CUDA_HOST_BUILD") == "1"
# What the kernels have code for (csrc/launch.h, kMaxDkh, kMaxDvh, kMaxJoints).
MAX_DKH, MAX_DVH, MAX_JOINTS = 16, 64, 64
DEVICE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HOST_DTYPES = (torch.float32, torch.float64)
# The operator libraries of the two builds (STTR_NS in csrc/binding.cpp); distinct, so that both
# may be loaded in one process.
DEVICE_LIBRARY, HOST_LIBRARY = "sttr_fast_cuda", "sttr_fast_cuda_host"
# The extension setup.py builds when CUDA is present.
PREBUILT_EXTENSION = "sttr_fast._cuda_kernels"


class Unavailable(Exception):
    """Why a build of the kernels cannot be loaded here."""


def source_dir() -> Path:
    """csrc/, installed as the package sttr_fast.csrc (setup.py)."""
    try:
        from .. import csrc
    except ImportError as error:  # an install made before csrc/ existed
        raise Unavailable("the kernel sources (csrc/) are not installed with sttr_fast; reinstall it "
                          "(pip install -e .)") from error
    return Path(csrc.__file__).parent


def _compile_flags(namespace: str, device: bool) -> list[str]:
    return ["-O3", f"-DSTTR_NS={namespace}"] + (["-DSTTR_DEVICE_BUILD"] if device else [])


def build_sources(device: bool) -> list[str]:
    """The translation units of a build: the binding and one launcher."""
    launcher = "cuda_launch.cu" if device else "host_launch.cpp"
    return [str(source_dir() / "binding.cpp"), str(source_dir() / launcher)]


# Each build is loaded, or found unavailable, once per process: device flag -> its operator
# namespace, or why it is unavailable.
_LOADED: dict[bool, object] = {}


def _load(device: bool):
    """The build's operator namespace (``torch.ops.<library>``), or a string saying why not."""
    if device not in _LOADED:
        try:
            _LOADED[device] = _build(device)
        except Unavailable as error:
            _LOADED[device] = str(error)
    return _LOADED[device]


def _build(device: bool):
    from torch.utils import cpp_extension

    if not device:
        try:
            cpp_extension.load(name=HOST_LIBRARY, sources=build_sources(False),
                               extra_cflags=_compile_flags(HOST_LIBRARY, False), is_python_module=False)
        except Unavailable:
            raise
        except Exception as error:  # a compiler or ninja missing, or a build error: say which
            raise Unavailable(f"the host build of csrc/ failed: {error}") from error
        return getattr(torch.ops, HOST_LIBRARY)
    if torch.version.cuda is None:
        raise Unavailable(f"this torch ({torch.__version__}) is built without CUDA")
    if not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU is visible")
    prebuilt = importlib.util.find_spec(PREBUILT_EXTENSION)
    if prebuilt is None and cpp_extension.CUDA_HOME is None:
        raise Unavailable("the extension was not built at install time and nvcc is not found for a "
                          "just-in-time build (set CUDA_HOME, or reinstall with FORCE_CUDA=1)")
    try:
        if prebuilt is not None:
            torch.ops.load_library(prebuilt.origin)
        else:
            flags = _compile_flags(DEVICE_LIBRARY, True)
            cpp_extension.load(name=DEVICE_LIBRARY, sources=build_sources(True), extra_cflags=flags,
                               extra_cuda_cflags=flags, is_python_module=False)
    except Unavailable:
        raise
    except Exception as error:
        raise Unavailable(f"building or loading the CUDA kernels failed: {error}") from error
    return getattr(torch.ops, DEVICE_LIBRARY)


# torch.compile calls it at trace time and keeps the answer, rather than tracing a build.
@torch.compiler.assume_constant_result
def unavailable_reason(device: bool) -> str | None:
    """None when the build loads, else why it does not."""
    loaded = _load(device)
    return loaded if isinstance(loaded, str) else None


def library(device: torch.device):
    """The operators of the build that serves tensors on ``device``."""
    loaded = _load(device.type == "cuda")
    if isinstance(loaded, str):
        raise RuntimeError(f"the cuda backend cannot run on {device}: {loaded}")
    return loaded


def usable() -> bool:
    """Whether ``backend="cuda"`` can run here: a GPU with a loadable device build, or the host
    build switched on and compiled."""
    return unavailable_reason(True) is None or (HOST_BUILD and unavailable_reason(False) is None)


def why_unusable() -> str:
    """For the error of an unavailable ``backend="cuda"``."""
    reasons = [f"GPU build: {unavailable_reason(True)}"]
    if HOST_BUILD:
        reasons.append(f"host build: {unavailable_reason(False)}")
    else:
        reasons.append("host build: off (set STTR_CUDA_HOST_BUILD=1 to run the kernels' host build on CPU "
                       "tensors)")
    return "; ".join(reasons)


def unsupported(op: str, qkv: torch.Tensor, num_heads: int, dk: int, dv: int) -> str | None:
    """Why the kernels cannot take this input (beyond ``ops._check_qkv``), or None when they can."""
    if qkv.device.type == "cuda":
        reason, dtypes = unavailable_reason(True), DEVICE_DTYPES
    elif qkv.device.type == "cpu" and HOST_BUILD:
        reason, dtypes = unavailable_reason(False), HOST_DTYPES
    else:
        return (f"{op}: backend='cuda' needs a CUDA tensor, got one on {qkv.device} (set "
                "STTR_CUDA_HOST_BUILD=1 to run the kernels' host build on CPU tensors)")
    if reason is not None:
        return f"{op}: backend='cuda' cannot run: {reason}"
    if qkv.dtype not in dtypes:
        build = "GPU" if qkv.device.type == "cuda" else "host"
        return (f"{op}: backend='cuda' ({build} build) takes {', '.join(str(d) for d in dtypes)} input, "
                f"got {qkv.dtype}; use backend='reference'")
    limits = {"dk per head": (dk // num_heads, MAX_DKH), "dv per head": (dv // num_heads, MAX_DVH)}
    if op == "spatial_attention":
        limits["V (joints)"] = (qkv.shape[3], MAX_JOINTS)
    too_large = {name: size for name, (size, limit) in limits.items() if size > limit}
    if too_large:
        return (f"{op}: backend='cuda' handles at most {MAX_DKH} key and {MAX_DVH} value channels per "
                f"head and, spatially, {MAX_JOINTS} joints; got {too_large}; use backend='triton' or "
                "'reference'")
    return None


# --- the DropAttention mask (docs/kernels.md §6) ---------------------------------------------------

def materialize_key_mask(rng_state: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The boolean keep-mask of ``shape`` (sequences..., heads, keys) for ``rng_state`` and ``p``,
    computed by the kernels' Philox code on rng_state's device."""
    mask = torch.empty(shape, dtype=torch.bool, device=rng_state.device)
    library(rng_state.device).key_mask(rng_state, mask, p)
    return mask


# --- custom ops -------------------------------------------------------------------------------------

# Every buffer the kernels fill comes from here; the tests swap in one that fills it with NaN.
_allocate = custom_ops.empty


def _buffer(shape, dtype, device):
    return _allocate(shape, dtype, device)


def _spatial_forward(qkv, out, stats, keep, heads, dk, dv, p):
    library(qkv.device).spatial_forward(qkv, out, stats, keep, heads, dk // heads, dv // heads)


def _spatial_backward(grad_out, qkv, out, stats, keep, grad_qkv, heads, dk, dv, p, allocate):
    # D = rowsum(dO ⊙ O) comes from the rows the block holds; out is not read.
    library(qkv.device).spatial_backward(grad_out, qkv, stats, keep, grad_qkv, heads, dk // heads, dv // heads)


def _temporal_forward(qkv, out, stats, keep, heads, dk, dv, p):
    library(qkv.device).temporal_forward(qkv, out, stats, keep, heads, dk // heads, dv // heads)


def _temporal_backward(grad_out, qkv, out, stats, keep, grad_qkv, heads, dk, dv, p, allocate):
    delta = allocate(stats.shape, stats.dtype, stats.device)  # D per query, query kernel -> key kernel
    library(qkv.device).temporal_backward(grad_out, qkv, out, stats, delta, keep, grad_qkv, heads, dk // heads,
                                          dv // heads)


_spatial_fused = custom_ops.register(
    "spatial_attention", "cuda", custom_ops.FusedCore(_spatial_forward, _spatial_backward,
                                                      custom_ops.spatial_sequences),
    materialize_key_mask, _buffer)
_temporal_fused = custom_ops.register(
    "temporal_attention", "cuda", custom_ops.FusedCore(_temporal_forward, _temporal_backward,
                                                       custom_ops.temporal_sequences),
    materialize_key_mask, _buffer)


def spatial_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The CUDA SSA core; input already validated by ``sttr_fast.ops``."""
    return _spatial_fused(qkv, num_heads, dk, dv, p)


def temporal_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The CUDA TSA core; input already validated by ``sttr_fast.ops``."""
    return _temporal_fused(qkv, num_heads, dk, dv, p)
