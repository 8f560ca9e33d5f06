"""Runs beside the published tables: python -m reports.tables logs/ [more folders] [--paper [DATASET]]

Collects every run folder under the given folders (configs.yaml + metrics.jsonl, written by main.py) and every
THI result (OUT/metrics.json, written by python -m thi), and prints one table per dataset and noise rate:
R1 / R5 / R10 / mAP / mINP of the best and the last evaluation of each recipe (the headline row: BGE+TSE, or the
twins' ensemble), as mean +- standard deviation over seeds when several runs share a recipe (runs that differ
only in seed, run folder, device or data location).  THI runs give a row before and a row after re-ranking.
With --paper, the published rows of that dataset and noise rate follow (reports/published_results.yaml, with
their sources), and each of our rows gets its difference to the published method it reproduces (column `vs`).
Markdown and LaTeX (--format), printed or written to --out PREFIX.md / PREFIX.tex.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

import yaml

from utils.epochs import final_epoch
from utils.metrics import METRIC_NAMES
from utils.run_folder import METRICS, read_metrics

PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_results.yaml")
# Options that do not change what a run learns: runs differing only in these are seeds of one recipe.
NOT_RECIPE = {"seed", "run_dir", "output_dir", "resume", "name", "device", "num_workers", "test_batch_size",
              "log_period", "eval_period", "root_dir", "noisy_file", "compile", "image_cache", "image_cache_dir"}
# The synthetic set is written in CUHK-PEDES's format: that table is shown for the layout, its differences
# measure nothing.
STAND_IN = {"SYNTH-PEDES": "CUHK-PEDES"}


# ---------------------------------------------------------------- reading
@dataclass
class Result:
    """One run folder's best and last evaluation, or one THI output's before and after."""
    path: str
    dataset: str
    noisy_rate: float | None
    recipe: tuple                    # what must be equal for runs to be seeds of each other
    name: str
    reference: str                   # the published method this recipe reproduces
    rows: dict[str, dict]            # "best" / "last" (or "THI before" / "THI after") -> metrics
    epochs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def reference_method(cfg: dict, thi: bool = False) -> str:
    """The published row a recipe is compared with (names as in published_results.yaml)."""
    losses = str(cfg.get("loss_names", "")).split("+")
    reid_init = "pre" in losses or bool(cfg.get("pretrain_path"))
    if thi:
        return "ICL with THI, ReID-pretrained init" if reid_init else "ICL with THI"
    if cfg.get("anno_path"):          # ICL's RDA captions come as another annotation file
        return "ICL without THI (RDE + RDA)"
    if list(cfg.get("embeddings", [])) == ["bge"] and ("SDM" in losses or "ID" in losses):
        return "IRRA"
    if cfg.get("method") in ("twins", "twins_release"):     # no public text gives 3RTPR's numbers: no paper row
        return "3RTPR"
    return "RDE"


def _recipe(cfg: dict) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in cfg.items() if k not in NOT_RECIPE))


def read_run(run_dir: str) -> Result | None:
    with open(os.path.join(run_dir, "configs.yaml")) as f:
        cfg = yaml.safe_load(f) or {}
    records = read_metrics(os.path.join(run_dir, METRICS))
    evaluated = [r for r in records if all(m in r for m in METRIC_NAMES)]
    if not evaluated:
        return None
    best = max(evaluated, key=lambda r: r["R1"])      # the first maximum, as main.py picks best.pth
    last = evaluated[-1]
    result = Result(run_dir, cfg.get("dataset_name", "?"), float(cfg.get("noisy_rate", 0.0)), _recipe(cfg),
                    cfg.get("name", os.path.basename(run_dir)), reference_method(cfg),
                    {"best": {m: best[m] for m in METRIC_NAMES}, "last": {m: last[m] for m in METRIC_NAMES}},
                    {"best": best["epoch"], "last": last["epoch"]})
    if cfg.get("num_epoch") and last["epoch"] < final_epoch(cfg):
        result.notes.append(f"{os.path.basename(run_dir)} stopped at epoch {last['epoch']} of "
                            f"{final_epoch(cfg)}")
    return result


def read_thi(path: str) -> Result | None:
    """THI's metrics.json: the first row is the base ranking, the last the final round."""
    with open(path) as f:
        data = json.load(f)
    rows = data.get("metrics") or {}
    if len(rows) < 2:
        return None
    out_dir = os.path.dirname(path)
    run_config = os.path.join(os.path.dirname(out_dir), "configs.yaml")
    cfg = {}
    if os.path.isfile(run_config):                    # RUN_DIR/thi/metrics.json
        with open(run_config) as f:
            cfg = yaml.safe_load(f) or {}
    dataset = cfg.get("dataset_name") or data.get("dataset_name", "?")
    checkpoint = data.get("checkpoint", "")
    name = cfg.get("name") or " + ".join(os.path.basename(str(c)) for c in
                                         (checkpoint if isinstance(checkpoint, list) else [checkpoint]))
    settings = {k: data.get(k) for k in ("rounds", "xi", "lam", "queries", "model_id")}
    recipe = _recipe(cfg) + (("thi", json.dumps(settings, sort_keys=True)),) if cfg else (("thi_out", out_dir),)
    (before, first), (after, last) = list(rows.items())[0], list(rows.items())[-1]
    result = Result(out_dir, dataset, float(cfg["noisy_rate"]) if "noisy_rate" in cfg else None, recipe,
                    f"{name} + THI", reference_method(cfg, thi=True),
                    {f"THI before: {before}": {m: first[m] for m in METRIC_NAMES},
                     f"THI after: {after}": {m: last[m] for m in METRIC_NAMES}})
    result.notes.append(f"{out_dir}: THI on {data.get('queries', '?')} queries"
                        f" (K={data.get('rounds')}, xi={data.get('xi')}, lam={data.get('lam')})")
    return result


def find_results(roots: list[str]) -> list[Result]:
    results = []
    for root in roots:
        if not os.path.isdir(root):
            raise SystemExit(f"{root}: no such folder (give folders holding run folders, e.g. logs/)")
        for folder, _, files in sorted(os.walk(root)):
            if "configs.yaml" in files and "metrics.jsonl" in files:
                result = read_run(folder)
            elif "metrics.json" in files:
                result = read_thi(os.path.join(folder, "metrics.json"))
            else:
                continue
            if result is not None:
                results.append(result)
    return results


def load_published(path: str = PUBLISHED_FILE) -> tuple[dict, list[dict]]:
    with open(path) as f:
        data = yaml.safe_load(f)
    return data["sources"], data["results"]


# ---------------------------------------------------------------- grouping and statistics
@dataclass
class Row:
    label: str
    n: int
    mean: dict[str, float]
    std: dict[str, float | None]
    reference: str | None = None
    delta: dict[str, float | None] = field(default_factory=dict)
    source: str | None = None        # published rows: the key of their paper in published_results.yaml


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no deviation from one run."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _labels(groups: list[list[Result]]) -> list[str]:
    """Recipe names, with the options that tell recipes of one name apart when several share it."""
    names = [g[0].name for g in groups]
    labels = []
    for i, g in enumerate(groups):
        same = [h for j, h in enumerate(groups) if names[j] == names[i] and j != i]
        if not same:
            labels.append(names[i])
            continue
        mine = dict(g[0].recipe)
        differ = sorted(k for h in same for k, v in dict(h[0].recipe).items() if mine.get(k) != v)
        extra = ", ".join(f"{k}={json.loads(mine[k]) if k in mine else '-'}" for k in dict.fromkeys(differ))
        labels.append(f"{names[i]} ({extra})")
    return labels


def build_tables(results: list[Result], published: list[dict], paper: str | None) -> list[dict]:
    """[{dataset, noisy_rate, paper_dataset, rows: [Row], published: [Row], notes}] sorted by dataset and noise."""
    keyed: dict[tuple, dict[tuple, list[Result]]] = {}
    for r in results:
        keyed.setdefault((r.dataset, r.noisy_rate), {}).setdefault(r.recipe, []).append(r)
    tables = []
    for (dataset, rate), by_recipe in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1] if kv[0][1] is not None else -1)):
        paper_dataset = None
        if paper:
            paper_dataset = STAND_IN.get(dataset, dataset) if paper == "auto" else paper
        lookup = {(p["method"]): p for p in published
                  if p["dataset"] == paper_dataset and rate is not None and math.isclose(float(p["noisy_rate"]), rate)}
        groups = list(by_recipe.values())
        rows, notes = [], []
        for label, group in zip(_labels(groups), groups):
            for row_name in group[0].rows:
                stats = {m: mean_std([r.rows[row_name][m] for r in group]) for m in METRIC_NAMES}
                epochs = sorted({r.epochs[row_name] for r in group if row_name in r.epochs})
                shown = row_name + (f" (epoch {', '.join(map(str, epochs))})" if epochs else "")
                row = Row(f"{label}, {shown}", len(group), {m: s[0] for m, s in stats.items()},
                          {m: s[1] for m, s in stats.items()})
                ref = lookup.get(group[0].reference)
                if paper:
                    if ref is None and lookup:
                        notes.append(f"no published {group[0].reference} row to compare {label} with")
                    row.reference = group[0].reference if ref else None
                    row.delta = {m: (row.mean[m] - ref[m]) if ref and m in ref else None for m in METRIC_NAMES}
                rows.append(row)
            for r in group:
                notes += r.notes
        paper_rows = [Row(f"{p['method']} [{p['source']}]", 0, {m: p.get(m) for m in METRIC_NAMES},
                          {m: None for m in METRIC_NAMES}, source=p["source"]) for p in lookup.values()]
        if paper and paper_dataset != dataset:
            notes.append(f"published rows are {paper_dataset}'s" + (": the synthetic set only shares its format, the "
                                                                    "differences measure nothing"
                                                                    if dataset in STAND_IN else ""))
        if paper and not paper_rows:
            notes.append(f"no published numbers for {paper_dataset} at noise rate {rate}")
        tables.append({"dataset": dataset, "noisy_rate": rate, "paper_dataset": paper_dataset, "rows": rows,
                       "published": paper_rows, "notes": notes})
    return tables


# ---------------------------------------------------------------- rendering
def _value(row: Row, m: str, latex: bool) -> str:
    v = row.mean.get(m)
    if v is None:
        return "–" if not latex else "--"
    text = f"{v:.2f}"
    if row.std.get(m) is not None:
        text += (r" $\pm$ " if latex else " ± ") + f"{row.std[m]:.2f}"
    return text


def _delta(row: Row, m: str, latex: bool) -> str:
    d = row.delta.get(m)
    if d is None:
        return ""
    return f"{d:+.2f}" if not latex else f"${d:+.2f}$"


def _title(t: dict) -> str:
    rate = "noise rate not recorded" if t["noisy_rate"] is None else f"noise rate {t['noisy_rate']:g}"
    return f"{t['dataset']}, {rate}"


def render_markdown(tables: list[dict], sources: dict, paper: bool) -> str:
    out = []
    for t in tables:
        head = ["", "n", *METRIC_NAMES]
        if paper:
            head += ["vs", *(f"Δ{m}" for m in METRIC_NAMES)]
        out += [f"### {_title(t)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in t["rows"]:
            cells = [row.label, str(row.n), *(_value(row, m, False) for m in METRIC_NAMES)]
            if paper:
                cells += [row.reference or "", *(_delta(row, m, False) for m in METRIC_NAMES)]
            out.append("| " + " | ".join(cells) + " |")
        for row in t["published"]:
            cells = [f"*{row.label}*", "", *(_value(row, m, False) for m in METRIC_NAMES)]
            if paper:
                cells += [""] * (1 + len(METRIC_NAMES))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += [f"- {n}" for n in dict.fromkeys(t["notes"])]
        if t["notes"]:
            out.append("")
    used = sorted({row.source for t in tables for row in t["published"]})
    if used:
        out += ["Published numbers: reports/published_results.yaml, from " +
                "; ".join(f"[{s}] {sources[s]}" for s in used) + ".", ""]
    return "\n".join(out)


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("–", "--")):
        text = text.replace(a, b)
    return text


def render_latex(tables: list[dict], sources: dict, paper: bool) -> str:
    out = []
    for t in tables:
        cols = "lr" + "r" * len(METRIC_NAMES) + ("l" + "r" * len(METRIC_NAMES) if paper else "")
        head = ["", "$n$", *METRIC_NAMES]
        if paper:
            head += ["vs", *(rf"$\Delta${m}" for m in METRIC_NAMES)]
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                rf"\caption{{{_tex(_title(t))}: text-to-image retrieval (\%), mean $\pm$ std over $n$ seeds"
                + (r"; $\Delta$ = ours $-$ published" if paper else "") + "}",
                rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
        for row in t["rows"]:
            cells = [_tex(row.label), str(row.n), *(_value(row, m, True) for m in METRIC_NAMES)]
            if paper:
                cells += [_tex(row.reference or ""), *(_delta(row, m, True) for m in METRIC_NAMES)]
            out.append(" & ".join(cells) + r" \\")
        if t["published"]:
            out.append(r"\midrule")
            for row in t["published"]:
                cells = [rf"\textit{{{_tex(row.label)}}}", "", *(_value(row, m, True) for m in METRIC_NAMES)]
                if paper:
                    cells += [""] * (1 + len(METRIC_NAMES))
                out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        out += [f"% {_tex(n)}" for n in dict.fromkeys(t["notes"])]
    used = sorted({row.source for t in tables for row in t["published"]})
    out += [f"% [{s}] {_tex(sources[s])}" for s in used]
    return "\n".join(out) + "\n"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m reports.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="folders holding run folders (searched recursively), e.g. logs/")
    p.add_argument("--paper", nargs="?", const="auto", metavar="DATASET",
                   help="add the published rows and our differences to them; DATASET picks the published table "
                        "(default: the runs' own dataset; CUHK-PEDES's for the synthetic demo set)")
    p.add_argument("--format", choices=["markdown", "latex", "both"], default="both")
    p.add_argument("--out", metavar="PREFIX", help="write PREFIX.md and / or PREFIX.tex instead of printing")
    p.add_argument("--published", default=PUBLISHED_FILE, help="the published numbers (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    sources, published = load_published(args.published)
    results = find_results(args.folders)
    if not results:
        raise SystemExit(f"no run folders (configs.yaml + metrics.jsonl with an evaluation) nor THI results "
                         f"(metrics.json) under {', '.join(args.folders)}")
    tables = build_tables(results, published, args.paper)
    texts = {}
    if args.format in ("markdown", "both"):
        texts["md"] = render_markdown(tables, sources, bool(args.paper))
    if args.format in ("latex", "both"):
        texts["tex"] = render_latex(tables, sources, bool(args.paper))
    for ext, text in texts.items():
        if args.out:
            from .files import atomic_open
            with atomic_open(f"{args.out}.{ext}", "w") as f:
                f.write(text)
            print(f"wrote {args.out}.{ext}")
        else:
            print(text)
    return {"tables": tables, **texts}


if __name__ == "__main__":
    main()
