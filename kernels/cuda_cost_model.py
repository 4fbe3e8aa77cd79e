"""The cost model's rows for the cuda backend (csrc/), read from nvcc's cubin; no GPU needed.

``csrc/cuda_launch.cu`` is compiled once per architecture with the device build's flags and
``-lineinfo`` (cached by the sources' hash), ``nvdisasm`` prints every kernel's SASS with the source
line of each instruction and the call sites it was inlined through, and the launcher itself
(``csrc/launch_probe.cpp``, built with the host C++ compiler) says which instantiation each layer
runs, with how many blocks and threads. The formulas are the Triton rows' (docs/cost-model.md §3,
§10): warp instructions over the issue rate against the same minimum bytes and exponentials.

How often an instruction runs comes from the SASS's loops and from comments in the sources:

* a loop is a backward branch; its body runs from the target to the branch;
* the branch's source line is the loop's ``for`` line, which carries ``// cost-model: loop=NAME``;
  NAME says how many times the body runs per entry (``trips_per_entry``) and a nested loop runs
  that many times per run of its parent;
* ``// cost-model: only=CONDITION`` on a call marks code that runs only for one element type
  (``bf16``, ``fp32``, ``fp16``: the type switch of ``with_typed_data``) or one layout
  (``tokens_fastest``, ``channels_fastest``); instructions inlined through such a call for another
  condition are not counted. The element type of an instruction is that of the typed code its
  control flow belongs to (``element_types``), because nvcc's line table gives some of it the
  inline chain of another type's call;
* ``// cost-model: dims=dk|dv`` on a copy's call site says how many channels it copies.

An untagged loop, or two loops of the same source chain (an unrolled copy), makes ``loop_check``
say so; both sides of other forward branches are counted (docs/cost-model.md §10).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
if not (CSRC / "cuda_launch.cu").exists():  # installed: csrc/ is the package sttr_fast.csrc
    from .. import csrc as _csrc_package
    CSRC = Path(_csrc_package.__file__).parent

# Cost-model kernel names (kernels/cost_model.py, KERNELS) -> the launcher's op and kernel struct.
KERNELS = {"spatial_forward": ("spatial_forward", "SpatialForward"),
           "spatial_backward": ("spatial_backward", "SpatialBackward"),
           "temporal_forward": ("temporal_forward", "TemporalForward"),
           "temporal_backward_query": ("temporal_backward", "TemporalBackwardQuery"),
           "temporal_backward_key": ("temporal_backward", "TemporalBackwardKey"),
           "spatial_key_mask": ("key_mask", "key_mask"),
           "temporal_key_mask": ("key_mask", "key_mask")}
# The loops that run per key (or per key tile): their instructions are a row's ``key loop``.
KEY_LOOPS = ("tiles", "tile_halves", "fragment_depth", "joints")
# The conditions a launch can meet, for ``only=`` tags.
DTYPE_CONDITIONS = {"fp16", "bf16", "fp32"}


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "sttr_fast" / "cuda_cost_model"


def find_nvcc() -> str | None:
    """nvcc on the PATH or under CUDA_HOME, as torch's extension builder finds it."""
    candidates = [shutil.which("nvcc")]
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        candidates.append(str(Path(home) / "bin" / "nvcc"))
    return next((c for c in candidates if c and Path(c).exists()), None)


def find_tool(name: str) -> str:
    """A CUDA binary tool: Triton's copy (the cost model's others come from there), else the PATH."""
    try:
        import triton
        return getattr(triton.knobs.nvidia, name).path
    except (ImportError, AttributeError):
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found (install triton or put the CUDA toolkit on the PATH)")
        return found


def _sources_hash(*extra: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Build:
    cubin: Path
    ptxas_report: str


def nvcc_flags() -> list[str]:
    """The device build's flags (sttr_fast/ops/cuda_backend.py), with line info and ptxas's report."""
    from ..ops import cuda_backend  # noqa: PLC0415
    return cuda_backend._compile_flags(cuda_backend.DEVICE_LIBRARY, True) + ["-std=c++17", "-lineinfo",
                                                                             "-Xptxas", "-v"]


def compile_cubin(arch: int, nvcc: str | None = None) -> Build:
    """csrc/cuda_launch.cu as an sm_``arch`` cubin and ptxas's report, cached by the sources'
    hash, nvcc's version and the flags (a compile takes about half a minute per architecture)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (the CUDA toolkit): the cuda rows need it")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    flags = nvcc_flags()
    folder = cache_dir() / _sources_hash(version, " ".join(flags), str(arch))
    cubin, report = folder / f"sttr_sm{arch}.cubin", folder / f"sttr_sm{arch}.ptxas.txt"
    if not (cubin.exists() and report.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"sttr_sm{arch}.{os.getpid()}.cubin"
        result = subprocess.run([nvcc, "-cubin", f"-arch=sm_{arch}", *flags, "-o", str(partial),
                                 str(CSRC / "cuda_launch.cu")], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed for sm_{arch}:\n{(result.stdout + result.stderr)[-4000:]}")
        report.write_text(result.stdout + result.stderr)
        partial.replace(cubin)  # last, so that a cubin in the cache always has its report
    return Build(cubin, report.read_text())


@functools.lru_cache(maxsize=None)
def _probe_binary() -> str:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise FileNotFoundError("a C++ compiler is needed to build csrc/launch_probe.cpp")
    folder = cache_dir() / _sources_hash("probe")
    binary = folder / "launch_probe"
    if not binary.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"launch_probe.{os.getpid()}"
        subprocess.run([compiler, "-std=c++17", "-O1", "-I", str(CSRC), "-o", str(partial),
                        str(CSRC / "launch_probe.cpp")], check=True, capture_output=True, text=True)
        partial.replace(binary)
    return str(binary)


@functools.lru_cache(maxsize=None)
def launches(op: str, batch: int, tokens: int, joints: int, heads: int, dkh: int, dvh: int) -> tuple[dict, ...]:
    """The kernels csrc/dispatch.h launches for one call of ``op``: instantiation and geometry."""
    output = subprocess.run([_probe_binary(), op, *map(str, (batch, tokens, joints, heads, dkh, dvh))],
                            capture_output=True, text=True, check=True).stdout
    return tuple(json.loads(line) for line in output.splitlines())


# --- ptxas's report -------------------------------------------------------------------------------

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")


def resources(report: str) -> dict[str, dict]:
    """Per entry function (mangled): registers, stack frame and spill bytes, from ``-Xptxas -v``."""
    parts = _ENTRY.split(report)
    found = {}
    for name, body in zip(parts[1::3], parts[3::3]):
        stack, stores, loads = map(int, re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body).groups())
        found[name] = {"registers": int(re.search(r"Used (\d+) registers", body).group(1)),
                       "stack_bytes": stack, "spill_bytes": stack + stores + loads}
    return found


# The element type as Itanium mangling spells it in a typed entry (run_typed_phases<Kernel, E>).
MANGLED_ELEMENTS = {"fp16": "6__half", "bf16": "13__nv_bfloat16", "fp32": "f"}


def function_name(names, kernel_struct: str, dk: int | None = None, dv: int | None = None,
                  exact: bool | None = None, dtype: str | None = None) -> str:
    """The mangled entry of ``kernel_struct`` (run_phases<Kernel<float, dk, dv, exact>>, or the
    element type's run_typed_phases<Kernel<...>, E> where the launcher has one kernel per element
    type: csrc/cuda_launch.cu), or of the key-mask kernel."""
    if kernel_struct == "key_mask":
        pattern = re.compile(r"key_mask_kernel")
    else:
        pattern = re.compile(rf"\d{kernel_struct}IfLi{dk}ELi{dv}ELb{int(exact)}E")
    found = [name for name in names if pattern.search(name)]
    if len(found) > 1 and dtype in MANGLED_ELEMENTS:
        typed = re.compile(rf"\d{kernel_struct}IfLi{dk}ELi{dv}ELb{int(exact)}EEE{MANGLED_ELEMENTS[dtype]}E")
        found = [name for name in found if typed.search(name)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} entry functions match {kernel_struct} {dk}/{dv} exact={exact} {dtype or ''}")
    return found[0]


# --- nvdisasm's SASS with line info ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str                       # mnemonic without modifiers, e.g. "MUFU"
    text: str                         # without the predicate
    chain: tuple[tuple[str, int], ...]  # (file name, line), innermost first, then each call site
    target: int | None                # a branch's target address
    predicated: bool = False          # guarded by a predicate (a conditional branch, exit)

    @property
    def backward(self) -> bool:
        return self.opcode == "BRA" and self.target is not None and self.target < self.address


_SECTION = re.compile(r"^\.text\.(\w+):\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_LOCATION = re.compile(r'^\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")
_BRANCH_LABEL = re.compile(r"`\((\.L_x_\d+)\)")


def disassemble(cubin: Path, functions: set[str] | None = None) -> dict[str, list[Instruction]]:
    """``nvdisasm -gi`` of ``cubin``: each function's instructions (those of ``functions`` only,
    when given) with their inline chains and resolved branch targets."""
    text = subprocess.run([find_tool("nvdisasm"), "-gi", "-c", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    return parse_nvdisasm(text, functions)


def parse_nvdisasm(text: str, functions: set[str] | None = None) -> dict[str, list[Instruction]]:
    parsed: dict[str, list[Instruction]] = {}
    name, rows, labels, pending, chain, group = None, [], {}, [], (), []

    def finish():
        if name is not None and (functions is None or name in functions):
            parsed[name] = [Instruction(a, op, t, c, labels.get(label) if label else None, guarded)
                            for a, op, t, c, label, guarded in rows]

    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            finish()
            name, rows, labels, pending, chain, group = section.group(1), [], {}, [], (), []
            continue
        if name is None or (functions is not None and name not in functions):
            continue
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        location = _LOCATION.match(line)
        if location:
            # One line per inline level, innermost first: "line X inlined at Y".
            if not group:
                group.append((Path(location.group(1)).name, int(location.group(2))))
            if location.group(3):
                group.append((Path(location.group(3)).name, int(location.group(4))))
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction:
            if group:
                chain, group = tuple(group), []
            address = int(instruction.group(1), 16)
            for waiting in pending:
                labels[waiting] = address
            pending = []
            text = instruction.group(2).strip()
            body = _PREDICATE.sub("", text)
            opcode = body.split()[0].split(".")[0] if body else ""
            branch = _BRANCH_LABEL.search(body)
            rows.append((address, opcode, body, chain, branch.group(1) if branch else None, body != text))
    finish()
    return parsed


def source_tags() -> dict[tuple[str, int], dict[str, str]]:
    """``// cost-model: key=value ...`` comments of csrc/, by (file name, line)."""
    tags = {}
    for path in sorted(CSRC.iterdir()):
        if path.suffix not in (".cu", ".cuh", ".h", ".cpp"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = re.search(r"//\s*cost-model:\s*(.*)$", line)
            if found:
                tags[(path.name, number)] = dict(item.split("=", 1) for item in found.group(1).split())
    return tags


# --- loops, and how often each instruction runs ----------------------------------------------------

@dataclasses.dataclass
class Loop:
    first: int
    last: int        # address of the backward branch
    chain: tuple     # the branch's inline chain
    name: str | None  # its loop= tag
    dims: str | None  # the innermost dims= tag on its chain
    parent: "Loop | None" = None
    instructions: int = 0  # counted instructions in the body, nested loops included


def _only(chain, tags) -> set[str]:
    return {tags[loc]["only"] for loc in chain if loc in tags and "only" in tags[loc]}


def _successors(instructions: list[Instruction]) -> dict[int, list[int]]:
    """The control-flow successors of each instruction: the next one unless it is an unguarded
    branch or exit, and a branch's target. An indirect branch's targets are unknown (none)."""
    following = {a.address: b.address for a, b in zip(instructions, instructions[1:])}
    found = {}
    for i in instructions:
        ends = i.opcode in ("EXIT", "RET", "BRX", "JMX") or (i.opcode == "BRA" and not i.text.startswith("BRA.DIV"))
        found[i.address] = ([following[i.address]] if i.address in following and (i.predicated or not ends) else []) + (
            [i.target] if i.opcode == "BRA" and i.target is not None else [])
    return found


def _sixteen_bit(instruction: Instruction) -> str | None:
    """bf16 or fp16 when the instruction is one of that type's own: inlined from its CUDA header
    (loads, conversions) or a product or conversion of it."""
    inner = instruction.chain[0][0] if instruction.chain else ""
    if inner.startswith("cuda_bf16") or ".BF16" in instruction.text:
        return "bf16"
    if inner.startswith("cuda_fp16") or (instruction.opcode in ("HMMA", "F2FP") and ".F16" in instruction.text):
        return "fp16"
    return None


def element_types(instructions: list[Instruction], tags) -> dict[int, set[str]]:
    """Which element types (``only=`` bf16, fp16, fp32 on with_typed_data's calls) run each
    instruction of the typed code, by control flow rather than by its own inline chain: nvcc's
    line table gives some code inlined through one call of the type switch the chain of another
    (the temporal kernels' 16-bit tile copies said they came through the float32 call, a float32
    branch's first instructions through the bfloat16 one), and some code no inline chain at all.
    Untyped code is what the kernel function itself runs: instructions whose chain leads out to
    the file of the function's first instruction (the launcher's) through no typed call. Each entry into typed code (from untyped code, the
    switch) starts a branch: what it reaches without passing through untyped code. A branch's
    type is the 16-bit type most of its instructions belong to (``_sixteen_bit``), else the one
    most of their chains name; an instruction runs for the types of the branches that reach it,
    and one that none reaches keeps its chain's (none: every type)."""
    typed = {i.address: _only(i.chain, tags) & DTYPE_CONDITIONS for i in instructions}
    by_address = {i.address: i for i in instructions}
    root = next((i.chain[-1][0] for i in instructions if i.chain), None)  # the kernel function's file
    untyped = {i.address for i in instructions if not typed[i.address] and i.chain and i.chain[-1][0] == root}
    successors = _successors(instructions)
    predecessors: dict[int, list[int]] = {i.address: [] for i in instructions}
    for source, targets in successors.items():
        for target in targets:
            if target in predecessors:
                predecessors[target].append(source)
    reached: dict[int, set[str]] = {a: set() for a in typed if a not in untyped}
    entries = [a for a in reached if not predecessors[a] or any(source in untyped for source in predecessors[a])]
    for entry in entries:
        branch, stack = {entry}, [entry]
        while stack:
            for target in successors[stack.pop()]:
                if target in reached and target not in branch:
                    branch.add(target)
                    stack.append(target)
        # The 16-bit types' own instructions (their headers' loads and conversions, their
        # products) say which a branch is; a branch without them is float32's or goes by its chains.
        votes: dict[str, int] = {}
        for address in branch:
            kind = _sixteen_bit(by_address[address])
            if kind:
                votes[kind] = votes.get(kind, 0) + 1
        if not votes:
            for address in branch:
                if len(typed[address]) == 1:
                    kind = next(iter(typed[address]))
                    votes[kind] = votes.get(kind, 0) + 1
        if votes:
            kind = max(sorted(votes), key=votes.get)
            for address in branch:
                reached[address].add(kind)
    return {a: kinds or typed[a] for a, kinds in reached.items()}


def _innermost(chain, tags, key: str) -> str | None:
    return next((tags[loc][key] for loc in chain if loc in tags and key in tags[loc]), None)


def executed(instructions: list[Instruction]) -> list[Instruction]:
    """Up to the self-branch that ends the code (the NOP padding after it never runs)."""
    end = next((i.address for i in instructions if i.opcode == "BRA" and i.target == i.address), None)
    return [i for i in instructions if end is None or i.address < end]


def without_divergence_fallbacks(instructions: list[Instruction]) -> list[Instruction]:
    """Without the out-of-line code a warp exchange (shfl.sync, __syncwarp) branches to with
    ``BRA.DIV`` when its warp is not converged, which ends in a branch back: the kernels run their
    exchanges converged (the host build checks it, csrc/host_launch.cpp), so it never runs, and
    its branch back is no loop."""
    starts = {i.target for i in instructions if i.text.startswith("BRA.DIV") and i.target is not None}
    kept, inside = [], False
    for instruction in instructions:
        inside = inside or instruction.address in starts
        if not inside:
            kept.append(instruction)
        elif instruction.backward:
            inside = False
    return kept


def find_loops(instructions: list[Instruction], tags) -> list[Loop]:
    """Every backward branch as a loop, outermost first, each with its enclosing loop."""
    loops = sorted((Loop(i.target, i.address, i.chain, _innermost(i.chain[:1], tags, "loop"),
                         _innermost(i.chain, tags, "dims"))
                    for i in instructions if i.backward), key=lambda l: (l.first, -l.last))
    for index, loop in enumerate(loops):
        enclosing = [o for o in loops[:index] if o.first <= loop.first and loop.last <= o.last]
        loop.parent = enclosing[-1] if enclosing else None
    return loops


def _per_warp_mean(warps: int, lane_trips) -> float:
    """The mean over a block's warps of the most trips any of its lanes makes."""
    return sum(max(lane_trips(32 * w + lane) for lane in range(32)) for w in range(warps)) / warps


def key_chunks(launch: dict) -> int:
    """Chunks of keys a kernel stages (csrc/temporal.cuh, TemporalForward): 1 for the others."""
    return -(-launch["tiles"] // launch["chunk_tiles"]) if launch.get("chunk_tiles") else 1


def trips_per_entry(loop: Loop, launch: dict, layer_tokens: int, layer_joints: int, dims: dict) -> float:
    """Mean trips per warp of one entry into ``loop``, from its tag and the launch (csrc/ is the
    reference: the loops these formulas mirror carry the tag)."""
    threads, warps = launch["threads"], launch["threads"] // 32
    first = min(launch["tiles"], launch.get("chunk_tiles") or launch["tiles"])
    if loop.name == "tiles":  # all of them, or the first key chunk's (csrc/cuda_launch.cu)
        return first
    if loop.name == "key_chunks":  # the later key chunks
        return key_chunks(launch) - 1
    if loop.name == "chunk_tiles":  # a later chunk's tiles
        return (launch["tiles"] - first) / (key_chunks(launch) - 1) if key_chunks(launch) > 1 else 0
    if loop.name == "tile_halves":  # a key tile's two 16-key products, one after the other
        return launch["key_tile"] / 16
    if loop.name == "joints":
        return layer_joints
    key_tile, batch = launch["key_tile"], launch["copy_batch"]
    if loop.name == "tile_rows":  # for (row = thread; row < key_tile; row += threads)
        return _per_warp_mean(warps, lambda t: math.ceil((key_tile - t) / threads) if t < key_tile else 0)
    # The temporal operand tiles' columns: dk padded to one 16-deep product, dv (as the
    # instantiation holds it) to whole ones (csrc/temporal.cuh, TemporalBlock).
    padded = {"dk": 16, "dv": -(-launch.get("dv", 0) // 16) * 16}
    if loop.name == "zero_pad":  # for (e = thread; e < 2 * key_tile * padding; e += threads)
        total = 2 * key_tile * (padded["dk"] - dims["dk"] + padded["dv"] - dims["dv"])
        return _per_warp_mean(warps, lambda t: math.ceil((total - t) / threads) if t < total else 0)
    # The forward's key chunks (csrc/temporal.cuh, TemporalForward): the start phase copies the
    # first, the key_chunks loop each later one (its runs multiply these); a chunk copy stages the
    # tiles that exist: the first chunk's, or (in the key_chunks loop) a later one's on average.
    staged = ((launch["tiles"] - first) / (key_chunks(launch) - 1) if loop.parent is not None and key_chunks(launch) > 1
              else first) if launch.get("chunk_tiles") else 1
    if loop.name == "chunk_items":  # for (item = warp; item < tiles * groups; item += warps)
        # Groups of a tile row per item: a key row whole, a value row in groups of 8 columns.
        items = math.ceil(staged * (1 if loop.dims == "dk" else padded["dv"] // 8))
        return sum(-(-(items - w) // warps) for w in range(min(warps, items))) / warps
    if loop.name == "chunk_rows":  # for (row = thread; row < tiles * key_tile; row += threads)
        rows = math.ceil(staged * key_tile)
        return _per_warp_mean(warps, lambda t: math.ceil((rows - t) / threads) if t < rows else 0)
    if loop.name == "stage_rows":  # a warp's 16 rows of the padded columns, 32 lanes, batch per trip
        return 16 * padded[loop.dims] / (32 * batch)
    if loop.name == "delta_channels":  # D = rowsum(dO ⊙ O), one row per lane of the first 16
        return dims["dv"]
    if loop.name == "fragment_depth":  # the portable product's depth: dk for q·k, else 16
        return dims["dk"] if loop.dims == "dk" else 16
    channels = dims[loop.dims]
    if loop.name == "token_copy":  # for (c0 = t / key_tile; c0 < dims; c0 += batch * threads / key_tile)
        groups = threads // key_tile
        return _per_warp_mean(warps, lambda t: math.ceil((channels - t // key_tile) / (batch * groups))
                              if t // key_tile < channels else 0)
    if loop.name == "copy_box":  # for (e = t; e < dims * key_tile; e += batch * threads)
        total = channels * key_tile
        return _per_warp_mean(warps, lambda t: math.ceil((total - t) / (batch * threads)) if t < total else 0)
    raise KeyError(f"no trip count for loop {loop.name!r}")


@dataclasses.dataclass(frozen=True)
class Counts:
    per_warp: float         # instructions one warp of a block executes (mean over the warps)
    key_loop: int           # instructions of the per-key loops' bodies (tile_keys, joints)
    key_loop_mix: dict      # their classes
    mufu_ex2: float         # MUFU.EX2 one warp executes (mean)
    instructions: int       # counted instructions (the modelled paths)
    loops: list[dict]       # every counted loop: name, size, trips per entry and in all
    check: str


def count(instructions: list[Instruction], launch: dict, conditions: set[str], layer_tokens: int,
          layer_joints: int, dims: dict, tags) -> Counts:
    """How many instructions a warp runs: each counted instruction once per run of its innermost
    loop. Instructions inlined through an ``only=`` call whose condition does not hold are left out."""
    from .cost_model import instruction_class  # noqa: PLC0415 (cost_model imports this module)
    kept = without_divergence_fallbacks(executed(instructions))
    types = element_types(kept, tags)

    def runs_here(instruction: Instruction) -> bool:
        kinds = types.get(instruction.address)
        return (_only(instruction.chain, tags) - DTYPE_CONDITIONS <= conditions
                and (not kinds or bool(kinds & conditions)))

    code = [i for i in kept if runs_here(i)]
    loops = find_loops(code, tags)
    totals: dict[int, float] = {}
    problems = []
    for loop in loops:  # outermost first, so a parent's total is known
        if loop.name is None:
            problems.append(f"untagged loop at {loop.chain[:1]}")
            totals[id(loop)] = 0.0
            continue
        parent = totals[id(loop.parent)] if loop.parent else 1.0
        totals[id(loop)] = parent * trips_per_entry(loop, launch, layer_tokens, layer_joints, dims)
    chains = [l.chain for l in loops]
    if len(set(chains)) != len(chains):
        problems.append("two loops of one source chain (an unrolled or copied loop)")
    if any(i.opcode == "CALL" for i in code):
        problems.append("calls a subroutine")

    def innermost(address: int) -> Loop | None:
        inside = [l for l in loops if l.first <= address <= l.last]
        return inside[-1] if inside else None

    per_warp, ex2, key_loop, mix = 0.0, 0.0, 0, {}
    for instruction in code:
        loop = innermost(instruction.address)
        runs = totals[id(loop)] if loop else 1.0
        per_warp += runs
        if instruction.text.startswith("MUFU.EX2"):
            ex2 += runs
        if loop is not None:
            loop.instructions += 1
            if loop.name in KEY_LOOPS:
                key_loop += 1
                kind = instruction_class(instruction.opcode)
                mix[kind] = mix.get(kind, 0) + 1
    summary = [{"loop": l.name, "dims": l.dims, "instructions": l.instructions,
                "trips": totals[id(l)] / totals[id(l.parent)] if l.parent and totals[id(l.parent)] else totals[id(l)],
                "runs": totals[id(l)]}
               for l in loops]
    return Counts(per_warp, key_loop, dict(sorted(mix.items(), key=lambda kv: -kv[1])), ex2, len(code), summary,
                  "; ".join(problems) or "ok")


# --- the rows -----------------------------------------------------------------------------------------

def conditions(dtype: str, layout: str) -> set[str]:
    """What holds for a launch: its element type, and which of qkv's strides is smaller (the
    outputs and dO are allocated in qkv's stride order)."""
    from . import cost_model  # noqa: PLC0415
    qkv = cost_model._qkv_tensor(layout, 3, 2, cost_model.DTYPES.get(dtype, cost_model.DTYPES["fp32"]))
    tokens_fastest = qkv.stride(2) <= qkv.stride(1)
    return {dtype, "tokens_fastest" if tokens_fastest else "channels_fastest"}


def exponentials(kernel: str, launch: dict, layer) -> int:
    """One per score of the tiles as the kernel pads them: spatially every lane of a block's
    warps against the V keys; temporally the blocks' rows (16 per warp) against the key tiles
    (kKeyTile keys each), plus the forward's one rescale per row and key tile."""
    from .cost_model import JOINTS  # noqa: PLC0415
    if launch["kernel"] == "key_mask":
        return 0
    if kernel.startswith("spatial"):
        return launch["blocks"] * launch["threads"] * JOINTS
    rows = launch["blocks"] * launch["block_tokens"]
    return rows * launch["tiles"] * launch["key_tile"] + (rows * launch["tiles"] if kernel == "temporal_forward" else 0)


def plan(family: str = "all", kernels: list[str] | None = None, quick: bool = False) -> list[tuple]:
    """(kernel, layer, dtype, drop) of every cuda row: the Triton rows' kernels, layers, dtypes and
    DropAttention settings; the kernels compute both settings with one code path (a mask of ones)."""
    from .cost_model import KEY_MASK_KERNELS, LAYERS, DTYPES, KERNELS as FAMILIES  # noqa: PLC0415
    chosen = []
    for kernel, (kernel_family, _) in FAMILIES.items():
        if family not in ("all", kernel_family) or (kernels and kernel not in kernels):
            continue
        layers = [layer for layer in LAYERS if layer.family == kernel_family]
        layers = layers[:1] if quick else layers
        dtypes = ["bool"] if kernel in KEY_MASK_KERNELS else ["bf16"] if quick else list(DTYPES)
        drops = [True] if kernel in KEY_MASK_KERNELS else [True, False]
        chosen += [(kernel, layer, dtype, drop) for layer in layers for dtype in dtypes for drop in drops]
    return chosen


def rows(planned: list[tuple], device, layout: str = "module", progress=None) -> list[dict]:
    """The cuda backend's rows, in the Triton rows' format (docs/cost-model.md §10)."""
    from . import cost_model  # noqa: PLC0415
    build = compile_cubin(device.arch)
    usage = resources(build.ptxas_report)
    wanted = {}
    for kernel, layer, dtype, drop in planned:
        op, struct = KERNELS[kernel]
        launch = _launch(kernel, layer)
        wanted[(kernel, layer, dtype, drop)] = (launch, function_name(usage, struct, launch.get("dk"),
                                                                       launch.get("dv"), launch.get("exact"), dtype))
    if progress:
        progress(f"cuda: disassembling {len({f for _, f in wanted.values()})} kernels (sm_{device.arch})")
    code = disassemble(build.cubin, {f for _, f in wanted.values()})
    tags = source_tags()
    found = []
    for (kernel, layer, dtype, drop), (launch, function) in wanted.items():
        facts = usage[function]
        counted = count(code[function], launch, conditions(dtype, layout), layer.tokens, cost_model.JOINTS,
                        {"dk": layer.dkh, "dv": layer.dvh}, tags)
        warps = launch["threads"] // 32
        warp_instructions = round(launch["blocks"] * warps * counted.per_warp)
        exps = exponentials(kernel, launch, layer)
        needed_bytes = cost_model.minimum_bytes(kernel, layer, dtype)
        estimate = cost_model.bounds(warp_instructions, needed_bytes, exps, device)
        ex2_lanes = 32 * launch["blocks"] * warps * counted.mufu_ex2
        family, direction = cost_model.KERNELS[kernel]
        key_loop = next((l for l in counted.loops if l["loop"] in ("tiles", "joints")), None)
        found.append({
            "backend": "cuda", "kernel": kernel, "family": family, "direction": direction, "layer": layer.name,
            "stream": layer.stream, "tokens": layer.tokens, "dkh": layer.dkh, "dvh": layer.dvh,
            "layer_count": layer.count, "dtype": dtype, "drop": drop, "layout": layout, "arch": device.arch,
            "config": _config_label(launch), "config_kwargs": {k: v for k, v in launch.items() if k != "kernel"},
            "choice": "first", "num_warps": warps, "num_stages": None, "warp_replication": None, "dots": [],
            "rng_per_thread": None, "registers": facts["registers"], "spill_bytes": facts["spill_bytes"],
            "stack_bytes": facts["stack_bytes"], "local_bytes": 0, "shared_bytes": launch["shared_bytes"],
            "programs": launch["blocks"], "trips": key_loop["runs"] if key_loop else 0,
            "loop_instructions": counted.key_loop, "outside_instructions": None, "loop_mix": counted.key_loop_mix,
            "loops": counted.loops, "instructions_per_program": round(counted.per_warp),
            "warp_instructions": warp_instructions, "loop_check": counted.check, "bytes": needed_bytes,
            "exps": exps, "ex2_per_exp": ex2_lanes / exps if exps else None,
            "sfu_us": 1e6 * ex2_lanes / device.exp_per_s, "loop_memory": {},
            "issue_us": estimate.issue_us, "memory_us": estimate.memory_us, "exp_us": estimate.exp_us,
            "bound_us": estimate.bound_us, "limiter": estimate.limiter, "predicted_us": estimate.predicted_us,
            "predicted_fraction": estimate.predicted_fraction, "drop_loop_ratio": None})
    return found


def _launch(kernel: str, layer) -> dict:
    from .cost_model import BATCH, HEADS, JOINTS  # noqa: PLC0415
    op, struct = KERNELS[kernel]
    found = [l for l in launches(op, BATCH, layer.tokens, JOINTS, HEADS, layer.dkh, layer.dvh) if l["kernel"] == struct]
    if len(found) != 1:
        raise LookupError(f"the launcher makes {len(found)} {struct} launches for {kernel} at {layer.name}")
    return found[0]


def _config_label(launch: dict) -> str:
    """Threads per block, and what a block owns: frames (spatial) or tokens (temporal)."""
    if launch["kernel"] == "key_mask":
        return f"t{launch['threads']}"
    owned = f"F{launch['block_tokens']}" if launch["kernel"].startswith("Spatial") else f"T{launch['block_tokens']}"
    return f"{owned} t{launch['threads']}"
