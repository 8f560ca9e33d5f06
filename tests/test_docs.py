"""docs/METHOD.md, the page the code cites by section, read against the repository.

    - the file exists and its numbered headings are well formed (unique, each subsection under its section);
    - every citation of it in *.py, *.md, *.yaml and *.sh files names it by its path, `docs/METHOD.md`, and
      by section with `§` (`docs/METHOD.md §4.3`, `§2-§5`, `§7 and §8`), and every section it names exists;
      a failure lists file:line for each bad citation;
    - the page's own `§N` cross-references exist;
    - the defaults table of §5.3 agrees with the options' defaults in the code (read with `ast`, nothing is
      imported) and with what every recipe's YAML file sets (configs/rde, configs/icl, configs/3rtpr);
    - every row of a `value | code` table (§1.8, §7.2) agrees with the constant or command-line default it names;
    - the published numbers of §9 are exactly those of reports/published_results.yaml, each with its source.

Only text and syntax trees are read: no torch, no project import.
"""
from __future__ import annotations

import ast
import math
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "METHOD.md"
DOC_PATH = "docs/METHOD.md"
SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh")
# folders a clone may hold that are not the project's source (data, runs, environments)
SKIP_DIRS = {".git", "__pycache__", "data", "logs", "runs", ".pytest_cache", ".whl", ".cache", "node_modules"}
THIS = Path(__file__).resolve()

NUMBER = r"\d+(?:\.\d+)*"
HEADING = re.compile(rf"^(#{{2,6}})\s+({NUMBER})\.?\s+\S")
# what may follow the file name in a citation: §N, then more §N joined by a comma, 'and', 'to' or a dash
SECTIONS_AFTER = re.compile(rf"^(?:\s*(?:,|and|or|to|-|–)?\s*§\s*{NUMBER})+")
OLD_STYLE = re.compile(r"^(?:'s)?\s*(?:sections?\s+\d|\d)")
SECTION = re.compile(rf"§\s*({NUMBER})")
RANGE = re.compile(rf"§\s*({NUMBER})\s*(?:-|–|to)\s*§?\s*({NUMBER})")


# ------------------------------------------------------------------ reading
def doc_text() -> str:
    if not DOC.is_file():
        pytest.fail(f"{DOC_PATH} is missing: the code cites it by section")
    return DOC.read_text(encoding="utf-8")


def headings(text: str) -> list[tuple[int, str, int]]:
    """(line number, section number, heading level) of each numbered heading."""
    return [(i, m.group(2), len(m.group(1))) for i, line in enumerate(text.splitlines(), 1)
            if (m := HEADING.match(line))]


def section_numbers() -> set[str]:
    return {number for _, number, _ in headings(doc_text())}


def repo_files() -> list[Path]:
    """The repository's text files of the cited kinds: git's list (tracked and untracked, not ignored) when
    there is one, otherwise a walk that leaves out data, runs and hidden folders."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True, timeout=20).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        paths = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
            paths += [Path(folder) / f for f in files]
    return sorted(p for p in paths if p.suffix in SUFFIXES and p.is_file() and p.resolve() != THIS)


def cited(spec: str) -> list[str]:
    """The sections a citation's '§...' part names; a range of whole sections (§2-§5) names each one."""
    numbers = SECTION.findall(spec)
    for lo, hi in RANGE.findall(spec):
        if lo.isdigit() and hi.isdigit():
            numbers += [str(n) for n in range(int(lo), int(hi) + 1)]
    return numbers


def citations() -> tuple[list[tuple[str, str]], list[str]]:
    """([(file:line, section)], [file:line: problem]) over every mention of METHOD.md in the repository."""
    found, problems = [], []
    for path in repo_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "METHOD.md" not in text:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(text.splitlines(), 1):
            for m in re.finditer(r"METHOD\.md", line):
                where = f"{rel}:{n}"
                if not line[:m.start()].endswith(DOC_PATH[:-len("METHOD.md")]):
                    problems.append(f"{where}: cite the file by its path, {DOC_PATH} (a clone has no other)")
                rest = line[m.end():]
                spec = SECTIONS_AFTER.match(rest)
                if spec:
                    found += [(where, s) for s in cited(spec.group(0))]
                elif OLD_STYLE.match(rest):
                    problems.append(f"{where}: write the section as {DOC_PATH} §N, not {line[m.start():][:30]!r}")
    return found, problems


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(the section the table is in, header cells, rows of cells) of every markdown table; `\\|` is a pipe."""
    out, section, block = [], "", []

    def flush():
        if len(block) >= 2:
            out.append((section, block[0], [r for r in block[2:]]))
        block.clear()

    for line in text.splitlines():
        if m := HEADING.match(line):
            section = m.group(2)
        if line.startswith("|"):
            cells = [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            block.append(cells)
        else:
            flush()
    flush()
    return out


def table_with(*columns: str) -> list[tuple[list[str], list[list[str]]]]:
    found = [(header, rows) for _, header, rows in tables(doc_text())
             if all(any(c == h.lower() for h in header) for c in columns)]
    if not found:
        pytest.fail(f"{DOC_PATH} has no table with the columns {', '.join(columns)}")
    return found


# ------------------------------------------------------------------ values
def plain(cell: str) -> str:
    return cell.strip().strip("`").strip()


def same(cell: str, value) -> bool:
    """Whether a table cell says `value`: numbers as numbers (1e-3 = 0.001), lists as comma-separated."""
    cell = plain(cell)
    if isinstance(value, bool):
        return cell.lower() == str(value).lower()
    if isinstance(value, (list, tuple)):
        if not value:
            return cell == "[]"
        parts = [p.strip() for p in cell.split(",")]
        return len(parts) == len(value) and all(same(p, v) for p, v in zip(parts, value))
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(cell), float(value), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return cell == str(value)


@lru_cache(maxsize=None)
def syntax(rel: str) -> ast.Module:
    path = ROOT / rel
    if not path.is_file():
        pytest.fail(f"{DOC_PATH} names {rel}, which does not exist")
    return ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def module_constants(rel: str) -> dict[str, object]:
    """Module-level NAME = literal (and A, B = 1, 2) assignments of a file."""
    consts = {}
    for node in syntax(rel).body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                pairs = [(target, node.value)]
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            else:
                continue
            for name, value in pairs:
                if isinstance(name, ast.Name):
                    try:
                        consts[name.id] = ast.literal_eval(value)
                    except ValueError:
                        pass
    return consts


def code_value(ref: str):
    """The value a `code` cell names: `path.py NAME`, `path.py NAME[key]` or `path.py --flag` (an
    add_argument default; a module constant as default is resolved)."""
    rel, _, name = plain(ref).partition(" ")
    if name.startswith("--"):
        consts = module_constants(rel)
        defaults = set()
        for node in ast.walk(syntax(rel)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value == name):
                for kw in node.keywords:
                    if kw.arg != "default":
                        continue
                    if isinstance(kw.value, ast.Name) and kw.value.id not in consts:
                        pytest.fail(f"{ref}: its default {kw.value.id} is not a literal constant of {rel}")
                    defaults.add(repr(consts[kw.value.id]) if isinstance(kw.value, ast.Name)
                                 else repr(ast.literal_eval(kw.value)))
        if len(defaults) != 1:
            pytest.fail(f"{ref}: expected one add_argument({name!r}, default=...) in {rel}, found {len(defaults)}")
        return ast.literal_eval(defaults.pop())
    m = re.fullmatch(r"(\w+)(?:\[([^\]]+)\])?", name)
    consts = module_constants(rel)
    if not m or m.group(1) not in consts:
        pytest.fail(f"{ref}: {rel} has no module-level constant {name!r}")
    value = consts[m.group(1)]
    if m.group(2) is not None:
        key = m.group(2).strip("'\"")
        if not isinstance(value, dict) or key not in value:
            pytest.fail(f"{ref}: {m.group(1)} has no key {key!r}")
        value = value[key]
    return value


def is_option(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Option" and node.args


@lru_cache(maxsize=None)
def option_defaults() -> dict[str, object]:
    """{option name: default} of every training option: `"name": Option(default, ...)` entries of dicts in
    configs/, model/ and solver/, and `"name": CONST` where CONST = Option(default, ...) (model/losses/common.py)."""
    rels = sorted(p.relative_to(ROOT).as_posix() for d in ("configs", "model", "solver")
                  for p in (ROOT / d).rglob("*.py"))
    consts = {}
    for rel in rels:
        for node in syntax(rel).body:
            if isinstance(node, ast.Assign) and is_option(node.value):
                consts.update({t.id: ast.literal_eval(node.value.args[0]) for t in node.targets
                               if isinstance(t, ast.Name)})
    found: dict[str, object] = {}
    for rel in rels:
        for node in ast.walk(syntax(rel)):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values):
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    continue
                if is_option(value):
                    found[key.value] = ast.literal_eval(value.args[0])
                elif isinstance(value, ast.Name) and value.id in consts:
                    found[key.value] = consts[value.id]
    return found


@lru_cache(maxsize=None)
def recipe_files(folder: str) -> tuple[tuple[str, dict], ...]:
    files = sorted((ROOT / folder).glob("*.yaml"))
    if not files:
        pytest.fail(f"{DOC_PATH} §5.3 has a column {folder}, which holds no YAML file")
    out = []
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        while "_BASE_" in data:
            base = yaml.safe_load((path.parent / data.pop("_BASE_")).read_text(encoding="utf-8")) or {}
            data = {**base, **data}
        out.append((path.relative_to(ROOT).as_posix(), data))
    return tuple(out)


def per_dataset(cell: str) -> tuple[str, dict[str, str]]:
    """'77 (UFine6926: 168)' -> ('77', {'UFine6926': '168'})."""
    overrides = dict(re.findall(r"([A-Za-z0-9-]+):\s*([^,;()]+?)\s*(?=[,;)]|$)", cell))
    return re.sub(r"\s*\(.*\)\s*$", "", cell).strip(), overrides


# ------------------------------------------------------------------ tests
def test_headings_are_well_formed():
    found = headings(doc_text())
    numbers = [n for _, n, _ in found]
    assert found, f"{DOC_PATH} has no numbered headings (## 1. Data, ### 1.1 ...)"
    problems = [f"{DOC_PATH}:{line}: section {n} appears twice" for line, n, _ in found if numbers.count(n) > 1]
    for line, n, level in found:
        if level != 1 + n.count(".") + 1:
            problems.append(f"{DOC_PATH}:{line}: section {n} is a level-{level} heading; expected "
                            f"{'#' * (2 + n.count('.'))}")
        if "." in n and n.rsplit(".", 1)[0] not in numbers:
            problems.append(f"{DOC_PATH}:{line}: section {n} has no parent section {n.rsplit('.', 1)[0]}")
    tops = sorted(int(n) for n in numbers if "." not in n)
    if tops != list(range(1, len(tops) + 1)):
        problems.append(f"{DOC_PATH}: top-level sections are {tops}, not 1..{len(tops)}")
    assert not problems, "\n".join(problems)


def test_every_citation_names_an_existing_section():
    sections = section_numbers()
    found, problems = citations()
    problems += [f"{where}: cites {DOC_PATH} §{s}, which has no such section" for where, s in found
                 if s not in sections]
    assert found, f"no file cites {DOC_PATH} by section; the search for citations is broken"
    assert not problems, "\n".join(problems)


def test_cross_references_inside_the_page_exist():
    sections = section_numbers()
    problems = [f"{DOC_PATH}:{n}: §{s} has no such section"
                for n, line in enumerate(doc_text().splitlines(), 1) for s in cited(line) if s not in sections]
    assert not problems, "\n".join(problems)


def test_recipe_defaults_table_agrees_with_the_code_and_the_recipes():
    [(header, rows)] = table_with("option", "code default")
    lower = [h.lower() for h in header]
    recipes = [(i, h) for i, h in enumerate(header) if h.startswith("configs/")]
    assert recipes, f"{DOC_PATH} §5.3: the defaults table has no configs/... column"
    code = option_defaults()
    problems, listed = [], set()
    for row in rows:
        option, default_cell = row[lower.index("option")], row[lower.index("code default")]
        listed.add(option)
        if option not in code:
            problems.append(f"§5.3 {option}: no option of that name in configs/, model/ or solver/")
            continue
        if not same(default_cell, code[option]):
            problems.append(f"§5.3 {option}: code default {code[option]!r}, the table says {default_cell!r}")
        for i, folder in recipes:
            cell = row[i]
            for rel, data in recipe_files(folder):
                if plain(cell) in ("-", "—"):
                    if option in data:
                        problems.append(f"§5.3 {option}: {rel} sets {data[option]!r}, the table says it plays no part")
                    continue
                base, overrides = per_dataset(cell)
                expected = overrides.get(data.get("dataset_name"), base)
                actual = data.get(option, code[option])
                if not same(expected, actual):
                    problems.append(f"§5.3 {option}: {rel} runs with {actual!r}, the table says {expected!r}")
    # every option a recipe sets is in the table (the run's name, data and method are not defaults)
    not_defaults = {"name", "dataset_name", "root_dir", "pretrain_choice", "method"}
    for _, folder in recipes:
        for rel, data in recipe_files(folder):
            problems += [f"§5.3: {rel} sets {k}, which the defaults table does not list"
                         for k in data if k not in listed | not_defaults]
    assert not problems, "\n".join(problems)


def test_value_tables_agree_with_the_code():
    problems, checked = [], 0
    for header, rows in table_with("value", "code"):
        lower = [h.lower() for h in header]
        for row in rows:
            value, ref = row[lower.index("value")], row[lower.index("code")]
            actual = code_value(ref)
            checked += 1
            if not same(value, actual):
                problems.append(f"{DOC_PATH}: {row[0]!r} is {value!r} in the table, {actual!r} in {plain(ref)}")
    assert checked >= 10, f"only {checked} rows of value | code tables were found"
    assert not problems, "\n".join(problems)


METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def test_published_numbers_are_those_of_published_results_yaml():
    [(header, rows)] = table_with("method", "dataset", "noise", "source")
    lower = [h.lower() for h in header]
    column = {h: lower.index(h.lower()) for h in ("method", "dataset", "noise", "source", *METRICS)}
    doc = {}
    for row in rows:
        key = (row[column["method"]], row[column["dataset"]], float(row[column["noise"]]))
        assert key not in doc, f"{DOC_PATH} §9: {key} appears twice"
        doc[key] = {"source": row[column["source"]],
                    **{m: float(row[column[m]]) for m in METRICS if plain(row[column[m]]) not in ("-", "—")}}
    published = yaml.safe_load((ROOT / "reports" / "published_results.yaml").read_text(encoding="utf-8"))
    ours = {(r["method"], r["dataset"], float(r["noisy_rate"])):
            {"source": r["source"], **{m: float(r[m]) for m in METRICS if m in r}} for r in published["results"]}
    problems = [f"§9 lacks {k} of reports/published_results.yaml" for k in ours if k not in doc]
    problems += [f"§9 has {k}, which reports/published_results.yaml lacks" for k in doc if k not in ours]
    problems += [f"§9 {k}: {doc[k]} but reports/published_results.yaml says {ours[k]}"
                 for k in ours if k in doc and doc[k] != ours[k]]
    # each source is one of the works the page lists (its first table's short names)
    works = {row[0] for header, rows in table_with("short name", "work") for row in rows}
    problems += [f"source {s} of reports/published_results.yaml is not in the page's table of works"
                 for s in published["sources"] if s not in works]
    assert not problems, "\n".join(problems)
