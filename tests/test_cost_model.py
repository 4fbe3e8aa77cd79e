"""The cost model (kernels/cost_model.py): its SASS and TTGIR readers on hand-written samples, its
bounds and work counts on hand-computed cases, and one real compilation in its own process."""
import json
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

from sttr_fast.kernels import cost_model  # noqa: E402
from triton_harness import environment_without_interpreter  # noqa: E402

# A kernel as cuobjdump prints it: a loop from 0x0030 to its backward branch at 0x0080, a call
# into a slow path (0x00d0-0x00e0) that returns, the end-of-code self-branch and NOP padding.
SASS = """
        Function : kernel
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
                                                                           /* 0x000fe40000000800 */
        /*0010*/                   S2R R0, SR_CTAID.X ;                    /* 0x0000000000007919 */
                                                                           /* 0x000e220000002500 */
        /*0020*/                   UMOV UR4, 0x400 ;                       /* 0x0000040000047882 */
                                                                           /* 0x000fe20000000000 */
        /*0030*/                   LDG.E.U16 R2, desc[UR4][R4.64] ;        /* 0x0000000404027981 */
                                                                           /* 0x000ea2000c1e1500 */
        /*0040*/               @P0 CALL.REL.NOINC 0xd0 ;                   /* 0x0000008000007944 */
                                                                           /* 0x000fea0003c00000 */
        /*0050*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;  /* 0x000000100c08723c */
                                                                           /* 0x004ff00000041808 */
        /*0060*/                   MUFU.EX2 R3, R3 ;                       /* 0x0000000300037308 */
                                                                           /* 0x000e240000000800 */
        /*0070*/                   ISETP.NE.AND P1, PT, R0, 0x4, PT ;      /* 0x000000040000780c */
                                                                           /* 0x000fda0003f25270 */
        /*0080*/               @P1 BRA 0x30 ;                              /* 0xfffffffc00e81947 */
                                                                           /* 0x001fea000383ffff */
        /*0090*/                   STG.E desc[UR4][R6.64], R3 ;            /* 0x0000000306007986 */
                                                                           /* 0x000fe2000c101904 */
        /*00a0*/                   EXIT ;                                  /* 0x000000000000794d */
                                                                           /* 0x000fea0003800000 */
        /*00b0*/                   BRA 0xb0;                               /* 0xfffffffc00fc7947 */
                                                                           /* 0x000fc0000383ffff */
        /*00c0*/                   NOP;                                    /* 0x0000000000007918 */
                                                                           /* 0x000fc00000000000 */
        /*00d0*/                   IMAD.HI.U32 R5, R5, R7, RZ ;            /* 0x0000000705057227 */
                                                                           /* 0x000fca00078e00ff */
        /*00e0*/                   RET.REL.NODEC R2 0x0 ;                  /* 0xffffff0002007950 */
                                                                           /* 0x000fea0003c3ffff */
"""

TTGIR = """#blocked = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [8, 4], warpsPerCTA = [8, 1], order = [1, 0]}>
#linear = #ttg.linear<{register = [[0, 1]], lane = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]], warp = [[0, 0], [8, 0]], block = []}>
#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 8]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [2, 2], instrShape = [16, 8]}>
module attributes {"ttg.num-warps" = 4 : i32} {
    %c2 = tt.mulhiui %cst_3, %index_lo : tensor<32xi32, #ttg.slice<{dim = 0, parent = #mma}>> loc(#loc1)
    %s = tt.dot %q, %k, %cst : tensor<32x16xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>> * tensor<16x32xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 2}>> -> tensor<32x32xf32, #mma> loc(#loc2)
    %o = tt.dot %a, %v, %cst_1 : tensor<32x32xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma1, kWidth = 2}>> * tensor<32x16xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma1, kWidth = 2}>> -> tensor<32x16xf32, #mma1> loc(#loc3)
}
"""

REQUIRED_KEYS = {"kernel", "direction", "layer", "dtype", "drop", "config", "num_warps", "warp_replication",
                 "registers", "spill_bytes", "issue_us", "memory_us", "exp_us", "bound_us",
                 "predicted_fraction"}


def test_sass_reader_finds_the_loop_and_leaves_out_slow_paths_and_padding():
    counts = cost_model.count_sass(SASS)
    assert counts.loops == [(0x30, 0x80)]
    assert counts.loop_sizes == [6]               # 0x30 .. 0x80
    assert counts.outside == 5                    # 3 before the loop, STG and EXIT after it
    assert counts.total == 11
    assert counts.subroutine == 2                 # the CALLed IMAD.HI and its RET
    assert not counts.nested
    assert counts.mufu_ex2 == counts.loop_mufu_ex2 == 1
    assert counts.loop_memory == {"LDG.E.U16": 1}
    assert counts.loop_mix == {"global": 1, "branch": 2, "tensor": 1, "sfu": 1, "integer": 1}
    facts = {"counts": vars(counts), "source_loops": 1, "ptx_ex2": 1}
    assert cost_model.instructions_per_program(facts, trips=4) == (5 + 6 * 4, "ok")
    # More MUFU.EX2 than the PTX's ex2 means ptxas copied code (an unrolled loop): trips unsure.
    facts["ptx_ex2"] = 0
    assert "duplicated" in cost_model.instructions_per_program(facts, trips=4)[1]
    facts["ptx_ex2"] = 2
    assert cost_model.instructions_per_program(facts, trips=4)[1] == "ok (ptxas merged 1 ex2)"


def test_warp_replication_counts_warps_beyond_the_tiles_rows():
    found = cost_model.dots(TTGIR)
    # 4 warps x 16 rows = 64 rows for a 32-row tile: every element computed by two warps.
    assert found[0] == {"shape": [32, 32], "layout": "mma v2 warps [4, 1]", "replication": 2}
    # 2 x 16 rows and 2 x 8 columns fit a 32 x 16 tile.
    assert found[1]["replication"] == 1
    layouts = cost_model.parse_layouts(TTGIR)
    # Blocked: 8 warps x 8 lanes x 1 row = 64 rows for 16 rows: 4 warps repeat; 4 x 4 columns fit.
    assert cost_model.warp_replication([16, 16], layouts["blocked"]) == 4
    assert cost_model.warp_replication([64, 16], layouts["blocked"]) == 1
    # A linear layout's all-zero warp basis broadcasts over that warp bit.
    assert cost_model.warp_replication([16, 8], layouts["linear"]) == 2


def test_keep_decisions_in_a_slice_of_the_score_layout_are_computed_by_every_row_thread():
    # The 32 keys of a slice along the rows of #mma: 8 lane rows x 4 warps hold each key, so each
    # of the 128 threads evaluates Philox for 8 keys where 1 would do.
    assert cost_model.rng_per_thread(TTGIR, num_warps=4) == 8
    layouts = cost_model.parse_layouts(TTGIR)
    assert cost_model.thread_replication([32], "#ttg.slice<{dim = 0, parent = #mma}>", layouts) == 32
    assert cost_model.thread_replication([32], "#ttg.slice<{dim = 1, parent = #mma1}>", layouts) == 8


def test_bounds_from_bytes_exponentials_and_instructions():
    device = cost_model.Device("test", 90, sms=100, clock_hz=1e9, bandwidth=1e12, note="")
    assert device.issue_per_s == 4e11 and device.exp_per_s == 1.6e12
    estimate = cost_model.bounds(warp_instructions=4_000_000, bytes_moved=2_000_000, exps=1_600_000,
                                 device=device)
    assert estimate.memory_us == pytest.approx(2.0)
    assert estimate.exp_us == pytest.approx(1.0)
    assert estimate.issue_us == pytest.approx(10.0)
    assert (estimate.bound_us, estimate.limiter) == (pytest.approx(2.0), "memory")
    assert estimate.predicted_fraction == pytest.approx(0.2)
    exp_bound = cost_model.bounds(10, 1_000_000, 3_200_000, device)
    assert exp_bound.limiter == "exp" and exp_bound.predicted_fraction == 1.0


def test_minimum_bytes_and_padded_exponentials_of_the_first_ssa_layer():
    layer = cost_model.Layer("spatial", "joints", 300, 4, 16, 1)
    config = triton.Config({"BLOCK_F": 4}, num_warps=4, num_stages=2)
    needed = cost_model.work("spatial_forward", layer, "bf16", True, config)
    tokens = 64 * 300 * 25
    # qkv (192 channels) read, out (128) written in bfloat16; one float32 statistic per query and head.
    assert needed.bytes == tokens * 192 * 2 + tokens * 128 * 2 + tokens * 8 * 4
    assert needed.programs == 64 * 300 // 4 * 8 and needed.trips == 4
    # One exponential per score of the 32 x 32 padded tile of every frame and head.
    assert needed.exps == 64 * 300 * 8 * 32 * 32
    backward = cost_model.work("spatial_backward", layer, "bf16", True, config)
    assert backward.bytes == 2 * tokens * 192 * 2 + tokens * 128 * 2 + tokens * 8 * 4
    temporal = cost_model.Layer("temporal", "joints", 75, 8, 32, 3)
    tile = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=2, num_stages=2)
    key = cost_model.work("temporal_backward_key", temporal, "fp32", False, tile)
    assert key.exps == 64 * 25 * 8 * 80 * 80 and key.trips == 5


def test_extra_configs_join_the_kernels_that_take_their_meta_parameters():
    config = cost_model.parse_config("BLOCK_M=16,BLOCK_N=64,num_warps=1")
    assert (config.kwargs, config.num_warps, config.num_stages) == ({"BLOCK_M": 16, "BLOCK_N": 64}, 1, 2)
    with pytest.raises(ValueError, match="NAME=INT"):
        cost_model.parse_config("BLOCK_F")
    planned = cost_model.plan(quick=True, kernels=["spatial_forward", "temporal_forward"],
                              extra_configs=[config])
    extras = [p.job for p in planned if p.choice == "extra"]
    # Both DropAttention settings of the temporal kernel, none of the spatial one (it takes BLOCK_F).
    assert [(job.kernel, job.drop) for job in extras] == [("temporal_forward", True), ("temporal_forward", False)]
    assert extras[0].triton_config.kwargs == {"BLOCK_M": 16, "BLOCK_N": 64}


@pytest.mark.slow
def test_the_model_runs_on_one_kernel_and_writes_every_required_key(tmp_path):
    """One real compilation (sm_90), in a process without the interpreter."""
    path = tmp_path / "rows.json"
    command = [sys.executable, "-m", "sttr_fast.kernels.cost_model", "--quick", "--kernel", "spatial_forward",
               "--backend", "triton", "--jobs", "1", "--json", str(path)]
    result = subprocess.run(command, env=environment_without_interpreter(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(path.read_text())
    rows = report["rows"]
    assert [r["drop"] for r in rows] == [True, False]
    for r in rows:
        assert REQUIRED_KEYS <= r.keys()
        assert r["choice"] == "first" and r["config"] == "F16 w2 s2" and r["loop_check"] == "ok"
        # The launcher's first config puts 2 warps of 16 rows on a frame's 32 padded joints.
        assert [d["layout"] for d in r["dots"]] == ["mma v2 warps [2, 1]"] * 2
        assert r["warp_replication"] == 1
        assert r["registers"] > 0 and r["instructions_per_program"] > r["loop_instructions"] * r["trips"]
        assert r["warp_instructions"] == r["programs"] * r["num_warps"] * r["instructions_per_program"]
        assert 0 < r["predicted_fraction"] <= 1
    ratio = rows[0]["loop_instructions"] / rows[1]["loop_instructions"]
    assert rows[0]["drop_loop_ratio"] == pytest.approx(ratio) and ratio > 1
    assert set(report["drop_loop_ratio"]) == {"spatial_forward"}
    assert report["meta"]["triton"] == triton.__version__


# --- the cuda backend's rows (kernels/cuda_cost_model.py) -----------------------------------------

# nvdisasm -gi output of one kernel: a tile loop (0x10-0x50) around a per-key loop (0x20-0x30), an
# instruction inlined through a float16-only call (0x40), the end-of-code self-branch and padding.
NVDISASM = """
.text._kernel_a:
\t//## File "/src/launch.cu", line 18
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_1:
\t//## File "/src/k.cuh", line 30 inlined at "/src/launch.cu", line 36
\t//## File "/src/launch.cu", line 36
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_2:
\t//## File "/src/k.cuh", line 21 inlined at "/src/k.cuh", line 30
\t//## File "/src/k.cuh", line 30 inlined at "/src/launch.cu", line 36
\t//## File "/src/launch.cu", line 36
        /*0020*/                   MUFU.EX2 R3, R3 ;
\t//## File "/src/k.cuh", line 20 inlined at "/src/k.cuh", line 30
\t//## File "/src/k.cuh", line 30 inlined at "/src/launch.cu", line 36
\t//## File "/src/launch.cu", line 36
        /*0030*/              @!P0 BRA `(.L_x_2) ;
\t//## File "/src/k.cuh", line 56 inlined at "/src/k.cuh", line 55
\t//## File "/src/k.cuh", line 55 inlined at "/src/launch.cu", line 36
\t//## File "/src/launch.cu", line 36
        /*0040*/                   HADD2.F32 R4, -RZ, R4.H0_H0 ;
\t//## File "/src/launch.cu", line 35
        /*0050*/              @!P1 BRA `(.L_x_1) ;
        /*0060*/                   EXIT ;
.L_x_3:
        /*0070*/                   BRA `(.L_x_3);
        /*0080*/                   NOP;
.text._kernel_b:
        /*0000*/                   EXIT ;
"""
TAGS = {("launch.cu", 35): {"loop": "tiles"}, ("k.cuh", 20): {"loop": "tile_halves"}, ("k.cuh", 55): {"only": "fp16"}}
# Three tiles of 32 keys (two halves of 16 each) for a block of two warps.
LAUNCH = {"kernel": "TemporalForward", "threads": 64, "tiles": 3, "key_tile": 32, "copy_batch": 4}


def test_nvdisasm_reader_keeps_inline_chains_and_branch_targets():
    code = cost_model.cuda_cost_model.parse_nvdisasm(NVDISASM, {"_kernel_a"})
    assert set(code) == {"_kernel_a"}
    instructions = code["_kernel_a"]
    assert [i.address for i in instructions] == list(range(0, 0x90, 0x10))
    assert instructions[2].chain == (("k.cuh", 21), ("k.cuh", 30), ("launch.cu", 36))
    assert instructions[3].target == 0x20 and instructions[3].backward
    assert instructions[5].target == 0x10 and instructions[7].target == 0x70 and not instructions[7].backward
    # The chain carries over to instructions printed without a location of their own.
    assert instructions[6].chain == (("launch.cu", 35),)


def test_cuda_counts_run_each_instruction_once_per_run_of_its_innermost_loop():
    cuda = cost_model.cuda_cost_model
    instructions = cuda.parse_nvdisasm(NVDISASM)["_kernel_a"]
    counted = cuda.count(instructions, LAUNCH, {"bf16", "tokens_fastest"}, layer_tokens=90, layer_joints=25,
                         dims={}, tags=TAGS)
    # LDC and EXIT once; BAR and the tile loop's branch 3 times; MUFU and the inner loop's branch 6
    # times (3 tiles of 2 halves); the float16 conversion not at all; the padding after the end never.
    assert counted.per_warp == 1 + 1 + 2 * 3 + 2 * 6
    assert counted.mufu_ex2 == 6 and counted.key_loop == 4 and counted.check == "ok"
    assert [(l["loop"], l["trips"], l["runs"]) for l in counted.loops] == [("tiles", 3, 3), ("tile_halves", 2, 6)]
    # For float16 the conversion runs once per tile.
    fp16 = cuda.count(instructions, LAUNCH, {"fp16", "tokens_fastest"}, 90, 25, {}, TAGS)
    assert fp16.per_warp == counted.per_warp + 3
    # A loop whose branch line carries no loop= tag cannot be given trips: the check says so.
    untagged = cuda.count(instructions, LAUNCH, {"bf16"}, 90, 25, {}, {**TAGS, ("k.cuh", 20): {}})
    assert "untagged loop" in untagged.check


def test_cuda_counts_leave_out_the_fallback_of_an_exchange_in_a_diverged_warp():
    """A shuffle's BRA.DIV jumps to out-of-line code that branches back: no loop, never run."""
    cuda = cost_model.cuda_cost_model
    at = lambda address, text, target=None: cuda.Instruction(address, text.split()[0].split(".")[0], text,
                                                             (("k.cuh", 20),), target)
    code = [at(0x00, "BRA.DIV UR4", 0x40), at(0x10, "SHFL.BFLY R1, R2, 0x1, 0x1f"), at(0x20, "FMNMX R3, R1, R2"),
            at(0x30, "EXIT"), at(0x40, "WARPSYNC.COLLECTIVE R8"), at(0x50, "SHFL.BFLY R1, R2, 0x1, 0x1f"),
            at(0x60, "ENDCOLLECTIVE"), at(0x70, "BRA", 0x20), at(0x80, "BRA", 0x80)]
    kept = cuda.without_divergence_fallbacks(cuda.executed(code))
    assert [i.address for i in kept] == [0x00, 0x10, 0x20, 0x30]
    counted = cuda.count(code, LAUNCH, {"bf16"}, 90, 25, {}, TAGS)
    assert counted.per_warp == 4 and counted.check == "ok"


def test_cuda_copy_and_row_loop_trips_follow_the_kernels_thread_mapping():
    cuda = cost_model.cuda_cost_model
    copy = cuda.Loop(0, 0, (), "token_copy", "dv")
    # L = 75: 96 threads in 3 groups of 32 tokens; a group copies every 3rd of 64 channels, 4 per trip.
    launch = {**LAUNCH, "threads": 96}
    assert cuda.trips_per_entry(copy, launch, 75, 25, {"dk": 16, "dv": 64}) == 6
    # 4 channels over 5 groups (L = 150, 160 threads): the fifth warp has none.
    launch = {**LAUNCH, "threads": 160}
    assert cuda.trips_per_entry(cuda.Loop(0, 0, (), "token_copy", "dk"), launch, 150, 25, {"dk": 4, "dv": 16}) == 0.8
    # The tile's 32 per-row values: only the first warp has rows.
    assert cuda.trips_per_entry(cuda.Loop(0, 0, (), "tile_rows", None), launch, 150, 25, {}) == 0.2


def test_the_cuda_launch_geometry_comes_from_the_launcher():
    """csrc/launch_probe.cpp runs csrc/dispatch.h's choice for ST-TR's layers."""
    cuda = cost_model.cuda_cost_model
    try:
        spatial = cuda.launches("spatial_backward", 64, 150, 25, 8, 16, 64)
        temporal = cuda.launches("temporal_backward", 64, 150, 25, 8, 4, 16)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    # The 16/64 backward's tiles fit 64 KB of shared memory for two frames: 64 threads.
    assert [(l["kernel"], l["block_tokens"], l["threads"], l["exact"]) for l in spatial] == [
        ("SpatialBackward", 2, 64, True)]
    assert spatial[0]["blocks"] == 64 * 150 // 2 * 8
    # One chunk of 160 tokens per (sequence, head) at L = 150, a warp per 16 (320 threads), five
    # key tiles; query kernel first.
    assert [(l["kernel"], l["block_tokens"], l["threads"], l["tiles"], l["blocks"]) for l in temporal] == [
        ("TemporalBackwardQuery", 160, 320, 5, 64 * 25 * 8), ("TemporalBackwardKey", 160, 320, 5, 64 * 25 * 8)]
    # Each sizes its shared memory: two tile buffers, then ten warps' own rows and exchange areas.
    assert temporal[0]["shared_bytes"] > 10 * 16 * 24 * 4


def test_nvcc_cuda_rows_find_the_key_loops_of_every_kernel():
    """The cuda rows from nvcc's sm_90 cubin (cached, shared with tests/test_cuda_backend_nvcc.py):
    selected by ``pytest -k nvcc``."""
    cuda = cost_model.cuda_cost_model
    if cuda.find_nvcc() is None:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    planned = cuda.plan(quick=True)
    rows = cuda.rows(planned, cost_model.DEVICES["h100"])
    assert {r["kernel"] for r in rows} == set(cost_model.KERNELS)
    for r in rows:
        assert r["loop_check"] == "ok" and r["spill_bytes"] == 0 and 0 < r["predicted_fraction"] <= 1, r
        assert r["warp_instructions"] == pytest.approx(r["programs"] * r["num_warps"] * r["instructions_per_program"],
                                                       rel=1e-3)
        if r["kernel"] in cost_model.KEY_MASK_KERNELS:
            continue
        # The per-key loops: one run per tile of 32 keys (temporal), per joint (spatial, 25).
        key_loops = [l for l in r["loops"] if l["loop"] in ("tiles", "joints")]
        assert key_loops and all(l["runs"] == (-(-r["tokens"] // 32) if r["family"] == "temporal" else 25)
                                 for l in key_loops)
        if r["family"] == "temporal":  # bf16 products on tensor cores
            assert r["loop_mix"].get("tensor", 0) >= 4
        assert r["loop_mix"].get("sfu", 0) >= 1 and r["loop_mix"].get("shared", 0) >= 1
        # One exponential per score: MUFU.EX2 lanes per exponential needed, the forward's rescales
        # counted in both.
        assert 0.9 < r["ex2_per_exp"] < 1.3
    # One code path with and without DropAttention: same instructions, same bound.
    by_drop = {(r["kernel"], r["drop"]): r["warp_instructions"] for r in rows}
    assert by_drop[("temporal_forward", True)] == by_drop[("temporal_forward", False)]
