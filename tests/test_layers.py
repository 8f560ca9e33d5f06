"""The direction of imports between the project's packages (README, Layout), read from the source with `ast`.

    utils/                   helpers: imports nothing of the project
    datasets/, model/        import only utils/
    mllm/                    the MLLM layer THI and RDA share: imports only utils/
    evaluation/              features, similarities, the metrics table: utils/, datasets/, model/
    solver/                  training and assembling a run (solver/build.py): the packages above (no config)
    configs/                 the training options and reading a config: utils/ and the packages whose registries
                             it checks values against (datasets/, model/, solver/)
    inference/               a trained run read back with its config, searched: configs/ and what is below it
    pretraining/             the synthetic CLIP's pretraining and its command: utils/, datasets/, model/, configs/
    reports/                 what a finished run is looked at with (tables, curves, rank lists): only utils/
    thi/, rda/               on mllm/ and the packages above; neither imports the other
    pair_audit/              the dataset audit: the packages above and thi/ (its prompt); solver/ only through
                             pair_audit/division.py, its one door into the division
    webapp/, bench/, main.py, test.py, retrieve.py, app.py: anything

Every import counts, those inside functions too (a lazy import is still a dependency), relative ones resolved
against their package.  A failure names the file, the line and the import; there is no exception.  Over the whole
project, `test_no_import_runs_back_up` checks that no import between packages closes a loop (an arrow back up).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the project's top-level names: its packages and its top-level modules (main, test, retrieve)
PROJECT = ({p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
           | {p.stem for p in ROOT.glob("*.py")})

# package -> the project packages it may import
RULES = {
    "utils": set(),
    "datasets": {"utils"},
    "model": {"utils"},
    "mllm": {"utils"},
    "evaluation": {"utils", "datasets", "model"},
    "solver": {"utils", "datasets", "model", "evaluation"},
    "configs": {"utils", "datasets", "model", "solver"},
    "inference": {"utils", "datasets", "model", "evaluation", "configs"},
    "pretraining": {"utils", "datasets", "model", "configs"},
    "reports": {"utils"},
    "thi": {"utils", "datasets", "model", "mllm", "configs", "evaluation", "solver", "inference"},
    "rda": {"utils", "datasets", "model", "mllm", "configs", "evaluation", "solver", "inference"},
    "pair_audit": {"utils", "datasets", "model", "mllm", "configs", "evaluation", "solver", "inference", "pretraining",
                   "thi"},
}
# modules that alone in their package may import a package: the audit reaches the division through one adapter, so
# that when the division's code moves, that module is all that changes
ONLY_THROUGH = {("pair_audit", "solver"): "pair_audit/division.py"}


def project_imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import of the project in `source`, the module named `module`
    ('pkg.sub.name', or 'pkg.sub' for a package's __init__ given as 'pkg.sub.__init__')."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
                # `from . import x`: x is a module of the package (or a name in its __init__: the package)
                names = [prefix] if node.module else [f"{prefix}.{a.name}" for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in PROJECT]
    return sorted(found)


def violations(path: str, source: str) -> list[str]:
    """What in the file `path` (relative to the root, '/'-separated) breaks RULES."""
    top = path.split("/")[0]
    if top not in RULES:
        return []
    allowed = RULES[top]
    module = path.removesuffix(".py").replace("/", ".")
    may = ", ".join(sorted(allowed)) or "nothing of the project"
    found = []
    for line, name in project_imports(source, module):
        target = name.split(".")[0]
        door = ONLY_THROUGH.get((top, target))
        if target not in allowed | {top}:
            found.append(f"{path}:{line} imports {name}: {top}/ may import {may}")
        elif door is not None and path != door:
            found.append(f"{path}:{line} imports {name}: in {top}/ only {door} imports {target}/")
    return found


def project_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)).replace("\\", "/") for top in RULES for p in (ROOT / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_every_layer_imports_in_its_direction():
    files = project_files()
    for top in RULES:   # a renamed package must not leave its rule checking nothing
        assert any(f.startswith(f"{top}/") for f in files), f"no Python file under {top}/"
    found = [v for f in files for v in violations(f, (ROOT / f).read_text(encoding="utf-8"))]
    assert not found, "imports against the layering (tests/test_layers.py):\n" + "\n".join(found)


def package_imports(sources: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """{(package, package it imports): ['FILE:LINE imports NAME', ...]} of `sources` ({path: source}); a top-level
    module (main.py) is a package of its own."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for path, source in sources.items():
        top = path.split("/")[0].removesuffix(".py")
        for line, name in project_imports(source, path.removesuffix(".py").replace("/", ".")):
            if name.split(".")[0] != top:
                arrows.setdefault((top, name.split(".")[0]), []).append(f"{path}:{line} imports {name}")
    return arrows


def arrows_back_up(arrows: dict[tuple[str, str], list[str]]) -> list[str]:
    """The arrows a -> b that close a loop (b reaches a again), each with where it is written."""
    reaches: dict[str, set[str]] = {}
    for a, b in arrows:
        reaches.setdefault(a, set()).add(b)
    changed = True
    while changed:        # transitive closure; a dozen packages
        changed = False
        for a, seen in reaches.items():
            more = set().union(*(reaches.get(b, set()) for b in seen)) - seen
            if more:
                seen |= more
                changed = True
    return [f"{a} -> {b}: {'; '.join(where)}" for (a, b), where in sorted(arrows.items())
            if a in reaches.get(b, set())]


def test_no_import_runs_back_up():
    """Over the whole project (tests aside), packages and top-level modules form no loop of imports."""
    files = [p for top in PROJECT for p in ([ROOT / f"{top}.py"] if (ROOT / f"{top}.py").is_file()
                                           else (ROOT / top).rglob("*.py")) if "__pycache__" not in p.parts]
    sources = {str(p.relative_to(ROOT)).replace("\\", "/"): p.read_text(encoding="utf-8") for p in files}
    assert {"main.py", "solver/build.py", "configs/table.py"} <= set(sources)
    loops = arrows_back_up(package_imports(sources))
    assert not loops, "imports in a loop between packages (tests/test_layers.py):\n" + "\n".join(loops)


def test_the_loop_check_itself():
    sources = {"configs/table.py": "def f():\n    from solver.methods import METHODS\n",
               "evaluation/runs.py": "from configs import resolve\n",
               "solver/build.py": "from evaluation.evaluator import Evaluator\nimport configs\n",
               "main.py": "from solver.build import build_engine\n"}
    assert [loop.split(":")[0] for loop in arrows_back_up(package_imports(sources))] == \
        ["configs -> solver", "evaluation -> configs", "solver -> configs", "solver -> evaluation"]
    del sources["configs/table.py"]
    assert arrows_back_up(package_imports(sources)) == []


@pytest.mark.parametrize("path, source, expected", [
    ("utils/x.py", "import os\nfrom model.clip import CLIP\n", ["utils/x.py:2 imports model.clip"]),
    ("utils/x.py", "def f():\n    import solver.engine\n", ["utils/x.py:2 imports solver.engine"]),
    ("utils/x.py", "from . import files\nfrom .device import autocast\n", []),
    ("model/clip/arch.py", "from ..retrieval import x\nfrom utils import constants\n", []),
    ("model/a.py", "from datasets.loaders import read_image\n", ["model/a.py:1 imports datasets.loaders"]),
    ("mllm/vqa.py", "from .backends import Request\nfrom thi.prompts import P\n", ["mllm/vqa.py:2 imports thi.prompts"]),
    ("rda/pipeline.py", "from mllm.vqa import describe\nimport thi.interaction\n",
     ["rda/pipeline.py:2 imports thi.interaction"]),
    ("inference/runs.py", "from model import build_model\nfrom solver import engine\n",
     ["inference/runs.py:2 imports solver"]),
    ("evaluation/evaluator.py", "from configs import load_run_config\n", ["evaluation/evaluator.py:1 imports configs"]),
    ("utils/options/cli.py", "def f():\n    from model.clip import CLIPConfig\n",   # no exception for options
     ["utils/options/cli.py:2 imports model.clip"]),
    ("configs/table.py", "from utils.options import Option\nfrom solver.methods import METHODS\n", []),
    ("configs/reading.py", "def f():\n    from inference.runs import load_run\n",
     ["configs/reading.py:2 imports inference.runs"]),
    ("solver/build.py", "import configs\nfrom evaluation.evaluator import Evaluator\n",
     ["solver/build.py:1 imports configs"]),
    ("solver/engine.py", "from pretraining import ensure_for_run\n", ["solver/engine.py:1 imports pretraining"]),
    ("pretraining/__main__.py", "from configs import parse_args\nfrom solver.build import build_engine\n",
     ["pretraining/__main__.py:2 imports solver.build"]),
    ("solver/hooks.py", "from thi.rerank import reranked\n", ["solver/hooks.py:1 imports thi.rerank"]),
    ("configs/table.py", "from inference.runs import load_run\n", ["configs/table.py:1 imports inference.runs"]),
    ("inference/runs.py", "from configs import load_yaml, resolve\n", []),
    ("mllm/cache.py", "from datasets.loaders import ImageDecodeError\n", ["mllm/cache.py:1 imports datasets.loaders"]),
    ("thi/cli.py", "from rda import cli\n", ["thi/cli.py:1 imports rda"]),
    ("webapp/server.py", "from thi.cli import add_thi_args\nimport solver.build\n", []),     # webapp/: anything
    ("pair_audit/division.py", "from solver.methods import METHODS\nfrom thi.prompts import P\n", []),
    ("pair_audit/cli.py", "from evaluation.runs import Run\nfrom solver.division import consensus\n",
     ["pair_audit/cli.py:2 imports solver.division"]),           # the division only through pair_audit/division.py
    ("pair_audit/ranking.py", "from webapp.page import thumbnail_of\n", ["pair_audit/ranking.py:1 imports webapp.page"]),
])
def test_the_check_itself(path, source, expected):
    found = violations(path, source)
    assert [v.split(": ")[0] for v in found] == expected, found       # 'FILE:LINE imports NAME: why'
    assert all(v.split(": ", 1)[1].startswith((f"{path.split('/')[0]}/ may import", f"in {path.split('/')[0]}/ only "))
               for v in found)
