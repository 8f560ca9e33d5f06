"""The audit, measured: how well `audit.py` finds the permuted pairs of a run trained with the division, beside two
baselines ranked the same way, and whether cleaning with it and then training without the division matches
training with the division.

    python bench/audit_table.py --noise 0.2 0.5 0.8 --seeds 1 2 3 --json bench/results/audit_table.json

For each noise rate and seed, on bench/division_table.py's synthetic set and run layout (its run folders are shared:
`ccd-clean` is configs/synth.yaml's own division, `off` trains without it):
  - the audit of the `ccd-clean` run at its last checkpoint (AUROC, precision at K = the number of permuted pairs,
    against the noise file);
  - CLIP-score filtering: the zero-shot cosine of the starting CLIP (the synthetic-pretrained one, BGE: CLIP's own
    global embedding) on each pair, lowest first;
  - the small-loss rule: the per-pair loss of the `off` run's model at its last checkpoint (each signal min-max
    normalised, averaged), highest first, read as the division reads (its division_read);
  - `audit-cleaned`: a run trained without the division on the audit's cleaned file (--write_clean at 0.5, its noise
    file kept: the kept pairs as the run saw them), against the `ccd-clean` and `off` runs' R1 / mAP;
  - `audit-top-k-cleaned`: the same without the K most suspect pairs (K = the number of permuted pairs: a count
    the bench knows and a user would have to guess).
Every run is an ordinary run folder trained in a subprocess and resumed when killed; each audit's numbers are kept
in OUT/audit_table_rows.json, so a killed table continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.division_table import DATA, LEARNING_EPOCHS, VARIANTS, last_two, make_data, spread, train  # noqa: E402
from utils.files import write_json  # noqa: E402

ROWS = "audit_table_rows.json"


def audit_run(run_dir: str) -> dict:
    """audit.py on the run, writing its cleaned file; the summary."""
    from pair_audit import cli
    return cli.main(["--run", run_dir, "--write_clean", os.path.join(run_dir, "audit", "cleaned.json")])


def audit_top_k(run_dir: str, k: int) -> dict:
    """audit.py into RUN/audit_top_k, then again (its stages read back) with the threshold between its K-th and
    (K+1)-th suspect: the cleaned file without the K most suspect pairs (K the number of permuted pairs, which the
    bench knows and a user would have to guess); the summary."""
    from pair_audit import cli, store
    out = os.path.join(run_dir, "audit_top_k")
    cli.main(["--run", run_dir, "--out", out])
    p_clean = [r["clean_probability"] for r in store.read_pairs(os.path.join(out, store.PAIRS))]
    return cli.main(["--run", run_dir, "--out", out, "--threshold", repr((p_clean[k - 1] + p_clean[k]) / 2),
                     "--write_clean", os.path.join(out, "cleaned.json")])


def baselines(with_division: str, without_division: str) -> dict:
    """Truth metrics of CLIP-score filtering (the starting CLIP of `with_division`'s recipe) and of the small-loss
    rule of the model trained without the division, on the same pairs (the same noise file)."""
    import torch

    from inference.runs import Run, load_run
    from pair_audit.division import method_engine, pair_features, pair_set, starting_models, verdict
    from pair_audit.ranking import suspect_order, truth_metrics

    run = load_run(with_division, with_data=False)
    pairs = pair_set(run.cfg)
    models = starting_models(run.cfg, pairs.data.num_classes, run.device)
    image_feats, text_feats = pair_features(models, pairs, run.device, run.dtype)[0]
    image_ids = torch.tensor([r.image_id for r in pairs.records])
    clip_score = torch.nn.functional.cosine_similarity(image_feats["bge"][image_ids], text_feats["bge"]).numpy()
    out = {"clip_score": truth_metrics(suspect_order(clip_score), pairs.is_clean)}

    off = load_run(without_division, with_data=False)
    off_pairs = pair_set(off.cfg)
    assert np.array_equal(off_pairs.is_clean, pairs.is_clean), "the two runs must read the same noise file"
    model = Run(off.cfg, off_pairs.data.dataset, off.device, off.dtype)
    epoch = int(model.load_weights("last")["epoch"])
    values = verdict(method_engine(off.cfg, model.models, off.device, off.dtype, off_pairs), epoch + 1).values
    span = values.max(1, keepdims=True) - values.min(1, keepdims=True)
    loss = ((values - values.min(1, keepdims=True)) / np.where(span > 0, span, 1)).mean(0)
    out["small_loss"] = truth_metrics(suspect_order(-loss), pairs.is_clean)
    return out


def measure(out: str, config: str, data: list[str], noise: float, seed: int, epochs: int) -> dict:
    def run(variant: str, options: list[str]) -> tuple[str, list[dict]]:
        run_dir = os.path.join(out, f"noise{noise}_{variant}_seed{seed}")
        return run_dir, train(run_dir, config, [*data, "--noisy_rate", str(noise), "--seed", str(seed), *options],
                              epochs)

    def cleaned_run(variant: str, cleaned: dict) -> dict:
        _, rows = run(variant, ["--anno_path", cleaned["file"], "--noisy_file", cleaned["noise_file"],
                                "--division", "false"])
        return {"kept": cleaned["kept"], "permuted_kept": cleaned["permuted_kept"], **scores(rows)}

    with_div, rows_with = run("ccd-clean", VARIANTS["ccd-clean"])
    summary = audit_run(with_div)
    without_div, rows_off = run("off", VARIANTS["off"])
    return {"noise": noise, "seed": seed, "audit": summary["truth"], **baselines(with_div, without_div),
            "division": scores(rows_with), "off": scores(rows_off),
            "cleaned": cleaned_run("audit-cleaned", summary["cleaned"]),
            "cleaned_top_k": cleaned_run("audit-top-k-cleaned",
                                         audit_top_k(with_div, summary["truth"]["permuted"])["cleaned"])}


def scores(rows: list[dict]) -> dict:
    return {"R1_last2": last_two(rows, "R1"), "mAP_last": rows[-1]["mAP"]}


def table(results: list[dict]) -> str:
    header = ["noise", "audit: AUROC / P@K", "CLIP score: AUROC / P@K", "small loss: AUROC / P@K",
              "audit below 0.5: precision / recall", "R1 / mAP, with the division", "without the division",
              "cleaned below 0.5: pairs kept (permuted %)", "then without the division",
              "cleaned top K: pairs kept (permuted %)", "then without the division", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for noise in sorted({r["noise"] for r in results}):
        runs = sorted((r for r in results if r["noise"] == noise), key=lambda r: r["seed"])

        def two(name: str, first: str, second: str) -> str:
            return f"{spread([r[name][first] for r in runs])} / {spread([r[name][second] for r in runs])}"

        def kept(name: str) -> str:
            left = [100 * r[name]["permuted_kept"] / r[name]["kept"] for r in runs]
            return f"{spread([r[name]['kept'] for r in runs], 0)} ({spread(left)})"
        cells = [f"{noise:.0%}", two("audit", "auroc", "precision_at_k"), two("clip_score", "auroc", "precision_at_k"),
                 two("small_loss", "auroc", "precision_at_k"), two("audit", "flagged_precision", "flagged_recall"),
                 two("division", "R1_last2", "mAP_last"), two("off", "R1_last2", "mAP_last"),
                 kept("cleaned"), two("cleaned", "R1_last2", "mAP_last"),
                 kept("cleaned_top_k"), two("cleaned_top_k", "R1_last2", "mAP_last"),
                 ", ".join(str(r["seed"]) for r in runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/synth.yaml", help="the recipe with the division (division_table's)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=LEARNING_EPOCHS)
    p.add_argument("--out", default="logs/division_table", help="bench/division_table.py's folder: runs are shared")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    root = make_data(os.path.join(os.path.abspath(args.out), "data"), DATA["num_train_ids"])
    data = ["--dataset_name", "CUHK-PEDES", "--root_dir", root]
    rows_file = os.path.join(args.out, ROWS)
    done = json.load(open(rows_file)) if os.path.isfile(rows_file) else []
    results = []
    for noise in args.noise:
        for seed in args.seeds:
            row = next((r for r in done if r["noise"] == noise and r["seed"] == seed and r["epochs"] == args.epochs
                        and "cleaned_top_k" in r), None)    # a row of an older table (no top K) is measured again
            if row is None:                                 # (its runs and audit read back, not made again)
                row = {**measure(args.out, args.config, data, noise, seed, args.epochs), "epochs": args.epochs}
                done = [r for r in done if (r["noise"], r["seed"], r["epochs"]) != (noise, seed, args.epochs)]
                done.append(row)
                write_json(rows_file, done)
            results.append(row)
            print(f"done: noise {noise}, seed {seed}: audit AUROC {row['audit']['auroc']:.1f}", file=sys.stderr)
    print(table(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
        write_json(args.json, {"bench": "audit_table", "args": vars(args), "rows": results})
    return results


if __name__ == "__main__":
    main()
