"""Pointers into the code that cannot go stale: every `path.py` (and `path.py name`) that the README, docs/*.md, a
comment or docstring, a YAML or shell comment cites exists, and so does the name it points to in that file.

A path is the project's when its first folder is one of the repository's (solver/engine.py, model/clip/, ...) or,
bare (co_teaching.py), when a file of that name sits beside the citing file or at the root; a path after a
github.com address is another repository's and is left alone.  The name after a path is checked when it is
clearly code: in backticks, with an underscore, dotted (Engine.weigh) or CamelCase (FaultInjection).  A failure
lists file:line and what is missing.  Only text and syntax trees are read: no torch, no project import.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import lru_cache
from pathlib import Path

from tests.test_docs import ROOT, repo_files

TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
# a path, then optionally the name it points to (`name`, name_with_underscore, Class.attr, CamelCase)
POINTER = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b(?:\s+(`?)([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)(`?))?")
CAMEL = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+")
# another repository's file: after its address or commit on the same or the line before, or its owner's ('IRRA's)
ELSEWHERE = re.compile(r"github\.com/|\bcommit [0-9a-f]{7}|\w's\s+$")
PLACEHOLDER = re.compile(r"(?:.*/)?(?:[A-Z]+|x)\.py")       # model/losses/NAME.py, bench/x.py: a template


def prose(path: Path) -> list[tuple[int, str]]:
    """(first line, text) of what a reader reads as prose: a .py file's comments and docstrings, all of the others."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".py":
        return [(1, text)]
    out = []
    try:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    out.append((first.lineno, first.value.value))
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                out.append((token.start[0], token.string))
    except (SyntaxError, tokenize.TokenError):
        return [(1, text)]
    return out


@lru_cache(maxsize=None)
def source(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def defines(text: str, name: str) -> bool:
    """Whether a file's text defines `name` (def, class, an assignment, an attribute set on self), not only uses or
    imports it."""
    n = re.escape(name)
    return bool(re.search(rf"^\s*(?:async\s+def|def|class)\s+{n}\b|^\s*{n}\s*(?::[^=\n]*)?=|"
                          rf"^\s*(?:\w+\s*,\s*)*{n}\s*(?:,\s*\w+\s*)*=[^=]|self\.{n}\s*=[^=]", text, re.M))


def is_code_name(name: str, backticked: bool) -> bool:
    return bool(name) and (backticked or "_" in name or "." in name or bool(CAMEL.fullmatch(name)))


def resolve(cited: str, where: Path) -> Path | None | bool:
    """The cited file; None when it is the project's and missing; False when it is not the project's to check."""
    if "/" in cited:
        if cited.split("/")[0] not in TOP:
            return False
        return ROOT / cited if (ROOT / cited).is_file() else None
    for folder in (where.parent, ROOT):
        if (folder / cited).is_file():
            return folder / cited
    return False        # a bare name found neither beside the citing file nor at the root: another project's


def stale_pointers() -> list[str]:
    problems = []
    for path in repo_files():
        rel = path.relative_to(ROOT)
        for first_line, text in prose(path):
            for m in POINTER.finditer(text):
                before = text[text.rfind("\n", 0, max(text.rfind("\n", 0, m.start()), 0)) + 1:m.start()]
                if ELSEWHERE.search(before) or PLACEHOLDER.fullmatch(m.group(1)):
                    continue
                cited, tick, name, close = m.group(1), m.group(2), m.group(3), m.group(4)
                line = first_line + text.count("\n", 0, m.start())
                target = resolve(cited, path)
                if target is False:
                    continue
                if target is None:
                    problems.append(f"{rel}:{line} cites {cited}, which does not exist")
                    continue
                if is_code_name(name or "", bool(tick and close)):
                    missing = [part for part in name.split(".") if not defines(source(target), part)]
                    if missing:
                        problems.append(f"{rel}:{line} cites {cited} {name}: {cited} has no {missing[0]}")
    return problems


def test_every_cited_path_and_name_exists():
    problems = stale_pointers()
    assert not problems, f"{len(problems)} stale pointer(s):\n  " + "\n  ".join(problems)


def test_the_check_finds_a_stale_pointer(tmp_path, monkeypatch):
    """The check itself: a missing file and a missing name are found, a present one and another project's are not."""
    import tests.test_pointers as me
    (tmp_path / "solver").mkdir()
    (tmp_path / "solver" / "objective.py").write_text("def weighted_loss():\n    pass\n")
    (tmp_path / "solver" / "engine.py").write_text("from .objective import weighted_loss\n")
    (tmp_path / "README.md").write_text(
        "see solver/objective.py `weighted_loss` and solver/engine.py weighted_loss and solver/objective.py "
        "FaultInjection; github.com/x/y `solver/other.py`\n\nand solver/old.py\n")
    monkeypatch.setattr(me, "ROOT", tmp_path)
    monkeypatch.setattr(me, "TOP", {"solver", "README.md"})
    monkeypatch.setattr(me, "repo_files", lambda: [tmp_path / "README.md"])
    assert me.stale_pointers() == [
        "README.md:1 cites solver/engine.py weighted_loss: solver/engine.py has no weighted_loss",   # only imports it
        "README.md:1 cites solver/objective.py FaultInjection: solver/objective.py has no FaultInjection",
        "README.md:3 cites solver/old.py, which does not exist"]
