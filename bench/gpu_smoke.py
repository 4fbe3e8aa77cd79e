"""The GPU script's first check (bench/gpu_check.sh): every fused backend on fixed problems, one
printed line per case as it finishes, so that whatever the time limit cuts off, what ran is known.

Cases: ST-TR's real layer shapes (T, per-head dims, 25 joints, 8 heads; N' = 8 sequence batches to
stay quick), bfloat16 and float32, DropAttention off (p = 0), on (p = 0.5) and, for the first shape
of each core, dropping every key (p = 1, so every row is an all-dropped row), forward and backward against the float64 reference
given the kernel's own mask, within the bound the tests use (tests/triton_harness.py: 4 x the
reference backend's own error in the same dtype, plus a floor). Every output and gradient buffer
starts as NaN, so an element a kernel does not write fails. ``--small`` runs small ragged shapes
instead (for compute-sanitizer, which is slow). ``--configs FILE`` writes the launch config each
kernel ran (pinned with STTR_PIN_CONFIGS=1; otherwise the autotuners' choices).

    STTR_PIN_CONFIGS=1 python bench/gpu_smoke.py [--small] [--configs configs.json]

Exit code 1 when a case fails, 0 when every case passes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from triton_harness import (allowed_error, float64_reference, gradient_errors,  # noqa: E402
                            key_mask_shape, relative_error, same_dtype_reference)

from sttr_fast import ops  # noqa: E402
from sttr_fast.kernels.dropattention_rng import materialize_key_mask  # noqa: E402
from sttr_fast.ops.custom_ops import new_rng_state  # noqa: E402
from sttr_fast.ops import triton_backend  # noqa: E402

# (op, N', T, V, heads, dk per head, dv per head): the cost model's layers (docs/cost-model.md §5).
REAL = [("spatial", 8, 300, 25, 8, 4, 16), ("spatial", 8, 150, 25, 8, 8, 32), ("spatial", 8, 75, 25, 8, 16, 64),
        ("temporal", 8, 150, 25, 8, 4, 16), ("temporal", 8, 75, 25, 8, 8, 32), ("temporal", 8, 75, 25, 8, 16, 64)]
# Ragged: joints, frames and head dims that fill no tile, heads that are not 8.
SMALL = [("spatial", 3, 5, 7, 2, 3, 5), ("spatial", 2, 9, 25, 8, 4, 16),
         ("temporal", 3, 37, 3, 2, 3, 5), ("temporal", 2, 19, 25, 8, 8, 32)]
# Under TRITON_INTERPRET=1 without a GPU the script runs on the CPU: a check of the script itself.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = {"spatial": ops.spatial_attention, "temporal": ops.temporal_attention}


def _poisoned(shape, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device).fill_(float("nan"))


def check(backend: str, op: str, shape: tuple, dtype: torch.dtype, p: float, seed: int) -> tuple[bool, str]:
    n, t, v, heads, dkh, dvh = shape
    dk, dv = heads * dkh, heads * dvh
    generator = torch.Generator(DEVICE).manual_seed(seed)
    qkv = (torch.randn(n, 2 * dk + dv, v, t, device=DEVICE, generator=generator, dtype=torch.float64) * 1.5
           ).to(dtype).transpose(2, 3).requires_grad_(True)  # the layout the units pass
    grad_out = torch.randn(n, dv, t, v, device=DEVICE, generator=generator, dtype=torch.float64).to(dtype)
    torch.manual_seed(seed)
    out = OPS[op](qkv, heads, dk, dv, p=p, backend=backend)
    torch.manual_seed(seed)
    mask = materialize_key_mask(new_rng_state(qkv.device), key_mask_shape(op, qkv, heads), p) if p > 0 else None
    exact, expected = float64_reference(op, qkv, heads, dk, dv, mask)
    same, yardstick = same_dtype_reference(op, qkv, heads, dk, dv, mask)
    errors = {"out": (relative_error(out, expected), allowed_error(dtype, relative_error(yardstick, expected)))}
    out.backward(grad_out)
    expected.backward(grad_out.double())
    yardstick.backward(grad_out)
    same_errors = gradient_errors(same.grad, exact.grad, dk)
    for name, error in gradient_errors(qkv.grad, exact.grad, dk).items():
        errors[name] = (error, allowed_error(dtype, same_errors[name]))
    ok = all(error <= bound for error, bound in errors.values())
    if p == 1.0:  # every key dropped: DropAttention's weights are exactly zero, so is the output
        ok = ok and bool((out == 0).all())
    text = " ".join(f"{name} {error:.1e}{'<=' if error <= bound else '>'}{bound:.1e}"
                    for name, (error, bound) in errors.items())
    return ok, text


def launch_choices() -> dict:
    """The config each kernel launched with: the autotuners' choices per key, or the pinned ones."""
    from sttr_fast.kernels import attention_common, spatial_attention, temporal_attention

    choices = {"pinned": attention_common.PIN_CONFIGS, "autotuned": {}}
    tuners = {"spatial_forward": spatial_attention._forward, "spatial_backward": spatial_attention._backward,
              **{f"temporal_{name}": tuner for name, tuner in temporal_attention._AUTOTUNED.items()}}
    for name, tuner in tuners.items():
        choices["autotuned"][name] = {str(key): str(config) for key, config in tuner.cache.items()}
    return choices


def pinned_choices(cases) -> dict:
    """What STTR_PIN_CONFIGS=1 runs for each case's shape and dtype."""
    from sttr_fast.kernels import spatial_attention, temporal_attention
    from sttr_fast.kernels.attention_common import padded_dim

    pinned = {}
    for op, shape, dtype in cases:
        _, t, v, _, dkh, dvh = shape
        size = torch.finfo(dtype).bits // 8
        if op == "spatial":
            for kernel in ("forward", "backward"):
                config = spatial_attention.fitting_configs(spatial_attention.CONFIGS, kernel, size, padded_dim(v),
                                                           padded_dim(dkh), padded_dim(dvh))[0]
                pinned[f"spatial_{kernel} T={t} V={v} {dkh}/{dvh} {dtype}"] = str(config)
        else:
            pinned[f"temporal L={t} {dtype}"] = str(temporal_attention.launch_configs(t, size)[0])
    return pinned


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small ragged shapes (for compute-sanitizer)")
    parser.add_argument("--configs", type=Path, help="write the launch configs the kernels ran here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_smoke.py: error: needs a CUDA GPU (or TRITON_INTERPRET=1 to try it on the CPU)",
              file=sys.stderr)
        return 2
    triton_backend._allocate = _poisoned  # every buffer the kernels fill starts as NaN
    backends = [b for b in ("triton", "cuda") if b in ops.available_backends()]
    shapes = SMALL if args.small else REAL
    dtypes = [torch.float32] if args.small else [torch.bfloat16, torch.float32]
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else "the CPU (Triton's interpreter)"
    print(f"gpu_smoke: backends {backends} on {where}", flush=True)
    failures = total = 0
    ran = []
    for seed, (op, *shape) in enumerate(shapes):
        # p = 1 drops every key of every row: once per op is enough to check all-dropped rows.
        first_of_op = seed == min(i for i, case in enumerate(shapes) if case[0] == op)
        probabilities = [0.5] if args.small else [0.0, 0.5]
        probabilities += [1.0] if first_of_op or args.small else []
        for dtype in dtypes:
            ran.append((op, tuple(shape), dtype))
            for p in probabilities:
                for backend in backends:
                    total += 1
                    start = time.perf_counter()
                    n, t, v, heads, dkh, dvh = shape
                    label = f"{backend:6} {op:8} N'={n} T={t} V={v} H={heads} {dkh}/{dvh} {str(dtype)[6:]:8} p={p}"
                    try:
                        ok, text = check(backend, op, tuple(shape), dtype, p, seed)
                    except Exception as error:  # report and go on: the next case may still run
                        ok, text = False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                    failures += not ok
                    print(f"[smoke] {'ok  ' if ok else 'FAIL'} {label}  {text}  ({time.perf_counter() - start:.1f} s)",
                          flush=True)
    if args.configs:
        args.configs.write_text(json.dumps({**launch_choices(), "pinned_per_case": pinned_choices(ran)},
                                           indent=1) + "\n")
    print(f"gpu_smoke: {total - failures}/{total} cases passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
