"""The cuda backend's GPU kernels compiled by nvcc for sm_80 and sm_90, without a GPU.

csrc/cuda_launch.cu includes no torch header, so nvcc compiles it alone to a cubin per
architecture, every instantiation the launcher can pick in one translation unit, the two
architectures in parallel (cached by the sources' hash, shared with the cost model). ptxas's
report (``-Xptxas -v``) must list every kernel, and none may spill or use a stack frame (local
memory): the kernels hold their rows in registers by design.
Run them alone with ``pytest -k nvcc``.
"""
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from sttr_fast.kernels import cuda_cost_model

ARCHS = (80, 90)
KERNELS = ("SpatialForward", "SpatialBackward", "TemporalForward", "TemporalBackwardQuery", "TemporalBackwardKey")
# (dk per head, dv per head, exact): ST-TR's head splits and the generic instantiation (csrc/dispatch.h).
INSTANTIATIONS = ((4, 16, True), (8, 32, True), (16, 64, True), (16, 64, False))
ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
INSTANTIATION = re.compile(r"(" + "|".join(KERNELS) + r")IfLi(\d+)ELi(\d+)ELb([01])EE(?:E(6__half|13__nv_bfloat16|f)E)?")
# Kernels compiled once per element type (csrc/cuda_launch.cu, run_typed_phases): the forward,
# which stages its keys in chunks; the others switch on the type inside.
TYPED_KERNELS = {"TemporalForward": ("6__half", "13__nv_bfloat16", "f")}


@pytest.fixture(scope="module")
def ptxas_reports() -> dict[int, str]:
    """ptxas's report of csrc/cuda_launch.cu per architecture, with the device build's flags and line
    info, compiled once per source change and shared with the cost model's cuda rows
    (kernels/cuda_cost_model.py, compile_cubin, cached by the sources' hash)."""
    if cuda_cost_model.find_nvcc() is None:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    with ThreadPoolExecutor(len(ARCHS)) as pool:  # nvcc runs in its own process: both at once
        builds = dict(zip(ARCHS, pool.map(cuda_cost_model.compile_cubin, ARCHS)))
    return {arch: build.ptxas_report for arch, build in builds.items()}


def kernel_reports(report: str) -> dict[str, str]:
    """ptxas's lines per entry function (mangled name)."""
    parts = ENTRY.split(report)
    return {name: body for name, _, body in zip(parts[1::3], parts[2::3], parts[3::3])}


def instantiation(name: str) -> tuple | None:
    match = INSTANTIATION.search(name)
    if match is None:
        return None
    kernel, dk, dv, exact, element = match.groups()
    return kernel, int(dk), int(dv), exact == "1", element


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_every_instantiation_once(ptxas_reports, arch):
    names = kernel_reports(ptxas_reports[arch])
    compiled = {instantiation(name) for name in names} - {None}
    expected = {(kernel, *dims, element) for kernel in KERNELS for dims in INSTANTIATIONS
                for element in TYPED_KERNELS.get(kernel, (None,))}
    assert compiled == expected
    assert len(names) == len(expected) + 1  # and the key-mask kernel
    assert any("key_mask_kernel" in name for name in names)


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_kernels_neither_spill_nor_use_local_memory(ptxas_reports, arch):
    problems = []
    for name, body in kernel_reports(ptxas_reports[arch]).items():
        stack, stores, loads = map(int, re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body).groups())
        registers = int(re.search(r"Used (\d+) registers", body).group(1))
        if stack or stores or loads or "lmem" in body or registers > 255:
            problems.append(f"{instantiation(name) or name}: {registers} registers, stack {stack}, spill "
                            f"stores {stores}, loads {loads}")
    assert not problems, "\n".join(problems)


def test_cuda_rows_type_code_by_control_flow_not_by_its_inline_chain():
    """nvcc's line table can give code of one element type's branch of with_typed_data the inline
    chain of another (the 16-bit tile copies said they came through the float32 call): the cost
    model assigns typed code to the type whose entry reaches it (kernels/cuda_cost_model.py,
    element_types). No nvcc needed."""
    at = lambda address, text, chain, target=None, predicated=False: cuda_cost_model.Instruction(
        address, text.split()[0].split(".")[0], text, chain, target, predicated)
    launcher = (("cuda_launch.cu", 30),)
    bf16, fp32 = (("k.cuh", 10), ("k.cuh", 58), ("cuda_launch.cu", 40)), (("k.cuh", 10), ("k.cuh", 61),
                                                                           ("cuda_launch.cu", 40))
    tags = {("k.cuh", 58): {"only": "bf16"}, ("k.cuh", 61): {"only": "fp32"}}
    code = [at(0x00, "ISETP.NE.AND P0, PT, R0, RZ, PT", launcher),
            at(0x10, "BRA", launcher, 0x50, predicated=True),  # the type switch
            at(0x20, "MOV R1, R2", bf16),
            at(0x30, "LDG.E.U16 R3, desc[UR4][R4.64]", fp32),  # bfloat16 code with float32's chain
            at(0x40, "BRA", bf16, 0x70),
            at(0x50, "LDG.E R3, desc[UR4][R4.64]", fp32),
            at(0x60, "FADD R3, R3, R3", (("k.cuh", 12),)),  # no inline chain: typed by its entry
            at(0x70, "EXIT", launcher)]
    types = cuda_cost_model.element_types(code, tags)
    assert types[0x30] == {"bf16"} and types[0x50] == {"fp32"} and types[0x60] == {"fp32"}
    assert 0x00 not in types and 0x70 not in types
    launch = {"kernel": "TemporalForward", "threads": 32, "tiles": 1, "key_tile": 32, "copy_batch": 4}
    counted = {kind: cuda_cost_model.count(code, launch, {kind, "tokens_fastest"}, 32, 25, {}, tags).per_warp
               for kind in ("bf16", "fp32")}
    assert counted == {"bf16": 6, "fp32": 5}
