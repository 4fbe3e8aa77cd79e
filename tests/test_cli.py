"""The ``sttr`` command line: entry points, help, and the benchmark on random input."""
import re
import subprocess
import sys
from pathlib import Path

from sttr_fast.cli import main


def test_module_and_console_script_show_help():
    # The console script sits beside the interpreter, so this holds in a venv that is not activated.
    console_script = Path(sys.executable).parent / "sttr"
    assert console_script.exists(), f"the sttr console script is not installed at {console_script}"
    for command in ([sys.executable, "-m", "sttr_fast", "--help"], [str(console_script), "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        for command in ("prepare", "train", "test", "ensemble", "import-checkpoint", "bench"):
            assert command in result.stdout


def test_bench_trains_and_infers_on_random_input(capsys):
    assert main(["bench", "--stream", "temporal", "--frames", "16", "--steps", "2",
                 "--batch-size", "2", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "1,754,737 parameters" in out  # T-TR joints: 1,768,358 - 53 * 257 for a 7-class head
    assert out.count("train step") == 3 and "(warm-up)" in out
    assert re.search(r"training: [0-9.]+ samples/s", out)
    assert "logits (2, 7)" in out


def test_bench_reports_bad_arguments_in_one_line(capsys):
    assert main(["bench", "--frames", "18", "--steps", "1"]) == 2
    assert "divisible by 4" in capsys.readouterr().err
