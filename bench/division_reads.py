"""The division pass's two reads side by side: trains the demo recipe under simulated noise with
`--division_read augmented` (as published) and `clean` (like a test set), then tabulates how well each finds
the permuted pairs over the epochs, the final R1 and the division's time.

    python bench/division_reads.py --noise 0.2 0.5 0.8 --out logs/division_reads --json division_reads.json

Each run is an ordinary run folder (`main.py` in a subprocess); a run whose metrics.jsonl is complete is read,
not trained again, so a killed comparison continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:           # `python bench/x.py` puts bench/ first on the path, not the repo root
    sys.path.insert(0, ROOT)

from utils.run_folder import METRICS, read_metrics  # noqa: E402


def read_run_metrics(run_dir: str) -> list[dict]:
    return read_metrics(os.path.join(run_dir, METRICS))


def train(run_dir: str, config: str, noise: float, read: str, epochs: int, extra: list[str]) -> list[dict]:
    rows = read_run_metrics(run_dir)
    if len(rows) >= epochs:
        return rows
    cmd = [sys.executable, "main.py", "--config", config, "--noisy_rate", str(noise), "--division_read", read,
           "--num_epoch", str(epochs), *extra]
    cmd += ["--resume", run_dir] if rows else ["--run_dir", run_dir]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return read_run_metrics(run_dir)


def summarise(rows: list[dict]) -> dict:
    def mean(key, part):
        values = [r[key] for r in part if key in r]
        return sum(values) / len(values) if values else float("nan")
    half = len(rows) // 2
    return {
        "precision_first_half": mean("division/noise_precision", rows[:half]),
        "recall_first_half": mean("division/noise_recall", rows[:half]),
        "precision_last": rows[-1].get("division/noise_precision", float("nan")),
        "recall_last": rows[-1].get("division/noise_recall", float("nan")),
        "R1_last": rows[-1].get("R1", float("nan")),
        "R1_best": max(r.get("R1", float("nan")) for r in rows),
        "division_s_per_epoch": mean("division/time", rows),
        "per_epoch": [{k: r.get(k) for k in ("epoch", "division/noise_precision", "division/noise_recall",
                                              "division/kept", "R1")} for r in rows],
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    p.add_argument("--reads", nargs="+", default=["augmented", "clean"], choices=["augmented", "clean"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="logs/division_reads")
    p.add_argument("--json", default="")
    args, extra = p.parse_known_args(argv)   # anything else goes to main.py (e.g. --twin, --seed 2)
    results = []
    for noise in args.noise:
        for read in args.reads:
            run_dir = os.path.join(args.out, f"noise{noise}_{read}")
            rows = train(run_dir, args.config, noise, read, args.epochs, extra)
            results.append({"noise": noise, "read": read, "run_dir": run_dir, **summarise(rows)})
            print(f"done: noise {noise}, {read}", file=sys.stderr)
    print("| noise | division read | noise precision / recall, first half of the epochs | at the last epoch "
          "| R1 last | R1 best | division s / epoch |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['noise']:.0%} | {r['read']} | {r['precision_first_half']:.1f} / {r['recall_first_half']:.1f} "
              f"| {r['precision_last']:.1f} / {r['recall_last']:.1f} | {r['R1_last']:.2f} | {r['R1_best']:.2f} "
              f"| {r['division_s_per_epoch']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "division_reads", "args": vars(args), "extra": extra, "rows": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
