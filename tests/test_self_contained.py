"""The repository is complete by itself: no file refers to a path or a document outside it.

A user clones the project alone, so code, tests, benchmarks, CI and docs that reach above the
repository root (``../``, ``Path(__file__).parents[k]`` past the root, this machine's absolute
paths) or cite a markdown document the repository does not hold would fail or confuse them.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["sttr_fast", "kernels", "tests", "bench", ".ci", "configs", "docs", "setup.py", "README.md"]
TEXT_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".md", ".txt", ".cfg", ".toml", ""}

UP_THE_TREE = re.compile(r"\.\./")
ABSOLUTE_MACHINE_PATH = re.compile(r"(?<![\w.])/(work|root|home)/")
PARENTS_INDEX = re.compile(r"\.parents\[(\d+)\]")
PARENT_CHAIN = re.compile(r"(?:\.parent\b)+")
MARKDOWN_NAME = re.compile(r"[\w./-]*\b[\w-]+\.md\b")
SECTION_OF_A_SPEC = re.compile(r"\bspec\s*§")


def checked_files() -> list[Path]:
    files = []
    for name in CHECKED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [f for f in candidates if f.is_file() and f.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in f.parts and ".egg-info" not in str(f)
                  and f.resolve() != Path(__file__).resolve()]
    return files


def markdown_documents() -> set[str]:
    return {path.name for path in ROOT.rglob("*.md") if ".git" not in path.parts}


def problems_in(path: Path, root: Path, documents: set[str]) -> list[str]:
    relative = path.relative_to(root)
    # Path(__file__).parents[k] is the repository root for k = depth - 1; anything larger is outside.
    deepest_inside = len(relative.parts) - 1
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{relative}:{number}"
        if UP_THE_TREE.search(line):
            found.append(f"{where}: a path that climbs above its folder: {line.strip()}")
        if ABSOLUTE_MACHINE_PATH.search(line):
            found.append(f"{where}: an absolute path of this machine: {line.strip()}")
        for match in PARENTS_INDEX.finditer(line):
            if "__file__" in line and int(match.group(1)) > deepest_inside:
                found.append(f"{where}: parents[{match.group(1)}] leaves the repository")
        for match in PARENT_CHAIN.finditer(line):
            if "__file__" in line and match.group(0).count(".parent") - 1 > deepest_inside:
                found.append(f"{where}: a .parent chain that leaves the repository")
        for match in MARKDOWN_NAME.finditer(line):
            if Path(match.group(0)).name not in documents:
                found.append(f"{where}: cites {match.group(0)}, which the repository does not hold")
        if SECTION_OF_A_SPEC.search(line):
            found.append(f"{where}: cites a section of a spec the repository does not hold")
    return found


def test_no_file_refers_outside_the_repository():
    documents = markdown_documents()
    files = checked_files()
    assert len(files) > 50, "the walk found too few files to be looking at the repository"
    problems = [problem for path in files for problem in problems_in(path, ROOT, documents)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line, relative, expected", [
    ('KEYS = Path(__file__).parents[2] / "outside/spec"', "tests/test_x.py", "leaves the repository"),
    ('KEYS = Path(__file__).parents[1] / "tests/data"', "tests/test_x.py", None),
    ("ROOT = Path(__file__).parent.parent.parent", "tests/test_x.py", "leaves the repository"),
    ("ROOT = Path(__file__).parent.parent", "tests/test_x.py", None),
    ('open("../outside/spec/STTR.md")', "sttr_fast/x.py", "climbs above"),
    ("# see DATA.md §2", "sttr_fast/x.py", "does not hold"),
    ("# see docs/data.md", "sttr_fast/x.py", None),
    ("# heads are contiguous chunks (spec §4)", "kernels/x.py", "spec"),
    ('cache = "/work/venv/bin"', "bench/x.sh", "absolute path"),
])
def test_the_checker_catches_what_it_is_for(tmp_path, line, relative, expected):
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(line + "\n")
    problems = problems_in(path, tmp_path, {"data.md", "README.md"})
    if expected is None:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems
