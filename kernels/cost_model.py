"""Speed-of-light cost model of the attention kernels, read from their compiled code; no GPU needed.

Every kernel (spatial forward and backward and the key-mask kernel; temporal forward,
backward_query and backward_key) is compiled for the device's architecture at ST-TR's real layer
shapes, in the layout ``SpatialSelfAttention`` and ``TemporalSelfAttention`` hand to the ops, once
for every autotune candidate the launcher keeps. From the compiled kernel it reads

* registers and spills (``cuobjdump --dump-resource-usage``),
* the warp replication of every ``tt.dot``: how many warps compute the same accumulator elements
  because the layout Triton chose spans more rows (or columns) than the tile has (TTGIR),
* SASS instructions inside and outside the loop (backward branches in ``cuobjdump -sass``),
  which with the trip count and the grid give the warp instructions the kernel issues,

and compares the time to issue them (4 warp instructions per clock per SM) with the kernel's
bounds: its minimum bytes (every input read once, every output written once) over the copy
bandwidth, and the exponentials it needs (one per score of its padded tiles) over the MUFU rate.
The predicted fraction of speed of light is bound / max(bound, issue time). It ignores latency,
occupancy, caches, access patterns and the difference between tensor-core, FMA and memory pipes:
docs/cost-model.md says how to read it. A measurement on a GPU replaces it. The cuda backend's
kernels (csrc/) get rows of the same kind from nvcc's cubin (kernels/cuda_cost_model.py,
docs/cost-model.md §10).

    python -m sttr_fast.kernels.cost_model [--device h100|h200|a100] [--family spatial|temporal|all]
                                           [--kernel NAME] [--quick] [--all-configs]
                                           [--layout module|contiguous|channels_last]
                                           [--backend all|triton|cuda]
                                           [--jobs N] [--json PATH] [--markdown PATH]

Must run with ``TRITON_INTERPRET`` unset: the interpreter replaces kernels by Python functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton.backends.compiler import GPUTarget

from ..ops import custom_ops
from . import compile_report, cuda_cost_model, dropattention_rng, spatial_attention, temporal_attention
from .attention_common import padded_dim

# --- devices ---------------------------------------------------------------------------------------

# MUFU.EX2 throughput of sm_80 and sm_90: 16 per clock per SM (CUDA C++ Programming Guide,
# arithmetic instruction throughput table); every tl.exp is one MUFU.EX2.
EXP_PER_CLOCK_PER_SM = 16
# Four schedulers per SM, each issuing one warp instruction per clock.
ISSUE_PER_CLOCK_PER_SM = 4


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    arch: int              # compute capability the kernels are compiled for
    sms: int
    clock_hz: float        # sustained SM clock under load
    bandwidth: float       # bytes/s a large copy achieves
    note: str

    @property
    def exp_per_s(self) -> float:
        return EXP_PER_CLOCK_PER_SM * self.sms * self.clock_hz

    @property
    def issue_per_s(self) -> float:
        return ISSUE_PER_CLOCK_PER_SM * self.sms * self.clock_hz


DEVICES = {
    "h100": Device("H100 SXM", 90, 132, 1.755e9, 3.0e12,
                   "3.0 TB/s: what a large copy typically reaches (nominal HBM3 3.35 TB/s); "
                   "1.755 GHz: typical clock under load (nominal max boost 1.98 GHz); not measured here"),
    "h200": Device("H200 SXM", 90, 132, 1.83e9, 4.3e12,
                   "4.3 TB/s: ~90 % of the nominal 4.8 TB/s HBM3e; 1.83 GHz assumed; not measured here"),
    "a100": Device("A100 SXM", 80, 108, 1.41e9, 1.6e12,
                   "1.6 TB/s: effective copy bandwidth (nominal 2.04 TB/s, 80 GB); 1.41 GHz: nominal "
                   "boost; not measured here"),
}

# --- ST-TR's layers ----------------------------------------------------------------------------------

# N' = 32 clips x 2 persons, 8 heads, 25 joints.
BATCH, HEADS, JOINTS = 64, 8, 25


@dataclasses.dataclass(frozen=True)
class Layer:
    family: str    # "spatial" (SSA, S-TR) or "temporal" (TSA, T-TR)
    stream: str    # "joints" (base 64 channels) or "joints+bones" (base 128)
    tokens: int    # frames T of an SSA layer, sequence length L of a TSA layer
    dkh: int
    dvh: int
    count: int     # units of the model with this shape

    @property
    def name(self) -> str:
        return f"{'J' if self.stream == 'joints' else 'JB'}{self.tokens} {self.dkh}/{self.dvh}"


def _layers() -> list[Layer]:
    """Units 3-8 of sttr_fast.model.STTR: channels 128, 128, 128, 256, 256, 256 (joints; doubled
    with bones), dk = C/4 and dv = C split over 8 heads. SSA runs before the unit's strided
    temporal convolution (T = 300, 150, 150, 150, 75, 75); TSA's qkv convolution itself has the
    stride, so its sequences are L = 150 (units 3-5) and 75 (units 6-8)."""
    layers = []
    for stream, widen in (("joints", 1), ("joints+bones", 2)):
        layers += [Layer("spatial", stream, t, 4 * widen * m, 16 * widen * m, n)
                   for t, m, n in ((300, 1, 1), (150, 1, 2), (150, 2, 1), (75, 2, 2))]
        layers += [Layer("temporal", stream, length, 4 * widen * m, 16 * widen * m, 3)
                   for length, m in ((150, 1), (75, 2))]
    return layers


LAYERS = _layers()
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# --- kernels and their problems ------------------------------------------------------------------

KERNELS = {
    "spatial_forward": ("spatial", "forward"),
    "spatial_backward": ("spatial", "backward"),
    "spatial_key_mask": ("spatial", "mask"),
    "temporal_key_mask": ("temporal", "mask"),
    "temporal_forward": ("temporal", "forward"),
    "temporal_backward_query": ("temporal", "backward"),
    "temporal_backward_key": ("temporal", "backward"),
}
# The key mask kernel (materialize_key_mask), launched once per training call of either core.
KEY_MASK_KERNELS = {"spatial_key_mask", "temporal_key_mask"}
_FUNCTIONS = {"spatial_forward": spatial_attention.spatial_attention_forward_kernel,
              "spatial_backward": spatial_attention.spatial_attention_backward_kernel,
              **compile_report.TEMPORAL_KERNELS}


def _qkv_tensor(layout: str, channels: int, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """qkv as the modules pass it. ``module``: the qkv convolution runs on the joint-BatchNorm's
    (N', C, V, T) output and the module hands over its transpose, so (N', C, T, V) has frames
    unit-stride (sttr_fast/attention.py, both units)."""
    if layout == "module":
        return torch.empty(BATCH, channels, JOINTS, tokens, dtype=dtype, device="meta").transpose(2, 3)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.empty(BATCH, channels, tokens, JOINTS, dtype=dtype, device="meta",
                       memory_format=memory_format)


def _like(qkv: torch.Tensor, channels: int) -> torch.Tensor:
    """Outputs, dO and dqkv as the op allocates them: in qkv's stride order."""
    return custom_ops.layout_like(qkv, channels, qkv.dtype,
                                  lambda shape, dtype, device: torch.empty(shape, dtype=dtype, device="meta"))


@dataclasses.dataclass(frozen=True)
class Problem:
    fn: triton.JITFunction
    args: list
    constants: dict
    configs: list          # every autotune config
    candidates: list       # those the launcher keeps for this shape, in its order


def problem(kernel: str, layer: Layer, dtype: str, drop: bool, layout: str = "module") -> Problem:
    """The launch a module makes for ``kernel`` at ``layer``: meta tensors in its real layout."""
    if kernel in KEY_MASK_KERNELS:
        mask = torch.empty(BATCH * layer.tokens * HEADS * JOINTS, dtype=torch.bool, device="meta")
        rng = torch.empty(2, dtype=torch.int64, device="meta")
        config = triton.Config({"BLOCK": dropattention_rng._MASK_BLOCK}, num_warps=4, num_stages=1)
        return Problem(dropattention_rng._materialize_key_mask_kernel, [rng, mask, mask.numel(), 0.5],
                       {}, [config], [config])
    dk, dv = HEADS * layer.dkh, HEADS * layer.dvh
    torch_dtype = DTYPES[dtype]
    qkv = _qkv_tensor(layout, 2 * dk + dv, layer.tokens, torch_dtype)
    out, grad_qkv = _like(qkv, dv), _like(qkv, 2 * dk + dv)
    sequences = BATCH * (layer.tokens if layer.family == "spatial" else JOINTS)
    stats = torch.empty(sequences, HEADS, JOINTS if layer.family == "spatial" else layer.tokens,
                        dtype=torch.float32, device="meta")
    p = 0.5 if drop else 0.0
    keep = torch.empty(stats.shape, dtype=torch.bool, device="meta") if drop else None
    if kernel == "spatial_forward":
        args, constants = spatial_attention.forward_arguments(qkv, HEADS, dk, dv, p, keep, out, stats)
    elif kernel == "spatial_backward":
        args, constants = spatial_attention.backward_arguments(out, qkv, stats, HEADS, dk, dv, p, keep,
                                                               grad_qkv)
    elif kernel == "temporal_forward":
        args, constants = temporal_attention.forward_arguments(qkv, HEADS, dk, dv, p, keep, out, stats)
    elif kernel == "temporal_backward_query":
        args, constants = temporal_attention.backward_query_arguments(out, qkv, out, stats, stats, HEADS,
                                                                      dk, dv, p, keep, grad_qkv)
    elif kernel == "temporal_backward_key":
        args, constants = temporal_attention.backward_key_arguments(out, qkv, stats, stats, HEADS, dk, dv,
                                                                    p, keep, grad_qkv)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS)}")
    if layer.family == "spatial":
        blocks = spatial_attention.block_sizes(JOINTS, layer.dkh, layer.dvh)
        candidates = spatial_attention.fitting_configs(
            spatial_attention.CONFIGS, kernel.removeprefix("spatial_"), qkv.element_size(),
            blocks["BLOCK_V"], blocks["BLOCK_DK"], blocks["BLOCK_DV"])
        return Problem(_FUNCTIONS[kernel], args, constants, spatial_attention.CONFIGS, candidates)
    candidates = temporal_attention.launch_configs(layer.tokens, qkv.element_size())
    return Problem(_FUNCTIONS[kernel], args, constants, temporal_attention.CONFIGS, candidates)


# --- what a launch must do: programs, loop trips, minimum bytes, exponentials ----------------------

@dataclasses.dataclass(frozen=True)
class Work:
    programs: int    # grid size
    trips: int       # iterations of the kernel's loop per program (0: no loop)
    bytes: int       # every input read once, every output written once
    exps: int        # exponentials the algorithm needs, on tiles padded as the kernel pads them


def minimum_bytes(kernel: str, layer: Layer, dtype: str) -> int:
    """Every input read once, every output written once (docs/cost-model.md §5): the same for
    every backend."""
    if kernel in KEY_MASK_KERNELS:
        return BATCH * layer.tokens * HEADS * JOINTS
    size = DTYPES[dtype].itemsize
    dk, dv = HEADS * layer.dkh, HEADS * layer.dvh
    tokens = BATCH * layer.tokens * JOINTS
    channels = lambda c: tokens * c * size  # noqa: E731
    per_query = tokens * HEADS * 4
    qkv = channels(2 * dk + dv)
    if kernel in ("spatial_forward", "temporal_forward"):
        return qkv + channels(dv) + per_query
    if kernel == "spatial_backward":
        return 2 * qkv + channels(dv) + per_query
    if kernel == "temporal_backward_query":
        # Reads qkv, out and dO and the statistics; writes dQ and D.
        return qkv + 2 * channels(dv) + channels(dk) + 2 * per_query
    # Reads qkv, dO, the statistics and D; writes dK and dV.
    return qkv + channels(dv) + channels(dk + dv) + 2 * per_query


def work(kernel: str, layer: Layer, dtype: str, drop: bool, config: triton.Config) -> Work:
    """One exponential per padded score, plus the online softmax's one rescale per query row and
    key block in the temporal forward. A second exponential per score for DropAttention's kept
    maximum is the kernel's choice, not a need: it shows in ``ex2_per_exp``."""
    if kernel in KEY_MASK_KERNELS:
        keys = BATCH * layer.tokens * HEADS * JOINTS
        return Work(triton.cdiv(keys, config.kwargs["BLOCK"]), 0, keys, 0)
    size, needed = DTYPES[dtype].itemsize, minimum_bytes(kernel, layer, dtype)
    if layer.family == "spatial":
        frames, block_v, block_f = BATCH * layer.tokens, padded_dim(JOINTS), config.kwargs["BLOCK_F"]
        programs = triton.cdiv(frames, block_f) * HEADS
        tiles = programs * block_f   # (frame, head) score tiles, padded frames included
        return Work(programs, block_f, needed, tiles * block_v * block_v)
    # Every temporal kernel: a program owns BLOCK_M tokens (queries, or keys in backward_key) and
    # streams the sequence in blocks of BLOCK_N. With 16-bit operands the loop runs over the
    # whole blocks and the last, partial one is a copy of its body after it (outside the loop,
    # counted once; at ST-TR's lengths no block size divides L, so it always runs).
    length, block_m, block_n = layer.tokens, config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    sequences = BATCH * JOINTS * HEADS
    own_blocks, streamed_blocks = triton.cdiv(length, block_m), triton.cdiv(length, block_n)
    programs = sequences * own_blocks
    trips = length // block_n if temporal_attention.peels_last_block(size) else streamed_blocks
    scores = programs * block_m * streamed_blocks * block_n
    if kernel == "temporal_forward":
        return Work(programs, trips, needed, scores + programs * block_m * streamed_blocks)
    return Work(programs, trips, needed, scores)


@dataclasses.dataclass(frozen=True)
class Bounds:
    issue_us: float
    memory_us: float
    exp_us: float

    @property
    def bound_us(self) -> float:
        return max(self.memory_us, self.exp_us)

    @property
    def limiter(self) -> str:
        return "memory" if self.memory_us >= self.exp_us else "exp"

    @property
    def predicted_us(self) -> float:
        return max(self.bound_us, self.issue_us)

    @property
    def predicted_fraction(self) -> float:
        return self.bound_us / self.predicted_us if self.predicted_us > 0 else 1.0


def bounds(warp_instructions: int, bytes_moved: int, exps: int, device: Device) -> Bounds:
    return Bounds(1e6 * warp_instructions / device.issue_per_s, 1e6 * bytes_moved / device.bandwidth,
                  1e6 * exps / device.exp_per_s)


# --- SASS: loops and instruction counts --------------------------------------------------------------

_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;", re.M)
_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")
_HEX = re.compile(r"0x([0-9a-f]+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str      # e.g. "MUFU" (modifiers dropped)
    text: str        # the instruction without its predicate

    @property
    def target(self) -> int | None:
        """Branch or call target address."""
        if self.opcode not in ("BRA", "CALL", "JMP"):
            return None
        found = _HEX.findall(self.text)
        return int(found[-1], 16) if found else None


def parse_sass(text: str) -> list[Instruction]:
    """Instructions of ``cuobjdump -sass`` output (one kernel), in address order."""
    instructions = []
    for match in _SASS_LINE.finditer(text):
        body = _PREDICATE.sub("", match.group(2).strip())
        if not body:
            continue
        instructions.append(Instruction(int(match.group(1), 16), body.split()[0].split(".")[0], body))
    return instructions


@dataclasses.dataclass(frozen=True)
class SassCounts:
    total: int                    # instructions that may execute (subroutines and padding excluded)
    outside: int                  # of those, outside every loop
    loops: list[tuple[int, int]]  # top-level loops: (first address, address of the backward branch)
    loop_sizes: list[int]         # instructions in each
    nested: bool                  # whether a loop sits inside another
    subroutine: int               # instructions of CALLed slow paths (64-bit division), not counted
    loop_mix: dict                # instruction classes of the loops together
    mufu_ex2: int                 # MUFU.EX2 instructions in all the code
    loop_mufu_ex2: int            # of those, in the loops
    loop_memory: dict             # global loads and stores of the loops by mnemonic (width shows)


def _executed(instructions: list[Instruction]) -> tuple[list[Instruction], int]:
    """Drop the CALLed subroutines (Triton's 64-bit division slow path, taken only for operands
    beyond 32 bits), the self-branch that ends the code and the NOP padding after it."""
    starts = {i.target for i in instructions if i.opcode == "CALL" and i.target is not None}
    excluded, inside = set(), False
    for instruction in instructions:
        if instruction.address in starts:
            inside = True
        if inside:
            excluded.add(instruction.address)
            if instruction.opcode == "RET":
                inside = False
    ends = [i.address for i in instructions if i.opcode == "BRA" and i.target == i.address]
    end = min(ends) if ends else None
    kept = [i for i in instructions if i.address not in excluded and (end is None or i.address < end)]
    return kept, len(excluded)


_CLASSES = {"tensor": ("HMMA", "HGMMA", "IMMA", "WGMMA"), "sfu": ("MUFU",),
            "global": ("LDG", "STG", "LDGSTS", "LDGDEPBAR", "RED", "ATOMG"),
            "shared": ("LDS", "STS", "LDSM", "STSM", "ATOMS"),
            "float": ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FCHK", "F2F", "F2FP", "F2I",
                      "I2F", "I2FP", "FRND", "HADD2", "HMUL2", "HFMA2", "DADD", "DMUL", "DFMA"),
            "shuffle": ("SHFL",), "sync": ("BAR", "DEPBAR", "WARPSYNC", "BSSY", "BSYNC", "MEMBAR", "NOP"),
            "branch": ("BRA", "EXIT", "CALL", "RET", "JMP")}
_CLASS_OF = {opcode: name for name, opcodes in _CLASSES.items() for opcode in opcodes}


def instruction_class(opcode: str) -> str:
    """Coarse class of an opcode: tensor, sfu, global, shared, float, shuffle, sync, branch,
    uniform (the scalar U* datapath) or integer (integer arithmetic, logic, moves, predicates)."""
    if opcode in _CLASS_OF:
        return _CLASS_OF[opcode]
    return "uniform" if opcode.startswith("U") else "integer"


def count_sass(text: str) -> SassCounts:
    """Loops are backward branches (a BRA to an earlier address); a loop's body runs from the
    target to the branch."""
    instructions, subroutine = _executed(parse_sass(text))
    edges = sorted({(i.target, i.address) for i in instructions
                    if i.opcode == "BRA" and i.target is not None and i.target < i.address})
    top = [e for e in edges if not any(o != e and o[0] <= e[0] and e[1] <= o[1] for o in edges)]
    sizes, mix, loop_ex2, memory = [], Counter(), 0, Counter()
    for first, last in top:
        body = [i for i in instructions if first <= i.address <= last]
        sizes.append(len(body))
        mix.update(instruction_class(i.opcode) for i in body)
        loop_ex2 += sum(1 for i in body if i.text.startswith("MUFU.EX2"))
        memory.update(i.text.split()[0] for i in body if instruction_class(i.opcode) == "global")
    return SassCounts(total=len(instructions), outside=len(instructions) - sum(sizes), loops=top,
                      loop_sizes=sizes, nested=len(top) < len(edges), subroutine=subroutine,
                      loop_mix=dict(mix.most_common()),
                      mufu_ex2=sum(1 for i in instructions if i.text.startswith("MUFU.EX2")),
                      loop_mufu_ex2=loop_ex2, loop_memory=dict(memory.most_common()))


# --- TTGIR: layouts, dots, replication --------------------------------------------------------------

_LAYOUT_DEFINITION = re.compile(r"^#(\w+) = #(?:ttg|triton_gpu)\.(\w+)<\{(.*)\}>\s*$", re.M)
_LIST_OR_NUMBER = r"(\[(?:[^\[\]]|\[[^\[\]]*\])*\]|\d+)"


def _fields(body: str) -> dict:
    return {key: json.loads(value) for key, value in re.findall(r"(\w+) = " + _LIST_OR_NUMBER, body)}


def parse_layouts(ttgir: str) -> dict[str, dict]:
    """``#name = #ttg.kind<{...}>`` definitions: {name: {"kind": kind, field: value}}."""
    return {name: {"kind": kind, **_fields(body)}
            for name, kind, body in _LAYOUT_DEFINITION.findall(ttgir)}


def _thread_grid(layout: dict) -> tuple[list[int], list[int], list[int]]:
    """Per dimension: elements a thread holds per repetition, lanes and warps, for a blocked or
    an NVIDIA MMA layout. An MMA accumulator tile is 16 rows x n columns per warp (v2: n = 8; v3
    wgmma: n = instrShape[1]), 8 x 4 lanes, each lane holding 2 x (n/4) elements."""
    if layout["kind"] == "blocked":
        return layout["sizePerThread"], layout["threadsPerWarp"], layout["warpsPerCTA"]
    if layout["kind"] == "nvidia_mma":
        columns = 8 if layout["versionMajor"] < 3 else layout["instrShape"][1]
        return [2, columns // 4], [8, 4], layout["warpsPerCTA"]
    raise ValueError(f"no thread grid for a {layout['kind']} layout")


def warp_replication(shape: list[int], layout: dict) -> int:
    """How many warps hold each element of a ``shape`` tensor in ``layout``: warps beyond the
    tile's extent along a dimension wrap around and repeat the same work (a 32-row tile in an
    MMA layout with 4 warps along the rows, 16 rows each, is computed twice). For a linear
    layout, every all-zero warp basis doubles it."""
    if layout["kind"] == "linear":
        return 2 ** sum(1 for basis in layout.get("warp", []) if not any(basis))
    per_thread, lanes, warps = _thread_grid(layout)
    replication = 1
    for size, held, lane_count, warp_count in zip(shape, per_thread, lanes, warps):
        warps_needed = math.ceil(size / (held * lane_count))
        replication *= warp_count // max(1, min(warp_count, warps_needed))
    return replication


def thread_replication(shape: list[int], layout_text: str, layouts: dict[str, dict]) -> int:
    """How many threads hold each element of a tensor whose layout is ``layout_text`` (``#name``
    or ``#ttg.slice<{dim = d, parent = #name}>``): lanes and warps along a sliced dimension all
    hold copies, as do those beyond the tensor's extent."""
    sliced = re.match(r"#(?:ttg|triton_gpu)\.slice<\{dim = (\d+), parent = #(\w+)\}>", layout_text)
    name = sliced.group(2) if sliced else layout_text.lstrip("#")
    layout = layouts[name]
    if layout["kind"] == "linear":
        zero = sum(1 for basis in layout.get("lane", []) + layout.get("warp", []) if not any(basis))
        return 2 ** zero
    per_thread, lanes, warps = _thread_grid(layout)
    dims = list(range(len(lanes)))
    replication = 1
    if sliced:
        dim = int(sliced.group(1))
        replication *= lanes[dim] * warps[dim]
        dims.remove(dim)
    for size, d in zip(shape, dims):
        threads = lanes[d] * warps[d]
        replication *= threads // max(1, min(threads, math.ceil(size / per_thread[d])))
    return replication


_TENSOR = r"tensor<([\dx]+)x\w+, (#[\w.]+(?:<\{[^}]*\}>)?)>"


def _shape(dims: str) -> list[int]:
    return [int(d) for d in dims.split("x")]


def dots(ttgir: str) -> list[dict]:
    """Every ``tt.dot`` / ``warp_group_dot``: accumulator shape, layout and warp replication."""
    layouts = parse_layouts(ttgir)
    found = []
    for line in ttgir.splitlines():
        if " tt.dot " not in line and "warp_group_dot " not in line:
            continue
        result = re.findall(r"->\s*" + _TENSOR, line)
        if not result:
            continue
        dims, layout_text = result[-1]
        layout = layouts[layout_text.lstrip("#")]
        shape = _shape(dims)
        kind = layout["kind"]
        description = f"mma v{layout['versionMajor']}" if kind == "nvidia_mma" else kind
        found.append({"shape": shape, "layout": f"{description} warps {layout.get('warpsPerCTA')}",
                      "replication": warp_replication(shape, layout)})
    return found


def rng_per_thread(ttgir: str, num_warps: int) -> float | None:
    """Philox evaluations per thread for one block of keep decisions: the keys times the threads
    holding each (Philox's ``tt.mulhiui`` tensor), over the program's threads. The least SIMT
    allows is max(1, keys / threads); None without DropAttention."""
    layouts = parse_layouts(ttgir)
    for line in ttgir.splitlines():
        if "tt.mulhiui" in line:
            tensor = re.search(r":\s*" + _TENSOR, line)
            if tensor:
                shape = _shape(tensor.group(1))
                threads = thread_replication(shape, tensor.group(2), layouts)
                return math.prod(shape) * threads / (32 * num_warps)
    return None


# --- compilation ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Job:
    kernel: str
    layer: Layer
    dtype: str
    drop: bool
    layout: str
    config: tuple     # (sorted meta-parameter items, num_warps, num_stages): picklable
    arch: int

    @property
    def triton_config(self) -> triton.Config:
        kwargs, num_warps, num_stages = self.config
        return triton.Config(dict(kwargs), num_warps=num_warps, num_stages=num_stages)


def config_key(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


def parse_config(text: str) -> triton.Config:
    """``BLOCK_F=4,num_warps=2,num_stages=2`` -> a triton.Config (num_stages defaults to 2)."""
    try:
        values = {key.strip(): int(value) for key, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--extra-config wants NAME=INT,... (e.g. BLOCK_F=4,num_warps=2), "
                         f"got {text!r}") from None
    num_warps, num_stages = values.pop("num_warps", 4), values.pop("num_stages", 2)
    return triton.Config(values, num_warps=num_warps, num_stages=num_stages)


def _source_and_config(job: Job):
    found = problem(job.kernel, job.layer, job.dtype, job.drop, job.layout)
    config = job.triton_config
    return compile_report._source(found.fn, found.args, {**found.constants, **config.kwargs}), config


def _tool(name: str) -> str:
    return getattr(triton.knobs.nvidia, name).path


def compile_job(job: Job) -> dict:
    """Compile one kernel config and read what the model needs from its TTGIR, PTX and SASS."""
    import warnings
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    source, config = _source_and_config(job)
    kernel = triton.compile(source, target=GPUTarget("cuda", job.arch, 32),
                            options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        cuobjdump = _tool("cuobjdump")
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    resources = compile_report._RESOURCES.search(usage)
    if resources is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {job}:\n{usage}")
    registers, stack, _, local = map(int, resources.groups())
    counts = count_sass(sass)
    ttgir = kernel.asm["ttgir"]
    found_dots = dots(ttgir)
    return {"registers": registers, "stack_bytes": stack, "local_bytes": local,
            "shared_bytes": kernel.metadata.shared, "num_warps": config.num_warps,
            "num_stages": config.num_stages, "dots": found_dots,
            "warp_replication": max((d["replication"] for d in found_dots), default=1),
            "rng_per_thread": rng_per_thread(ttgir, config.num_warps),
            "counts": dataclasses.asdict(counts),
            "source_loops": len(re.findall(r"\bscf\.for\b", ttgir)),
            "ptx_ex2": len(re.findall(r"\bex2\.approx", kernel.asm["ptx"]))}


def instructions_per_program(facts: dict, trips: int) -> tuple[int, str]:
    """Instructions one warp of a program executes, and how sure the loop mapping is: the
    kernel's one source loop must be one SASS loop (or none when fully unrolled), and ptxas must
    not have duplicated code (no more MUFU.EX2 than the PTX has ex2; fewer means it merged some)."""
    counts = facts["counts"]
    loops = counts["loop_sizes"]
    check = "ok"
    if not loops and facts["source_loops"]:
        check = "loop unrolled"
    elif len(loops) != facts["source_loops"]:
        check = f"{len(loops)} SASS loops for {facts['source_loops']} source loops"
    if counts["nested"]:
        check = "nested SASS loops"
    if counts["mufu_ex2"] > facts["ptx_ex2"]:
        check = f"{counts['mufu_ex2']} MUFU.EX2 for {facts['ptx_ex2']} ex2 in PTX: code duplicated"
    elif counts["mufu_ex2"] < facts["ptx_ex2"] and check == "ok":
        check = f"ok (ptxas merged {facts['ptx_ex2'] - counts['mufu_ex2']} ex2)"
    return counts["outside"] + sum(loops) * trips, check


# --- the model's rows ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Planned:
    job: Job
    # "first" (the launcher's first candidate), "candidate" (also kept), "pruned" (dropped by
    # the launcher for this shape) or "extra" (not among the launcher's configs: an experiment).
    choice: str


# The choices the launcher may make, which the summaries take.
LAUNCHED = ("first", "candidate")
# Triton's kernels (kernels/), the cuda backend's (csrc/, rows from kernels/cuda_cost_model.py).
BACKENDS = ("triton", "cuda")


def plan(family: str = "all", kernels: list[str] | None = None, quick: bool = False,
         all_configs: bool = False, layout: str = "module", arch: int = 90,
         extra_configs: list[triton.Config] = ()) -> list[Planned]:
    """Every (kernel, layer, dtype, DropAttention, config) to model. ``quick``: one layer per
    family (its first), bfloat16, the launcher's first config. ``extra_configs`` are added to the
    kernels whose configs take the same meta-parameters."""
    chosen = []
    for kernel, (kernel_family, _) in KERNELS.items():
        if family not in ("all", kernel_family) or (kernels and kernel not in kernels):
            continue
        layers = [layer for layer in LAYERS if layer.family == kernel_family]
        if quick:
            layers = layers[:1]
        dtypes = ["bool"] if kernel in KEY_MASK_KERNELS else ["bf16"] if quick else list(DTYPES)
        drops = [True] if kernel in KEY_MASK_KERNELS else [True, False]
        for layer in layers:
            for dtype in dtypes:
                for drop in drops:
                    found = problem(kernel, layer, dtype, drop, layout)
                    for config in found.configs:
                        kept = [c is config for c in found.candidates]
                        choice = "first" if kept[0] else "candidate" if any(kept) else "pruned"
                        if choice == "pruned" and not all_configs or quick and choice != "first":
                            continue
                        job = Job(kernel, layer, dtype, drop, layout, config_key(config), arch)
                        chosen.append(Planned(job, choice))
                    names = set(found.configs[0].kwargs)
                    chosen += [Planned(Job(kernel, layer, dtype, drop, layout, config_key(c), arch), "extra")
                               for c in extra_configs if set(c.kwargs) == names]
    return chosen


def config_label(config: triton.Config) -> str:
    kwargs = config.kwargs
    if "BLOCK_F" in kwargs:
        tile = f"F{kwargs['BLOCK_F']}"
    else:
        tile = f"{kwargs['BLOCK_M']}x{kwargs['BLOCK_N']}" if "BLOCK_M" in kwargs else str(kwargs["BLOCK"])
    return f"{tile} w{config.num_warps} s{config.num_stages}"


def row(planned: Planned, facts: dict, device: Device) -> dict:
    job = planned.job
    config = job.triton_config
    needed = work(job.kernel, job.layer, job.dtype, job.drop, config)
    per_program, check = instructions_per_program(facts, needed.trips)
    warp_instructions = needed.programs * facts["num_warps"] * per_program
    estimate = bounds(warp_instructions, needed.bytes, needed.exps, device)
    counts = facts["counts"]
    # Lanes that run MUFU.EX2 (32 per warp instruction) per exponential needed: replicated warps
    # and lanes, second exponentials and exponentials of rows that are not needed all show here.
    ex2_lanes = 32 * needed.programs * facts["num_warps"] * (
        counts["mufu_ex2"] - counts["loop_mufu_ex2"] + counts["loop_mufu_ex2"] * needed.trips)
    family, direction = KERNELS[job.kernel]
    return {"backend": "triton", "kernel": job.kernel, "family": family, "direction": direction,
            "layer": job.layer.name,
            "stream": job.layer.stream, "tokens": job.layer.tokens, "dkh": job.layer.dkh,
            "dvh": job.layer.dvh, "layer_count": job.layer.count, "dtype": job.dtype, "drop": job.drop,
            "layout": job.layout, "arch": job.arch, "config": config_label(config),
            "config_kwargs": dict(config.kwargs), "choice": planned.choice,
            "num_warps": facts["num_warps"], "num_stages": facts["num_stages"],
            "warp_replication": facts["warp_replication"], "dots": facts["dots"],
            "rng_per_thread": facts["rng_per_thread"], "registers": facts["registers"],
            "spill_bytes": facts["stack_bytes"] + facts["local_bytes"],
            "stack_bytes": facts["stack_bytes"], "local_bytes": facts["local_bytes"],
            "shared_bytes": facts["shared_bytes"], "programs": needed.programs, "trips": needed.trips,
            "loop_instructions": sum(counts["loop_sizes"]), "outside_instructions": counts["outside"],
            "loop_mix": counts["loop_mix"],
            "instructions_per_program": per_program, "warp_instructions": warp_instructions,
            "loop_check": check, "bytes": needed.bytes, "exps": needed.exps,
            "ex2_per_exp": ex2_lanes / needed.exps if needed.exps else None,
            # The MUFU pipe's own time for the MUFU.EX2 the kernel issues (16 lanes per clock).
            "sfu_us": 1e6 * ex2_lanes / device.exp_per_s, "loop_memory": counts["loop_memory"],
            "issue_us": estimate.issue_us, "memory_us": estimate.memory_us, "exp_us": estimate.exp_us,
            "bound_us": estimate.bound_us, "limiter": estimate.limiter,
            "predicted_us": estimate.predicted_us, "predicted_fraction": estimate.predicted_fraction,
            "drop_loop_ratio": None}


def add_drop_ratios(rows: list[dict]) -> None:
    """Loop instructions with DropAttention over those without, same kernel, layer, dtype and
    config, on the rows with DropAttention."""
    plain = {(r["backend"], r["kernel"], r["layer"], r["dtype"], r["config"]): r["loop_instructions"]
             for r in rows if not r["drop"]}
    for r in rows:
        without = plain.get((r["backend"], r["kernel"], r["layer"], r["dtype"], r["config"]))
        if r["drop"] and without:
            r["drop_loop_ratio"] = r["loop_instructions"] / without


def drop_ratio_summary(rows: list[dict]) -> dict:
    """Per kernel and dtype: the range of the dropout/no-dropout loop ratio over layers and the
    configs the launcher may pick."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["drop_loop_ratio"] is not None and r["choice"] in LAUNCHED and r["backend"] == "triton":
            ratios.setdefault(r["kernel"], {}).setdefault(r["dtype"], []).append(r["drop_loop_ratio"])
    return {kernel: {dtype: {"min": min(v), "max": max(v)} for dtype, v in by_dtype.items()}
            for kernel, by_dtype in ratios.items()}


def model_summary(rows: list[dict]) -> list[dict]:
    """The attention cores of a whole model, every layer of it (times its count of units):
    training (the key mask, forward and backward kernels, DropAttention on) and inference
    (forward, off).
    ``first`` takes the launcher's first candidate per launch, ``best`` the candidate with the
    least predicted time (the autotuner measures the candidates and keeps the fastest)."""
    choosers = {"first": lambda options: next(o for o in options if o["choice"] == "first"),
                "best": lambda options: min(options, key=lambda o: o["predicted_us"])}
    modes = (("training", True, ("forward", "backward")), ("inference", False, ("forward",)))
    on_path = [r for r in rows if r["choice"] in LAUNCHED]
    summary = []
    for backend, family, stream, dtype in sorted({(r["backend"], r["family"], r["stream"], r["dtype"])
                                                  for r in on_path if r["kernel"] not in KEY_MASK_KERNELS},
                                                 key=lambda key: (BACKENDS.index(key[0]), *key[1:])):
        for mode, drop, directions in modes:
            picked = [r for r in on_path if (r["backend"], r["family"], r["stream"], r["dtype"], r["drop"])
                      == (backend, family, stream, dtype, drop) and r["direction"] in directions]
            if drop:  # the key mask serves every dtype
                picked += [r for r in on_path if r["kernel"] in KEY_MASK_KERNELS
                           and (r["backend"], r["family"], r["stream"]) == (backend, family, stream)]
            if not picked:
                continue
            launches: dict[tuple, list[dict]] = {}
            for r in picked:
                launches.setdefault((r["kernel"], r["layer"]), []).append(r)
            entry = {"backend": backend, "family": family, "stream": stream, "dtype": dtype, "mode": mode,
                     "kernels": sorted({r["kernel"] for r in picked}),
                     "layers": sorted({r["layer"] for r in picked})}
            for label, choose in choosers.items():
                chosen = [choose(options) for options in launches.values()]
                bound = sum(r["layer_count"] * r["bound_us"] for r in chosen)
                predicted = sum(r["layer_count"] * r["predicted_us"] for r in chosen)
                entry.update({f"{label}_bound_us": bound, f"{label}_predicted_us": predicted,
                              f"{label}_fraction": bound / predicted})
            summary.append(entry)
    return summary


# --- output ----------------------------------------------------------------------------------------

# (row key, title, width, format): "s" text, "b" on/off, "g" short number, else a format spec.
_COLUMNS = (("kernel", "kernel", 23, "s"), ("layer", "layer", 11, "s"), ("dtype", "dtype", 5, "s"),
            ("drop", "drop", 4, "b"), ("config", "config", 12, "s"), ("choice", "pick", 9, "s"),
            ("warp_replication", "rep", 4, "d"), ("rng_per_thread", "rng/t", 6, "g"),
            ("registers", "regs", 5, "d"), ("spill_bytes", "spill", 6, "d"),
            ("loop_instructions", "loop", 6, "d"), ("instructions_per_program", "ins/prog", 9, "d"),
            ("issue_us", "issue us", 9, ".1f"), ("memory_us", "mem us", 8, ".1f"),
            ("exp_us", "exp us", 8, ".1f"), ("ex2_per_exp", "ex2/e", 6, ".1f"),
            ("predicted_fraction", "frac", 6, ".3f"), ("drop_loop_ratio", "dropx", 6, ".2f"),
            ("loop_check", "check", 6, "s"))


def _cell(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "b":
        return "on" if value else "off"
    if kind == "s":
        return str(value)
    return f"{value:g}" if kind == "g" else format(value, kind)


def _aligned(text: str, width: int, kind: str) -> str:
    return f"{text:<{width}}" if kind == "s" else f"{text:>{width}}"


# The cuda rows' columns: no configs to choose, replication or Philox in the kernels; the
# per-key loop is one key for a warp of 32 rows (tile_keys or joints loops together).
_CUDA_COLUMNS = (("kernel", "kernel", 23, "s"), ("layer", "layer", 11, "s"), ("dtype", "dtype", 5, "s"),
                 ("drop", "drop", 4, "b"), ("config", "block", 10, "s"), ("registers", "regs", 5, "d"),
                 ("spill_bytes", "spill", 6, "d"), ("shared_bytes", "shared", 7, "d"),
                 ("loop_instructions", "key loop", 9, "d"), ("instructions_per_program", "ins/warp", 9, "d"),
                 ("issue_us", "issue us", 9, ".1f"), ("memory_us", "mem us", 8, ".1f"),
                 ("exp_us", "exp us", 8, ".1f"), ("ex2_per_exp", "ex2/e", 6, ".1f"),
                 ("predicted_fraction", "frac", 6, ".3f"), ("loop_check", "check", 6, "s"))


def format_table(rows: list[dict], columns=_COLUMNS) -> str:
    lines = [" ".join(_aligned(title, width, kind) for _, title, width, kind in columns)]
    lines += [" ".join(_aligned(_cell(r[key], kind), width, kind) for key, _, width, kind in columns)
              for r in rows]
    return "\n".join(lines)


def backend_comparison(rows: list[dict]) -> list[dict]:
    """Per core and direction, bfloat16 with DropAttention, every layer of both streams summed
    (times its count of units, launcher's first config): each backend's predicted time and fraction,
    against the issue's targets (docs/cost-model.md §10)."""
    targets = {("spatial", "forward"): 0.50, ("spatial", "backward"): 0.35,
               ("temporal", "forward"): 0.35, ("temporal", "backward"): 0.25}
    found = []
    for (family, direction), target in targets.items():
        entry = {"family": family, "direction": direction, "target": target}
        for backend in BACKENDS:
            chosen = [r for r in rows if (r["backend"], r["family"], r["direction"], r["dtype"], r["drop"])
                      == (backend, family, direction, "bf16", True) and r["choice"] == "first"]
            if not chosen:
                continue
            bound = sum(r["layer_count"] * r["bound_us"] for r in chosen)
            predicted = sum(r["layer_count"] * r["predicted_us"] for r in chosen)
            entry[backend] = {"bound_us": bound, "predicted_us": predicted, "fraction": bound / predicted,
                              "row_fractions": [min(r["predicted_fraction"] for r in chosen),
                                                max(r["predicted_fraction"] for r in chosen)]}
        found.append(entry)
    return found


def format_summary(summary: list[dict], ratios: dict) -> str:
    lines = ["dropout/no-dropout loop instructions (target <= 1.3x):"]
    for kernel, by_dtype in ratios.items():
        ranges = "  ".join(f"{dtype} {v['min']:.2f}-{v['max']:.2f}x" for dtype, v in by_dtype.items())
        lines.append(f"  {kernel:<24}{ranges}")
    lines.append("whole model (predicted fraction of speed of light; launcher's first / best candidate):")
    for s in summary:
        lines.append(f"  {s['backend']:<7}{s['family']:<9}{s['stream']:<14}{s['dtype']:<6}{s['mode']:<10}"
                     f"bound {s['first_bound_us']:8.1f} us  predicted {s['first_predicted_us']:8.1f} us  "
                     f"fraction {s['first_fraction']:.3f} / {s['best_fraction']:.3f}  "
                     f"({len(s['layers'])} layer shapes; {', '.join(s['kernels'])})")
    return "\n".join(lines)


def metadata(device_key: str, layout: str, seconds: float) -> dict:
    ptxas = subprocess.run([_tool("ptxas"), "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\d.]+), (V[\d.]+)", ptxas)
    nvcc = cuda_cost_model.find_nvcc()
    nvcc_release = re.search(r"release ([\d.]+), (V[\d.]+)", subprocess.run(
        [nvcc, "--version"], capture_output=True, text=True).stdout) if nvcc else None
    return {"triton": triton.__version__, "torch": torch.__version__,
            "ptxas": " ".join(release.groups()) if release else ptxas.strip().splitlines()[-1],
            "nvcc": " ".join(nvcc_release.groups()) if nvcc_release else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device_key, "arch": DEVICES[device_key].arch, "layout": layout,
            "batch": BATCH, "heads": HEADS, "joints": JOINTS, "seconds": round(seconds, 1)}


def _markdown_table(header: list[str], lines: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, line)) + " |" for line in lines])


def format_markdown(meta: dict, rows: list[dict], summary: list[dict], ratios: dict) -> str:
    intro = (f"Triton {meta['triton']}, ptxas {meta['ptxas']}, nvcc {meta['nvcc']} (cuda rows), "
             f"torch {meta['torch']}; {meta['date']}; "
             f"qkv layout `{meta['layout']}`; N' = {meta['batch']}, {meta['heads']} heads, "
             f"V = {meta['joints']}. Written by `python -m sttr_fast.kernels.cost_model`; how to read "
             "it: docs/cost-model.md. Predictions from compiled code, not measurements: they ignore "
             "latency, occupancy, caches and access patterns, so every fraction is an upper bound.")
    devices = [[f"{key} ({d.name})", d.arch, d.sms, f"{d.clock_hz / 1e9:.3f}", f"{d.bandwidth / 1e12:.1f}",
                f"{d.exp_per_s:.2e}", f"{d.issue_per_s:.2e}", d.note] for key, d in DEVICES.items()]
    models = [[s["backend"], s["family"], s["stream"], s["dtype"], s["mode"], f"{s['first_bound_us']:.1f}",
               f"{s['first_predicted_us']:.1f}", f"{s['first_fraction']:.3f}", f"{s['best_fraction']:.3f}"]
              for s in summary]
    loops = [[kernel, dtype, f"{v['min']:.2f}", f"{v['max']:.2f}"]
             for kernel, by_dtype in ratios.items() for dtype, v in by_dtype.items()]
    lines = [f"# Cost model: sm_{meta['arch']}, {meta['device']}", "", intro, "", "## Devices", ""]
    lines += _markdown_table(["device", "sm", "SMs", "clock GHz", "bandwidth TB/s", "exp/s (16/clk/SM)",
                              "issue/s (4/clk/SM)", "source"], devices)
    lines += ["", "## Whole model, every layer", "",
              "Times summed over the layers, each times its count of units; `first`: the launcher's first "
              "config of every launch, `best`: its candidate with the least predicted time.", ""]
    lines += _markdown_table(["backend", "family", "stream", "dtype", "mode", "bound us", "predicted us (first)",
                              "fraction (first)", "fraction (best)"], models)
    comparison = backend_comparison(rows)
    if any("cuda" in c for c in comparison):
        lines += ["", "## Triton and cuda against the targets (bf16, DropAttention on)", "",
                  "Both streams' layers summed, each times its count of units (launcher's first config); "
                  "the range is over the layers' rows. The cuda rows: docs/cost-model.md §10.", ""]
        table = []
        for c in comparison:
            cells = [c["family"], c["direction"], f"{c['target']:.2f}"]
            for backend in BACKENDS:
                b = c.get(backend)
                cells += ([f"{b['predicted_us']:.0f}", f"{b['fraction']:.3f}",
                           f"{b['row_fractions'][0]:.2f}-{b['row_fractions'][1]:.2f}"] if b else ["-"] * 3)
            table.append(cells)
        lines += _markdown_table(["core", "direction", "target"] + [f"{b} {what}" for b in BACKENDS
                                 for what in ("us", "fraction", "rows")], table)
    lines += ["", "## Dropout / no-dropout loop instructions (target <= 1.3x)", "",
              "Over the layers and every config the launcher may pick.", ""]
    lines += _markdown_table(["kernel", "dtype", "min", "max"], loops)
    for backend, columns, title in (("triton", _COLUMNS, "Rows"), ("cuda", _CUDA_COLUMNS, "cuda rows")):
        chosen = [r for r in rows if r["backend"] == backend]
        if chosen:
            lines += ["", f"## {title}", ""]
            lines += _markdown_table([title for _, title, _, _ in columns],
                                     [[_cell(r[key], kind) for key, _, _, kind in columns] for r in chosen])
    return "\n".join(lines) + "\n"


def format_json(report: dict) -> str:
    """JSON with one line per row, so that diffs of the checked-in results stay readable."""
    parts = []
    for key, value in report.items():
        if isinstance(value, list):
            items = ",\n".join("  " + json.dumps(item) for item in value)
            parts.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def run(planned: list[Planned], device: Device, jobs: int = 2, progress=None) -> list[dict]:
    """Compile every distinct kernel once (layers of one head split share their code) and build
    the rows."""
    keys, distinct = [], {}
    for p in planned:
        source, config = _source_and_config(p.job)
        key = (source.hash(), config.num_warps, config.num_stages, p.job.arch)
        keys.append(key)
        distinct.setdefault(key, p.job)
    facts = {}
    # Compilation is CPU-bound, hence processes; workers must not see an interpreter setting.
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        compiled = pool.map(compile_job, distinct.values())
        for index, (key, result) in enumerate(zip(distinct, compiled), 1):
            facts[key] = result
            if progress:
                progress(f"compiled {index}/{len(distinct)}")
    rows = [row(p, facts[key], device) for p, key in zip(planned, keys)]
    add_drop_ratios(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=sorted(DEVICES), default="h100",
                        help="constants of this device, and its architecture to compile for")
    parser.add_argument("--family", choices=("spatial", "temporal", "all"), default="all")
    parser.add_argument("--kernel", action="append", choices=sorted(KERNELS),
                        help="only this kernel (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="one layer per family, bfloat16, the launcher's first config")
    parser.add_argument("--all-configs", action="store_true", help="also the configs the launcher prunes")
    parser.add_argument("--extra-config", action="append", default=[], type=parse_config,
                        metavar="NAME=INT,...",
                        help="also model this config, not one of the launcher's (repeatable), e.g. "
                             "BLOCK_F=4,num_warps=2 or BLOCK_M=16,BLOCK_N=16,num_warps=1,num_stages=2")
    parser.add_argument("--layout", choices=("module", "contiguous", "channels_last"), default="module",
                        help="qkv as the modules pass it (default), or a contiguous / channels_last tensor")
    parser.add_argument("--backend", choices=("all",) + BACKENDS, default="all",
                        help="whose kernels: Triton's, the cuda backend's (needs nvcc), or both (default; "
                             "the cuda rows are left out with a note where nvcc is missing)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compilations")
    parser.add_argument("--json", help="write meta, devices, loop ratios, model summary and rows here")
    parser.add_argument("--markdown", help="write a readable report here")
    options = parser.parse_args(argv)
    if triton.knobs.runtime.interpret:
        print("cost_model: unset TRITON_INTERPRET; the interpreter does not compile kernels",
              file=sys.stderr)
        return 2
    started = datetime.datetime.now()
    device = DEVICES[options.device]
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    if options.backend in ("all", "triton"):
        planned = plan(options.family, options.kernel, options.quick, options.all_configs, options.layout,
                       device.arch, options.extra_config)
        rows += run(planned, device, options.jobs, progress=progress)
    if options.backend in ("all", "cuda"):
        if cuda_cost_model.find_nvcc() is None and options.backend == "all":
            print("cost_model: nvcc not found, so no cuda rows (docs/cost-model.md §10)", file=sys.stderr)
        else:
            rows += cuda_cost_model.rows(cuda_cost_model.plan(options.family, options.kernel, options.quick),
                                         device, options.layout, progress=progress)
    ratios, summary = drop_ratio_summary(rows), model_summary(rows)
    meta = metadata(options.device, options.layout, (datetime.datetime.now() - started).total_seconds())
    print(f"triton {meta['triton']}, ptxas {meta['ptxas']}, sm_{device.arch}, {device.name}: "
          f"{device.bandwidth / 1e12:.1f} TB/s, {device.exp_per_s:.2e} exp/s, "
          f"{device.issue_per_s:.2e} warp instructions/s")
    print(format_table([r for r in rows if r["backend"] == "triton"]))
    if any(r["backend"] == "cuda" for r in rows):
        print(f"cuda backend (nvcc {meta['nvcc']}):")
        print(format_table([r for r in rows if r["backend"] == "cuda"], _CUDA_COLUMNS))
    print(format_summary(summary, ratios))
    if options.json:
        devices = {k: {**dataclasses.asdict(d), "exp_per_s": d.exp_per_s, "issue_per_s": d.issue_per_s}
                   for k, d in DEVICES.items()}
        with open(options.json, "w") as f:
            f.write(format_json({"meta": meta, "devices": devices, "drop_loop_ratio": ratios,
                                 "summary": summary, "rows": rows}))
    if options.markdown:
        with open(options.markdown, "w") as f:
            f.write(format_markdown(meta, rows, summary, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
