"""The docs are code: every Python block of the user-facing docs runs as written.

Each ```python block of README.md, docs/*.md and experiments/README.md is written to a
file of its own and run in a fresh interpreter (its own imports, nothing shared with
the other blocks), from an empty working folder. A block preceded by the line
`<!-- docs-test: slow -->` is marked slow (`pytest -m slow`, CI's second step).
Also checked: the README starts with the two set-up commands, and `.ci/run` runs both.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
if (ROOT / "experiments" / "README.md").exists():
    DOC_FILES.append(ROOT / "experiments" / "README.md")
SLOW_MARKER = "<!-- docs-test: slow -->"
FENCE = re.compile(r"^```(\w*)\s*$")


class Block(NamedTuple):
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    slow: bool


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the slow marker read off."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group(1):
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: code block is never closed")
        before = [line for line in lines[:start] if line.strip()]
        slow = bool(before) and before[-1].strip() == SLOW_MARKER
        code = "\n".join(lines[start + 1 : i]) + "\n"
        blocks.append(Block(path, start + 1, match.group(1), code, slow))
        i += 1
    return blocks


def python_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in fenced_blocks(path) if b.language == "python"]


def _param(block: Block):
    name = f"{block.path.relative_to(ROOT)}:{block.line}"
    marks = [pytest.mark.slow] if block.slow else []
    return pytest.param(block, id=name, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in python_blocks()])
def test_python_block_runs_as_written(block: Block, tmp_path: Path):
    script = tmp_path / "block.py"
    script.write_text(block.code)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    where = f"{block.path.relative_to(ROOT)}, block at line {block.line}"
    assert result.returncode == 0, (
        f"{where} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-6000:]}"
    )


def test_every_doc_file_has_runnable_blocks_and_the_guides_exist():
    names = {p.relative_to(ROOT).as_posix() for p in DOC_FILES}
    assert {"README.md", "docs/continual-inference.md"} <= names
    blocks = python_blocks()
    counts = {p.relative_to(ROOT).as_posix(): sum(b.path == p for b in blocks) for p in DOC_FILES}
    assert counts["README.md"] >= 2, counts
    assert counts["docs/continual-inference.md"] >= 1, counts


def test_fenced_blocks_reads_languages_lines_and_the_slow_marker(tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# t\n\n```bash\nls\n```\n\n<!-- docs-test: slow -->\n\n```python\nx = 1\n```\n"
        "text\n```python\ny = 2\n```\n"
    )
    blocks = fenced_blocks(doc)
    assert [(b.language, b.line, b.code, b.slow) for b in blocks] == [
        ("bash", 3, "ls\n", False),
        ("python", 9, "x = 1\n", True),
        ("python", 13, "y = 2\n", False),
    ]
    doc.write_text("```python\nx = 1\n")
    with pytest.raises(AssertionError, match="never closed"):
        fenced_blocks(doc)


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_them():
    first = fenced_blocks(ROOT / "README.md")[0]
    assert first.language == "bash", "the README must open with its set-up commands"
    commands = first.code.strip().splitlines()
    assert len(commands) == 2, f"exactly two set-up commands, got {commands}"
    install, test = commands
    assert install.startswith("pip install -e ") and "python -m cojax" in install
    assert test.startswith("pytest "), test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci, f".ci/run must run the README's install command: {install}"
    assert test in ci, f".ci/run must run the README's test command: {test}"


REPO_PATH = re.compile(
    r"\b((?:docs|experiments|tests|cojax|conversion)/[\w./-]+\.(?:md|py|json|png))"
)


def _repo_texts() -> list[Path]:
    """The docs and every Python file of the repo."""
    files = list(DOC_FILES)
    for folder in ("cojax", "conversion", "tests", "experiments"):
        files += (ROOT / folder).rglob("*.py")
    return files


def test_docs_and_docstrings_cite_only_files_in_the_repo():
    missing, outside = [], []
    for path in _repo_texts():
        text = path.read_text()
        where = path.relative_to(ROOT)
        for match in REPO_PATH.finditer(text):
            if not (ROOT / match.group(1)).exists():
                missing.append(f"{where}: {match.group(1)}")
        if path.name != "test_docs.py" and re.search(r"specs/|DESIGN\.md", text):
            outside.append(str(where))
    assert not missing, f"references to files that do not exist: {missing}"
    assert not outside, f"references to the spec files outside the repo: {outside}"


def test_tests_do_not_import_experiments():
    """What a test needs lives in the library; experiments are run as scripts."""
    experiments = {p.stem for p in (ROOT / "experiments").glob("*.py")}
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        imported = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", text, re.MULTILINE))
        roots = {name.split(".")[0] for name in imported}
        if "experiments" in roots or roots & experiments:
            offenders.append(path.name)
        elif re.search(r"sys\.path\.\w+\(.*experiments", text):
            offenders.append(path.name)
    assert not offenders, f"tests that import experiments/: {offenders}"
