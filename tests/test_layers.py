"""The direction of imports between the project's packages (README, Layout), read from the source with `ast`.

    utils/                   helpers: imports nothing of the project
    datasets/, model/        import only utils/
    configs/                 the training options and reading a config: utils/, model/, datasets/, solver/
    mllm/                    the MLLM layer THI and RDA share: imports only utils/ (and the image reading below)
    evaluation/              evaluation and reading runs back (configs/ included): no solver/, thi/, rda/, mllm/
    rda/                     no thi/ (both build on mllm/)

Every import counts, those inside functions too (a lazy import is still a dependency), relative ones resolved
against their package.  A failure names the file, the line and the import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the project's top-level names: its packages and its top-level modules (main, test, retrieve)
PROJECT = ({p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
           | {p.stem for p in ROOT.glob("*.py")})

# package -> (the project packages it may import, or None for any; the packages it must not import)
RULES = {
    "utils": (set(), set()),
    "datasets": ({"utils"}, set()),
    "model": ({"utils"}, set()),
    "mllm": ({"utils"}, set()),
    "configs": ({"utils", "model", "datasets", "solver"}, set()),
    "evaluation": (None, {"solver", "thi", "rda", "mllm"}),
    "rda": (None, {"thi"}),
}
# files left out, and why
EXCLUDED: set[str] = set()
# (file, imported module) pairs allowed against the rules above, and why
ALLOWED: set[tuple[str, str]] = set()


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
    if top not in RULES or path in EXCLUDED:
        return []
    allowed, forbidden = RULES[top]
    module = path.removesuffix(".py").replace("/", ".")
    out = []
    for line, name in project_imports(source, module):
        target = name.split(".")[0]
        if target == top or (path, name) in ALLOWED:
            continue
        if target in forbidden or (allowed is not None and target not in allowed):
            may = "nothing of the project" if allowed == set() else (
                ", ".join(sorted(allowed)) if allowed is not None else f"anything but {', '.join(sorted(forbidden))}")
            out.append(f"{path}:{line} imports {name}: {top}/ may import {may}")
    return out


def project_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)).replace("\\", "/") for top in RULES for p in (ROOT / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_every_layer_imports_in_its_direction():
    files = project_files()
    for top in RULES:   # a renamed package must not leave its rule checking nothing
        assert any(f.startswith(f"{top}/") for f in files), f"no Python file under {top}/"
    for path, _ in ALLOWED:
        assert (ROOT / path).is_file(), f"ALLOWED names {path}, which is gone: drop the entry"
    found = [v for f in files for v in violations(f, (ROOT / f).read_text(encoding="utf-8"))]
    assert not found, "imports against the layering (tests/test_layers.py):\n" + "\n".join(found)


@pytest.mark.parametrize("path, source, expected", [
    ("utils/x.py", "import os\nfrom model.clip import CLIP\n", ["utils/x.py:2 imports model.clip"]),
    ("utils/x.py", "def f():\n    import solver.engine\n", ["utils/x.py:2 imports solver.engine"]),
    ("utils/x.py", "from . import files\nfrom .device import autocast\n", []),
    ("model/clip/arch.py", "from ..retrieval import x\nfrom utils import constants\n", []),
    ("model/a.py", "from datasets.loaders import read_image\n", ["model/a.py:1 imports datasets.loaders"]),
    ("mllm/vqa.py", "from .backends import Request\nfrom thi.prompts import P\n", ["mllm/vqa.py:2 imports thi.prompts"]),
    ("rda/pipeline.py", "from mllm.vqa import describe\nimport thi.interaction\n",
     ["rda/pipeline.py:2 imports thi.interaction"]),
    ("evaluation/runs.py", "from model import build_model\nfrom solver import engine\n",
     ["evaluation/runs.py:2 imports solver"]),
    ("utils/options.py", "def f():\n    from model.clip import CLIPConfig\n",   # no exception for options.py
     ["utils/options.py:2 imports model.clip"]),
    ("configs/table.py", "from utils.options import Option\nfrom solver.methods import METHODS\n", []),
    ("configs/table.py", "from evaluation.runs import load_run\n", ["configs/table.py:1 imports evaluation.runs"]),
    ("evaluation/runs.py", "from configs import load_yaml, resolve\n", []),
    ("mllm/cache.py", "from datasets.loaders import ImageDecodeError\n", ["mllm/cache.py:1 imports datasets.loaders"]),
    ("thi/cli.py", "from rda import cli\n", []),                             # thi/ has no rule
])
def test_the_check_itself(path, source, expected):
    found = violations(path, source)
    assert [v.split(": ")[0] for v in found] == expected, found       # 'FILE:LINE imports NAME: why'
    assert all(v.split(": ", 1)[1].startswith(f"{path.split('/')[0]}/ may import") for v in found)
