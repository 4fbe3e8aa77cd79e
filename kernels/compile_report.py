"""Ahead-of-time compilation of the attention kernels for sm_80 and sm_90; no GPU needed.

Every kernel variant (dtype, DropAttention on/off, qkv layout, tile shape) is compiled with
``triton.compiler.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` using the argument
specialisation Triton's launcher would use for a real-sized problem, and the cubin's resource usage
(registers, stack frame, local memory) is read with ``cuobjdump --dump-resource-usage``. Spilled
registers live in the stack frame, so a config the launcher may pick within its register budget
must use neither stack nor local memory; the exit status is 1 when one does. Where no config is
within budget the launcher falls back to the smallest tiles; such rows say "fallback" and their
spills are reported, not failed.

    python -m sttr_fast.kernels.compile_report [--matrix ci|full] [--family spatial|temporal|all]
                                               [--all-configs] [--jobs N] [--json PATH]

The temporal kernels have no register budget: every config the launcher may pick for a length (the
least padded ones) must compile without spills.

Must run with ``TRITON_INTERPRET`` unset: the interpreter replaces kernels by Python functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
# Triton's own argument specialisation, as its launcher applies it (private, in 3.6 and 3.9 alike).
from triton._C.libtriton import native_specialize_impl

from . import dropattention_rng, spatial_attention, temporal_attention

ARCHS = (80, 90)
# ST-TR's per-head splits at V=25 (joints: 4/16 and 8/32; joints+bones: 8/32 and 16/64), the
# largest tiles the launcher accepts, and the smallest.
SHAPES = ((25, 4, 16), (25, 8, 32), (25, 16, 64), (64, 64, 64), (7, 1, 1))
# A real problem's size (N' = 32 clips x 2 persons, T = 300, 8 heads) for Triton's
# specialisation of sizes and strides on divisibility by 16.
BATCH, FRAMES, HEADS = 64, 300, 8
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# T-TR's TSA layers (L = 150 with dkh/dvh 4/16, L = 75 with 8/32; joints+bones double them), the
# longest sequence the issue asks for, and the smallest problem.
TEMPORAL_SHAPES = ((150, 4, 16), (75, 8, 32), (150, 8, 32), (75, 16, 64), (1024, 16, 64), (7, 1, 1))
TEMPORAL_KERNELS = {"temporal_forward": temporal_attention.temporal_attention_forward_kernel,
                    "temporal_backward_query": temporal_attention.temporal_attention_backward_query_kernel,
                    "temporal_backward_key": temporal_attention.temporal_attention_backward_key_kernel}
# The temporal batch: 64 sequences-of-joints problems of V = 25 joints.
JOINTS = 25


@dataclasses.dataclass(frozen=True)
class Variant:
    kernel: str            # "forward", "backward" (spatial), "key_mask" or one of TEMPORAL_KERNELS
    dtype: str = "bf16"
    drop: bool = True
    # Of qkv, the output and the gradients: "contiguous", "channels_last", or "frames_inner"
    # (TSA's qkv: the convolution output (N', C, V, T) transposed, frames unit-stride); "flat".
    layout: str = "contiguous"
    shape: tuple[int, int, int] = (25, 4, 16)  # V (spatial) or L (temporal), dk per head, dv per head


def variants(matrix: str, family: str = "all") -> list[Variant]:
    """``full``: every combination. ``ci``: how ST-TR trains: DropAttention on, in bf16 (fp16
    compiles to bf16's code) and fp32; spatial kernels on contiguous tensors at every shape but the
    smallest, temporal kernels on TSA's layout at T-TR's shapes.
    Spatial full runs so far added only stack frames of 8-32 bytes at under 128 registers, which no
    register budget predicts: two fp32 channels_last rows under Triton 3.6, and a dozen rows with
    DropAttention off or channels_last under Triton 3.9, where its ``--regAllocOptLevel 2`` ptxas
    flag causes them (ptxas without it uses no stack there)."""
    chosen = []
    if family in ("spatial", "all"):
        if matrix == "full":
            chosen += [Variant(k, d, drop, layout, shape) for k in ("forward", "backward") for d in _DTYPES
                       for drop in (True, False) for layout in ("contiguous", "channels_last")
                       for shape in SHAPES]
        else:
            chosen += [Variant(k, d, True, "contiguous", shape) for k in ("forward", "backward")
                       for d in ("bf16", "fp32") for shape in SHAPES[:-1]]
        chosen.append(Variant("key_mask", dtype="bool", layout="flat"))
    if family in ("temporal", "all"):
        if matrix == "full":
            chosen += [Variant(k, d, drop, layout, shape) for k in TEMPORAL_KERNELS for d in _DTYPES
                       for drop in (True, False) for layout in ("frames_inner", "contiguous")
                       for shape in TEMPORAL_SHAPES]
        else:
            chosen += [Variant(k, d, True, "frames_inner", shape) for k in TEMPORAL_KERNELS
                       for d in ("bf16", "fp32") for shape in TEMPORAL_SHAPES[:5]]
    return chosen


def _temporal_problem(variant: Variant) -> tuple[triton.JITFunction, list, dict, list[triton.Config], list, list]:
    length, dkh, dvh = variant.shape
    dk, dv = HEADS * dkh, HEADS * dvh
    dtype = _DTYPES[variant.dtype]

    def tensor(channels):
        if variant.layout == "frames_inner":
            return torch.empty(BATCH, channels, JOINTS, length, dtype=dtype, device="meta").transpose(2, 3)
        return torch.empty(BATCH, channels, length, JOINTS, dtype=dtype, device="meta")

    qkv, out, grad_qkv = tensor(2 * dk + dv), tensor(dv), tensor(2 * dk + dv)
    stats = torch.empty(BATCH * JOINTS, HEADS, length, dtype=torch.float32, device="meta")
    p = 0.5 if variant.drop else 0.0
    keep = torch.empty(stats.shape, dtype=torch.bool, device="meta") if variant.drop else None
    if variant.kernel == "temporal_forward":
        args, constants = temporal_attention.forward_arguments(qkv, HEADS, dk, dv, p, keep, out, stats)
    elif variant.kernel == "temporal_backward_query":
        args, constants = temporal_attention.backward_query_arguments(out, qkv, out, stats, stats, HEADS,
                                                                      dk, dv, p, keep, grad_qkv)
    else:
        args, constants = temporal_attention.backward_key_arguments(out, qkv, stats, stats, HEADS, dk, dv,
                                                                    p, keep, grad_qkv)
    configs = temporal_attention.CONFIGS
    picked = temporal_attention.launch_configs(length, qkv.element_size())
    return TEMPORAL_KERNELS[variant.kernel], args, constants, configs, picked, [True] * len(configs)


def _problem(variant: Variant) -> tuple[triton.JITFunction, list, dict, list[triton.Config], list, list]:
    """Kernel, launch arguments (meta tensors), constexprs, all configs, the ones the launcher may
    pick, and which configs are within the register budget."""
    if variant.kernel in TEMPORAL_KERNELS:
        return _temporal_problem(variant)
    if variant.kernel == "key_mask":
        mask = torch.empty(BATCH * FRAMES * HEADS * 25, dtype=torch.bool, device="meta")
        rng = torch.empty(2, dtype=torch.int64, device="meta")
        config = triton.Config({"BLOCK": dropattention_rng._MASK_BLOCK}, num_warps=4, num_stages=1)
        return (dropattention_rng._materialize_key_mask_kernel, [rng, mask, mask.numel(), 0.5], {},
                [config], [config], [True])
    v, dkh, dvh = variant.shape
    dk, dv = HEADS * dkh, HEADS * dvh
    dtype = _DTYPES[variant.dtype]
    layout = torch.channels_last if variant.layout == "channels_last" else torch.contiguous_format

    def tensor(channels):
        return torch.empty(BATCH, channels, FRAMES, v, dtype=dtype, device="meta", memory_format=layout)

    qkv, out = tensor(2 * dk + dv), tensor(dv)
    stats = torch.empty(BATCH * FRAMES, HEADS, v, dtype=torch.float32, device="meta")
    p = 0.5 if variant.drop else 0.0
    keep = torch.empty(stats.shape, dtype=torch.bool, device="meta") if variant.drop else None
    if variant.kernel == "forward":
        fn = spatial_attention.spatial_attention_forward_kernel
        args, constants = spatial_attention.forward_arguments(qkv, HEADS, dk, dv, p, keep, out, stats)
    else:
        fn = spatial_attention.spatial_attention_backward_kernel
        args, constants = spatial_attention.backward_arguments(out, qkv, stats, HEADS, dk, dv, p, keep,
                                                               tensor(2 * dk + dv))
    blocks = spatial_attention.block_sizes(v, dkh, dvh)
    shape = (qkv.element_size(), blocks["BLOCK_V"], blocks["BLOCK_DK"], blocks["BLOCK_DV"])
    configs = spatial_attention.CONFIGS
    picked = spatial_attention.fitting_configs(configs, variant.kernel, *shape)
    fits = [spatial_attention.within_budget(c, variant.kernel, *shape) for c in configs]
    return fn, args, constants, configs, picked, fits


def _source(fn: triton.JITFunction, args: list, constants: dict) -> ASTSource:
    """The ASTSource Triton's launcher builds for these arguments: integers equal to 1 and None
    become constants, integers and pointers divisible by 16 get the divisibility attribute."""
    positional = iter(args)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = constants[param.name]
            continue
        value = next(positional)
        kind, specialisation = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = value
        elif isinstance(specialisation, str):
            attrs[(index,)] = BaseBackend.parse_attr(specialisation)
    return ASTSource(fn, signature, constexprs, attrs)


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _compile(job: tuple[Variant, int, int]) -> dict:
    variant, arch, config_index = job
    fn, args, constants, configs, picked, fits = _problem(variant)
    config = configs[config_index]
    source = _source(fn, args, {**constants, **config.kwargs})
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
    found = _RESOURCES.search(usage)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {variant} on sm_{arch}:\n{usage}")
    registers, stack, shared, local = map(int, found.groups())
    return {**dataclasses.asdict(variant), "arch": arch, "config": dict(config.kwargs),
            "num_warps": config.num_warps, "num_stages": config.num_stages,
            "picked": any(config is c for c in picked),
            "within_budget": fits[config_index],
            "registers": registers, "stack_bytes": stack, "local_bytes": local,
            "shared_bytes": kernel.metadata.shared, "spills": stack > 0 or local > 0}


def compile_all(matrix: str = "ci", all_configs: bool = False, jobs: int = 2,
                family: str = "all") -> list[dict]:
    """Compile the chosen variants for every arch; configs the launcher may pick, or all."""
    work = []
    for variant in variants(matrix, family):
        _, _, _, configs, picked, _ = _problem(variant)
        work += [(variant, arch, index) for arch in ARCHS for index, config in enumerate(configs)
                 if all_configs or any(config is c for c in picked)]
    # Workers must not inherit an interpreter setting; compilation is CPU-bound, hence processes.
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_compile, work))


def _pick_label(row: dict) -> str:
    if not row["picked"]:
        return "no"
    return "yes" if row["within_budget"] else "fallback"


def failures(rows: list[dict]) -> list[dict]:
    """Configs the launcher may pick within budget that still use stack or local memory."""
    return [r for r in rows if r["picked"] and r["within_budget"] and r["spills"]]


def format_table(rows: list[dict]) -> str:
    header = (f"{'kernel':<24}{'dtype':<6}{'drop':<6}{'layout':<14}{'V|L/dkh/dvh':<13}{'sm':<4}"
              f"{'tile':>7}{'warps':>6}{'stages':>7}{'picked':>9}{'regs':>6}{'stack':>7}{'local':>7}{'smem':>8}")
    lines = [header]
    for r in rows:
        config = r["config"]
        tile = (str(config["BLOCK_F"]) if "BLOCK_F" in config
                else f"{config['BLOCK_M']}x{config['BLOCK_N']}" if "BLOCK_M" in config else "-")
        shape = "/".join(map(str, r["shape"])) if r["kernel"] != "key_mask" else "-"
        lines.append(f"{r['kernel']:<24}{r['dtype']:<6}{str(r['drop']):<6}{r['layout']:<14}{shape:<13}"
                     f"{r['arch']:<4}{tile:>7}{r['num_warps']:>6}{r['num_stages']:>7}{_pick_label(r):>9}"
                     f"{r['registers']:>6}{r['stack_bytes']:>7}{r['local_bytes']:>7}{r['shared_bytes']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", choices=("ci", "full"), default="ci")
    parser.add_argument("--family", choices=("spatial", "temporal", "all"), default="all")
    parser.add_argument("--all-configs", action="store_true",
                        help="also compile the configs the launcher prunes for a shape")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    options = parser.parse_args(argv)
    if triton.knobs.runtime.interpret:
        print("compile_report: unset TRITON_INTERPRET; the interpreter does not compile kernels",
              file=sys.stderr)
        return 2
    rows = compile_all(options.matrix, options.all_configs, options.jobs, options.family)
    print(format_table(rows))
    if options.json:
        with open(options.json, "w") as f:
            json.dump(rows, f, indent=1)
    fallbacks = [r for r in rows if r["picked"] and not r["within_budget"]]
    if fallbacks:
        print(f"{len(fallbacks)} variant(s) have no config within the register budget; the launcher "
              f"falls back to its smallest tiles ({sum(r['spills'] for r in fallbacks)} of them spill)")
    spilled = failures(rows)
    if spilled:
        print(f"{len(spilled)} config(s) the launcher may pick use stack or local memory (spills)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
