"""The README's "Layout" section matches the tree: every file or folder it names exists, and
every module of refdiff/ (and of refdiff/conformance/) and every room of tests/ is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def _named() -> tuple[set[str], set[str]]:
    block = _layout()
    files = set(re.findall(r"(?<![\w/])(_?\w+\.py)\b", block))
    folders = set(re.findall(r"(?:^|\s)(\w+)/(?=\s|$)", block, flags=re.M))
    return files, folders


def test_everything_the_layout_names_exists():
    files, folders = _named()
    places = [ROOT / "refdiff", ROOT / "refdiff" / "conformance", ROOT / "export", ROOT / "tests"]
    missing = [f for f in sorted(files) if not any((p / f).is_file() for p in places)]
    dirs = [ROOT, ROOT / "refdiff", ROOT / "tests"]
    missing += [f"{d}/" for d in sorted(folders) if not any((p / d).is_dir() for p in dirs)]
    assert not missing, f"README Layout names what is not in the tree: {missing}"


def test_the_layout_names_every_module_and_test_room():
    files, folders = _named()
    modules = {
        p.name
        for d in (ROOT / "refdiff", ROOT / "refdiff" / "conformance")
        for p in d.glob("*.py")
        if p.name != "__init__.py"
    }
    rooms = {p.name for p in (ROOT / "tests").iterdir() if (p / "__init__.py").is_file()}
    unnamed = sorted(modules - files) + sorted(f"tests/{r}/" for r in rooms - folders)
    assert not unnamed, f"README Layout does not name: {unnamed}"
