"""The division, measured: trains a recipe under simulated noise with the division off and in several variants
(published augmented read or clean read, CCD or ALR weighting, one model or twins), over several seeds, and
tabulates how well each finds the permuted pairs over the epochs and the R1 it ends with (mean and spread).

    python bench/division_table.py --noise 0.2 0.5 0.8 --seeds 1 2 3 --json bench/results/division_table.json

By default it trains configs/synth.yaml (the demo's tiny CLIP pretrained on other synthetic people) on a
synthetic CUHK-PEDES-format set of --train_ids identities made under --out (the learning tests' size, so their
floors and this table come from the same runs).  Each run is an ordinary run folder (main.py in a subprocess);
a run whose metrics.jsonl is complete is read, not trained again, so a killed table continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:           # `python bench/x.py` puts bench/ first on the path, not the repo root
    sys.path.insert(0, ROOT)

from utils.files import write_json  # noqa: E402
from utils.run_folder import METRICS, read_metrics  # noqa: E402

# 3RTPR's two recipes on the synthetic world (issue 27): a recipe file's options, less its data and sizes (the
# world's: the demo's CLIP, batch 32, the fused head at 256 like the demo's TSE) and its evaluation schedule, which a
# 5-epoch run cannot keep (every epoch is evaluated here)
RECIPES_3RTPR = {"3rtpr": "configs/3rtpr/cuhk.yaml", "release": "configs/3rtpr_release/cuhk.yaml"}
WORLD = {"name", "dataset_name", "root_dir", "pretrain_choice", "batch_size", "num_epoch", "img_size", "text_length",
         "fused_dim", "eval_after"}
# ALR's settings measured: mu's statistic (min is the paper's and the release's; the rebuild also offers mean and the
# 25th, 30th and 75th percentiles) and k (5 published, 8 under synthetic noise; 2 towards a flat sigmoid)
ALR_SETTINGS = {"min": [], "mean": ["--alr_mu", "mean"], "p25": ["--alr_mu", "p25"], "p30": ["--alr_mu", "p30"],
                "p75": ["--alr_mu", "p75"], "min-k8": ["--alr_k", "8"], "mean-k8": ["--alr_mu", "mean", "--alr_k", "8"],
                "mean-k2": ["--alr_mu", "mean", "--alr_k", "2"], "p75-k2": ["--alr_mu", "p75", "--alr_k", "2"]}
PUBLISHED_ALR = {"--alr_mu": "min", "--alr_k": "5"}        # both recipes' (ALR_SETTINGS' "min")


def recipe_options(path: str, division: bool = True) -> list[str]:
    """main.py's options for the recipe file at `path` (relative to the repo) on this table's world."""
    with open(os.path.join(ROOT, path)) as f:
        values = yaml.safe_load(f)
    options = []
    for key, value in values.items():
        if key in WORLD or (not division and key in ("alr_k", "alr_mu")):
            continue
        options += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v)
                                  for v in (value if isinstance(value, list) else [value]))]
    return options + ["--fused_dim", "256"] + ([] if division else ["--division", "false"])


def variants_3rtpr() -> dict[str, list[str]]:
    """RECIPE-off (no division), RECIPE-SETTING (twins) and RECIPE-one-SETTING (one model of the recipe)."""
    out = {}
    for name, path in RECIPES_3RTPR.items():
        out[f"{name}-off"] = recipe_options(path, division=False)
        for setting, options in ALR_SETTINGS.items():
            out[f"{name}-{setting}"] = recipe_options(path) + options
            out[f"{name}-one-{setting}"] = recipe_options(path) + options + ["--twin", "false"]
    return out


# name: main.py options on top of the recipe
VARIANTS = {
    "off": ["--division", "false"],
    "ccd-augmented": ["--division_read", "augmented", "--weighting", "ccd"],
    "ccd-clean": ["--division_read", "clean", "--weighting", "ccd"],
    "alr-clean": ["--division_read", "clean", "--weighting", "alr"],
    "soft_clean": ["--weighting", "soft_clean", "--division_read", "clean"],
    "recommended": ["--method", "recommended"],                        # twins, CCD, clean read
    "twins-ccd-augmented": ["--twin", "--division_read", "augmented", "--weighting", "ccd"],
    "twins-alr-clean": ["--method", "twins", "--division_read", "clean"],   # 3RTPR's twins (ALR)
    "twins-alr-augmented": ["--method", "twins", "--division_read", "augmented"],
    "twins-alr8-clean": ["--method", "twins", "--division_read", "clean", "--alr_k", "8"],  # 3RTPR's k under synthetic noise
    **variants_3rtpr(),
}
# the learning tests' synthetic set (tests/test_learning.py): seed 0, so none of its people is a pretraining one
DATA = dict(num_train_ids=150, num_test_ids=50, num_val_ids=10, seed=0)
LEARNING_EPOCHS = 5          # epochs of the learning tests and of this table's default


def make_data(root: str, train_ids: int) -> str:
    from datasets.synthetic import make_synthetic
    if not os.path.isfile(os.path.join(root, "CUHK-PEDES", "reid_raw.json")):
        make_synthetic(root, fmt="CUHK-PEDES", **{**DATA, "num_train_ids": train_ids})
    return root


def train(run_dir: str, config: str, options: list[str], epochs: int) -> list[dict]:
    rows = read_metrics(os.path.join(run_dir, METRICS))
    if len(rows) >= epochs:
        return rows
    if rows:   # a killed run: --resume continues it with its saved options
        cmd = [sys.executable, "main.py", "--resume", run_dir]
    else:
        cmd = [sys.executable, "main.py", "--config", config, *options, "--num_epoch", str(epochs),
               "--run_dir", run_dir, "--overwrite"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return read_metrics(os.path.join(run_dir, METRICS))


def last_two(rows: list[dict], key: str) -> float:
    """Mean of the last two epochs: R1 of 200 queries moves by several points from one epoch to the next, and the
    learning tests compare runs on it."""
    values = [r[key] for r in rows[-2:] if key in r]
    return sum(values) / len(values) if values else float("nan")


def summarise(rows: list[dict]) -> dict:
    def flagged(r):      # precision and recall count pairs weighted below 0.5: ALR, which drops none, has no such pair
        return r.get("division/kept", 0) < r.get("division/total", 0)

    def mean(key, part):
        values = [r[key] for r in part if key in r and flagged(r)]
        return sum(values) / len(values) if values else float("nan")
    def every(key):      # over every epoch the division ran
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else float("nan")
    half = max(len(rows) // 2, 1)
    return {
        "precision_first_half": mean("division/noise_precision", rows[:half]),
        "recall_first_half": mean("division/noise_recall", rows[:half]),
        "precision_last": mean("division/noise_precision", rows[-1:]),
        "recall_last": mean("division/noise_recall", rows[-1:]),
        "R1_last": rows[-1].get("R1", float("nan")),
        "R1_last2": last_two(rows, "R1"),
        "mAP_last": rows[-1].get("mAP", float("nan")),
        "R1_best": max(r.get("R1", float("nan")) for r in rows),
        "weight_clean_last": rows[-1].get("division/mean_weight_clean", float("nan")),
        "weight_noisy_last": rows[-1].get("division/mean_weight_noisy", float("nan")),
        "weight_clean_all": every("division/mean_weight_clean"),
        "weight_noisy_all": every("division/mean_weight_noisy"),
        "per_epoch": [{k: r.get(k) for k in ("epoch", "division/noise_precision", "division/noise_recall",
                                              "division/kept", "R1", "mAP")} for r in rows],
    }


def spread(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: list[dict]) -> str:
    lines = ["| noise | variant | precision / recall, first half | at the last epoch | mean weight clean / permuted, "
             "last | the same, all epochs | R1, last two epochs | mAP last | R1 best | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["noise"], r["variant"]), []).append(r)
    for (noise, variant), runs in groups.items():
        def col(key, digits=1):
            return spread([r[key] for r in runs], digits)
        lines.append(f"| {noise:.0%} | {variant} | {col('precision_first_half')} / {col('recall_first_half')} "
                     f"| {col('precision_last')} / {col('recall_last')} "
                     f"| {col('weight_clean_last', 2)} / {col('weight_noisy_last', 2)} "
                     f"| {col('weight_clean_all', 2)} / {col('weight_noisy_all', 2)} "
                     f"| {col('R1_last2')} | {col('mAP_last')} | {col('R1_best')} "
                     f"| {len(runs)} |")
    return "\n".join(lines)


def division_read(run_dir: str) -> dict:
    """The last division read of a finished run: its last model (last.pth) through its own division pass and
    votes, with the truth and the ALR rule it trains with (alr_release for the release recipe, else alr):
    {rule, seed, alr_k, alr_mu, epoch, votes [signals][N] 0/1, positive_sim [N], clean [N] 0/1}.  Kept in the run
    folder (division_read.json, plain JSON) and read from there the next time."""
    saved = os.path.join(run_dir, "division_read.json")
    if os.path.isfile(saved):
        with open(saved) as f:
            return json.load(f)
    from configs import load_run_config, resolve
    from solver.build import build_engine
    from utils.checkpoint import load_checkpoint

    cfg = resolve({}, load_run_config(os.path.join(run_dir, "configs.yaml")), layers=[])
    path = os.path.join(run_dir, "last.pth")
    ckpt = load_checkpoint(path)
    engine = build_engine(cfg, run_dir, resume_from=(ckpt, path))     # its hooks write nothing: no run()
    division = engine.division(ckpt["epoch"])
    read = {"rule": cfg.weighting if cfg.weighting.startswith("alr") else "alr", "seed": cfg.seed,
            "alr_k": cfg.alr_k, "alr_mu": cfg.alr_mu, "epoch": ckpt["epoch"], "votes": division.votes.astype(int).tolist(),
            "positive_sim": [float(s) for s in division.positive_sim], "clean": engine.data.is_clean.astype(int).tolist()}
    write_json(saved, read, indent=None)    # whole or not at all: a killed bench leaves no half read to trust
    return read


def weigh_read(read: dict, settings: dict[str, list[str]] = ALR_SETTINGS) -> dict[str, dict]:
    """Every ALR setting on one division read (division_read), through the rule its run trains with:
    {setting: {mu, weight_clean, weight_noisy}}, the mean weight of its clean and of its permuted pairs.  What each
    setting would weigh, without training it."""
    import numpy as np
    from solver.division import Division
    from solver.weighting import WEIGHTINGS

    votes, sim = np.asarray(read["votes"], dtype=bool), np.asarray(read["positive_sim"], dtype=np.float32)
    clean = np.asarray(read["clean"], dtype=bool)
    # ALR reads the votes and the positive cosines alone: the signals and their posteriors are not kept in a read
    division = Division(read["epoch"], read["seed"], 1, {}, [], np.empty((0, len(sim))), votes, sim)
    out = {}
    for name, options in settings.items():
        given = {**PUBLISHED_ALR, **dict(zip(options[::2], options[1::2]))}   # not the run's own, if it trained another
        weighting = WEIGHTINGS[read["rule"]](alr_k=float(given["--alr_k"]), alr_mu=given["--alr_mu"])
        weights = weighting(division).numpy()
        out[name] = {"mu": float(weighting.mu(division)), "weight_clean": float(weights[clean].mean()),
                     "weight_noisy": float(weights[~clean].mean())}
    return out


def replay(run_dir: str) -> dict[str, dict]:
    """Every ALR setting on a finished run's last division read (its own model, division pass and rule)."""
    return weigh_read(division_read(run_dir))


def replay_table(replays: list[dict]) -> str:
    """Mean over seeds of each setting's mean weight of clean / permuted pairs, per (noise, variant trained)."""
    lines = ["| noise | variant trained | " + " | ".join(ALR_SETTINGS) + " |", "|---|---|" + "---|" * len(ALR_SETTINGS)]
    groups: dict[tuple, list[dict]] = {}
    for r in replays:
        groups.setdefault((r["noise"], r["variant"]), []).append(r["replay"])
    for (noise, variant), runs in groups.items():
        cells = []
        for name in ALR_SETTINGS:
            clean = statistics.mean(run[name]["weight_clean"] for run in runs)
            noisy = statistics.mean(run[name]["weight_noisy"] for run in runs)
            cells.append(f"{clean:.3f} / {noisy:.3f}")
        lines.append(f"| {noise:.0%} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/synth.yaml")
    p.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=LEARNING_EPOCHS)
    p.add_argument("--train_ids", type=int, default=DATA["num_train_ids"])
    p.add_argument("--root_dir", default="", help="a dataset root to train on (default: a synthetic set under --out)")
    p.add_argument("--out", default="logs/division_table")
    p.add_argument("--json", default="")
    p.add_argument("--replay_alr", action="store_true",
                   help="also weigh each finished run's last division read with every ALR setting (ALR_SETTINGS)")
    args, extra = p.parse_known_args(argv)   # anything else goes to main.py (e.g. --lr 1e-4)
    root = args.root_dir or make_data(os.path.join(os.path.abspath(args.out), "data"), args.train_ids)
    data = ["--dataset_name", "CUHK-PEDES", "--root_dir", root] if not args.root_dir else ["--root_dir", root]
    results = []
    for noise in args.noise:
        for variant in args.variants:
            for seed in args.seeds:
                run_dir = os.path.join(args.out, f"noise{noise}_{variant}_seed{seed}")
                options = [*data, "--noisy_rate", str(noise), "--seed", str(seed), *VARIANTS[variant], *extra]
                rows = train(run_dir, args.config, options, args.epochs)
                results.append({"noise": noise, "variant": variant, "seed": seed, "run_dir": run_dir,
                                **summarise(rows)})
                if args.replay_alr and variant.startswith(tuple(RECIPES_3RTPR)):
                    results[-1]["replay"] = replay(run_dir)
                print(f"done: noise {noise}, {variant}, seed {seed}: R1 {results[-1]['R1_last']:.2f}",
                      file=sys.stderr)
    print(table(results))
    replays = [r for r in results if "replay" in r]
    if replays:
        print("\nEvery ALR setting on the last epoch's division read of these runs (mean weight clean / permuted):")
        print(replay_table(replays))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"bench": "division_table", "args": vars(args), "extra": extra, "rows": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
