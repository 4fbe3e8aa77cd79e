"""bench/: a real pytest-benchmark run of two CPU rows rendered by bench/report.py, the README's
generated Performance section, and the GPU script's plan. (The benchmarks measure; these tests only
check that the reports say what the measurements were.)"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402

GROUP = "spatial core, joints, T=32 4/16 N'=4, fp32, inference [cpu]"


@pytest.fixture(scope="module")
def benchmark_json(tmp_path_factory):
    """Two rows of one group (the reference and SDPA's math backend), measured for real."""
    path = tmp_path_factory.mktemp("bench") / "run.json"
    # Not as an xdist worker (README's test command runs two): pytest-benchmark switches itself off
    # in one, which --benchmark-only refuses.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH / "bench_spatial_attention.py"), "-q",
         "-p", "no:cacheprovider", "-k", "cpu-T32-joints-fp32-infer and (reference or sdpa-math)",
         "--benchmark-only", f"--benchmark-json={path}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
    return path


def test_report_tables_give_each_rows_speed_up_and_memory(benchmark_json):
    raw = json.loads(benchmark_json.read_text())
    medians = {entry["extra_info"]["implementation"]: entry["extra_info"]["median_ms"]
               for entry in raw["benchmarks"]}
    assert set(medians) == {"reference", "sdpa-math"}
    assert all(entry["group"] == GROUP and entry["extra_info"]["peak_bytes"] >= 0 for entry in raw["benchmarks"])
    environment = raw["machine_info"]["sttr_environment"]
    assert environment["device"].startswith("CPU") and environment["torch"]

    text = report.markdown([report.load(benchmark_json)])
    assert f"### {GROUP}" in text and environment["device"] in text
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert f"{medians['reference']:.3f} ms | 1.0×" in lines["reference"]
    expected = f"{medians['reference'] / medians['sdpa-math']:.1f}×"
    assert f"{medians['sdpa-math']:.3f} ms | {expected}" in lines["sdpa-math"]


def test_report_writes_markdown_and_a_png_chart(benchmark_json, tmp_path):
    assert report.main([str(benchmark_json), "--out", str(tmp_path / "report")]) == 0
    assert GROUP in (tmp_path / "report").with_suffix(".md").read_text()
    assert (tmp_path / "report-core.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_results_feed_the_readme_section(benchmark_json, tmp_path, monkeypatch):
    assert report.main([str(benchmark_json), "--save", str(tmp_path)]) == 0
    kept = sorted(p.name for p in tmp_path.iterdir())
    stem = kept[0].rsplit(".", 1)[0].removesuffix("-core")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-cpu-\d+-cores", stem), kept
    assert kept == sorted([f"{stem}.json", f"{stem}.md", f"{stem}-core.png"])
    section = report.readme_section(report.kept_results(tmp_path))
    assert section.startswith(report.README_BEGIN) and section.endswith(report.README_END)
    assert f"bench/results/{stem}.md" in section
    # The row compares the reference with the other implementation (not with itself): its
    # speed-up is the ratio of the two medians it shows.
    row = re.search(r"\| spatial core, joints, T=32 4/16 N'=4, fp32, inference \| ([0-9.]+) ms \| "
                    r"([0-9.]+) ms \(([0-9.]+)×\) \|", section)
    assert row, section
    reference_ms, other_ms, speed_up = map(float, row.groups())
    medians = sorted(entry["extra_info"]["median_ms"] for entry in json.loads(benchmark_json.read_text())["benchmarks"])
    assert sorted([reference_ms, other_ms]) == pytest.approx(medians, rel=0.01)
    assert speed_up == pytest.approx(reference_ms / other_ms, abs=0.06)


def test_training_rows_compare_with_float32_and_show_the_paired_speed_up(tmp_path):
    """bench/bench_training.py's groups have no reference-backend row: their baseline is the
    float32 step, and the bf16 row's speed-up is the one it timed in pairs with it."""
    group = "S-TR, joints, N=4 T=300, training step [cpu]"
    rows = [("fp32", 3000.0, {}), ("bf16 autocast", 2000.0, {"paired_speed_up": 1.84})]
    run = {"datetime": "2026-11-28T12:00:00", "machine_info": {"sttr_environment": {"device": "CPU, 2 cores"}},
           "benchmarks": [{"group": group, "name": name, "stats": {},
                           "extra_info": {"suite": "training", "implementation": name, "median_ms": median,
                                          "peak_bytes": 2**30, **extra}} for name, median, extra in rows]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    text = report.markdown([report.load(path)])
    assert "## CPU training" in text
    assert "| fp32 | 3000.000 ms | 1.0× |" in text and "| bf16 autocast | 2000.000 ms | 1.8× paired |" in text
    pivot = "\n".join(report._pivot(report.load(path)["rows"]))
    assert "speed-up over `fp32`" in pivot
    assert "| S-TR, joints, N=4 T=300, training step | 3 s | 2 s (1.8× paired) |" in pivot


def test_readme_performance_section_is_generated_from_the_kept_results():
    assert report.main(["--readme", str(ROOT / "README.md"), "--check"]) == 0


def test_report_names_a_file_it_cannot_use(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    for path, reason in ((broken, "not a readable JSON file"), (other, "not pytest-benchmark output")):
        assert report.main([str(path)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and str(path) in error and reason in error


def test_gpu_check_plan_fits_six_minutes_and_interrupts_its_steps():
    script = (BENCH / "gpu_check.sh").read_text()
    assert 'timeout -s INT -k "$grace" "$limit"' in script
    for mode in ("core", "models", "autotune"):
        result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), mode, "--plan"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        total = int(re.search(r"at most (\d+) s", result.stdout).group(1))
        steps = re.findall(r"^  (\S+)\s+(\d+) s$", result.stdout, re.MULTILINE)
        assert steps[0][0] == "install" and 0 < total <= 360
        assert sum(int(limit) for _, limit in steps) + len(steps) == total
