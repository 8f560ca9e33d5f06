"""Which captions are wrong: every pair of a run's training set (or of another annotation file in its format)
scored by the run's own division at a checkpoint, ranked most suspect first.

    python audit.py --run RUN_DIR                                    # RUN_DIR/audit/pairs.csv, summary.txt
    python audit.py --run RUN_DIR --mllm Qwen2-VL-7B-Instruct --top 100    # + the MLLM's P(yes) on 100 + 100 pairs
    python audit.py --run RUN_DIR --write_clean cleaned.json         # + the annotation file without the suspects
    python audit.py --run RUN_DIR --anno_path other.json [--noisy_file other.noise.npy] [--split train]

The division is the run's, as an epoch of it makes it: its read of the pairs (division_read), its mixtures and
their settings, every signal of every model (twins: both), its weighting rule; at the checkpoint's epoch + 1, the
division the run makes next with those weights.  A pair's clean probability is the mean of its signals' mixture
posteriors; pairs are ranked by it (lowest first; ties by the positive-pair cosine).  The audit goes in stages, each
saved as it ends (the division's scores, the identity ranks, each batch of MLLM answers): a killed or repeated
audit continues from what is saved.  `python app.py --run RUN_DIR` shows the pairs in its Audit tab.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from inference.runs import Run, load_run
from mllm.backends import add_backend_args, backend_from_args
from mllm.cache import AnswerCache
from utils.files import atomic_open, write_json
from utils.logger import setup_logger
from utils.progress import library_bars_follow_terminal
from utils.faults import crash_point
from utils.safe_load import add_trust_flag, command
from . import store
from .cleaned import pairs_to_drop, training_options, write_cleaned
from .division import method_engine, pair_features, pair_set, verdict
from .pairs import AuditError
from .ranking import (by_caption_length, by_identity, clean_probability, identity_ranks, ranks_of, suspect_order,
                      truth_metrics)
from .second_opinion import second_opinion


def parse(argv):
    p = argparse.ArgumentParser(prog="python audit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder made by main.py, trained with the division")
    p.add_argument("--checkpoint", default="last",
                   help="last (default: the weights the run ended with, whose division is its latest), best, "
                        "last.prev, or a .pth path")
    p.add_argument("--anno_path", help="another annotation file in the run's dataset format (default: the run's)")
    p.add_argument("--noisy_file", help="with --anno_path: its simulated noise, a permutation of its training pairs "
                                        "(--write_clean's OUT.noise.npy); the run's own pairs carry the run's noise")
    p.add_argument("--split", choices=("train", "val", "test"), default="train", help="the split whose pairs are scored")
    p.add_argument("--top", type=int, default=20, metavar="K",
                   help="suspects listed in the log, and with --mllm asked about (with K trusted pairs as a control)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="pairs whose clean probability is below it are counted, and dropped by --write_clean")
    p.add_argument("--write_clean", metavar="OUT.json",
                   help="write the annotation file without the pairs below --threshold (marks made in the page's "
                        "Audit tab win), in the dataset's format; under simulated noise also OUT.noise.npy")
    p.add_argument("--out", help="output folder (default RUN_DIR/audit; RUN_DIR/audit_<file>_<split> for another "
                                 "file or split)")
    p.add_argument("--cache", help="the MLLM's answer cache (default OUT/mllm_cache.jsonl)")
    p.add_argument("--root_dir", help="dataset root, if it moved since training")
    p.add_argument("--device", help="device of the run's model(s) (auto, cpu, cuda ...)")
    p.add_argument("--num_workers", type=int, help="data loading workers (default: the run's)")
    add_backend_args(p, model_flags=("--mllm", "--model_dir"), required=False)
    add_trust_flag(p)
    args = p.parse_args(argv)
    if args.noisy_file and not args.anno_path:
        p.error("--noisy_file goes with --anno_path: the run's own pairs are audited with the run's noise")
    if args.top < 1:
        p.error("--top must be at least 1")
    if not 0 < args.threshold <= 1:
        p.error("--threshold must be in (0, 1]")
    return args


def main(argv=None) -> dict:
    """Runs the audit; returns its summary (also in OUT/summary.json)."""
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return audit(argv)


def audited_run(args) -> tuple[Run, str]:
    """(the run read without its data, the checkpoint's path), or the reason it cannot be audited."""
    run = load_run(args.run, with_data=False, root_dir=args.root_dir, device=args.device, num_workers=args.num_workers)
    if not run.cfg.division:
        raise AuditError(f"{os.path.join(args.run, 'configs.yaml')}: this run trained without the division "
                         "(division: false), so there is no division of its own to audit with; audit a run trained "
                         "with it (e.g. python main.py --config configs/synth.yaml --noisy_rate 0.5)")
    checkpoint = run.checkpoint_path(args.checkpoint)
    if not os.path.isfile(checkpoint):
        held = sorted(f for f in os.listdir(args.run) if f.endswith(".pth"))
        raise AuditError(f"{checkpoint}: no such checkpoint; " + (
            f"the run has {', '.join(held)}: choose one with --checkpoint (best, last, last.prev or a .pth path)"
            if held else f"the run has not finished an epoch yet: continue it with python main.py --resume {args.run}"))
    return run, checkpoint


def audit(argv: list[str]) -> dict:
    args = parse(argv)
    run, checkpoint = audited_run(args)
    cfg = run.cfg
    out = args.out or store.default_folder(args.run, args.anno_path, args.split)
    os.makedirs(out, exist_ok=True)
    log = setup_logger(out, filename=store.LOG)
    library_bars_follow_terminal()
    backend = backend_from_args(args) if args.model_dir else None   # a bad model folder is named before any work

    pairs = pair_set(cfg, args.split, args.anno_path, args.noisy_file)
    anno_file = pairs.data.dataset.anno_file
    pairs_key = {"annotations": store.fingerprint(anno_file), "split": args.split,
                 "noise": store.fingerprint(pairs.noisy_file)}
    key = {**pairs_key, "checkpoint": store.fingerprint(checkpoint),
           "config": store.fingerprint(os.path.join(args.run, "configs.yaml"))}
    models = ModelsAtCheckpoint(Run(cfg, pairs.data.dataset, run.device, run.dtype), args.checkpoint)

    scores = stage(os.path.join(out, store.SCORES), key, log, "the division's scores",
                   lambda: division_stage(models, pairs))
    crash_point("audit:scored")
    ranks = stage(os.path.join(out, store.IDENTITY), key, log, "the identity ranks",
                  lambda: identity_stage(models, pairs))
    crash_point("audit:identity")

    p_clean = clean_probability(scores["clean_probabilities"])
    order = suspect_order(p_clean, scores["positive_similarity"])
    p_yes = group = None
    summary_extra = {}
    if backend is not None:
        cache = AnswerCache(args.cache or os.path.join(out, store.MLLM_CACHE))
        p_yes, group, failed = second_opinion(backend, cache, pairs.records, order, p_clean, args.top,
                                              args.batch_size)   # backend_from_args set its default
        log.info("%s", cache.summary())
        summary_extra["second_opinion"] = opinion_summary(p_yes, group, failed, backend.model_id, pairs.is_clean)

    columns, rows = pair_rows(pairs, scores, ranks, p_clean, order, p_yes, group)
    store.write_pairs(os.path.join(out, store.PAIRS), rows, columns)
    summary = make_summary(args, cfg, checkpoint, anno_file, pairs, scores, p_clean, order, summary_extra)
    write_json(os.path.join(out, store.SUMMARY), summary)
    text = summary_text(summary, rows[:args.top])
    with atomic_open(os.path.join(out, store.SUMMARY_TEXT)) as f:
        f.write(text + "\n")
    store.write_about(out, {"run": os.path.abspath(args.run), "checkpoint": os.path.abspath(checkpoint),
                            "dataset_name": cfg.dataset_name, "root_dir": os.path.abspath(cfg.root_dir),
                            "annotations": anno_file, "split": args.split, "noisy_file": pairs.noisy_file,
                            "noisy_rate": cfg.noisy_rate, "pairs_key": pairs_key, "threshold": args.threshold,
                            "pairs": len(rows)})
    log.info("\n%s", text)
    log.info("wrote %s (%d pairs, most suspect first), %s", os.path.join(out, store.PAIRS), len(rows),
             os.path.join(out, store.SUMMARY_TEXT))
    if args.write_clean:
        summary["cleaned"] = export_cleaned(out, pairs, pairs_key, p_clean < args.threshold, args.write_clean, log,
                                            cfg)
        write_json(os.path.join(out, store.SUMMARY), summary)
    return summary


class ModelsAtCheckpoint:
    """The run's models with the checkpoint's weights, loaded when a stage first needs them (not at all when every
    stage is read back)."""

    def __init__(self, run: Run, checkpoint: str):
        self.run, self.checkpoint, self.epoch = run, checkpoint, None

    def get(self) -> list:
        if self.run.models is None:
            self.epoch = int(self.run.load_weights(self.checkpoint)["epoch"])
        return self.run.models


def stage(path: str, key: dict, log, what: str, compute) -> dict:
    """A stage's arrays: read back from `path` when it holds them for this key, else computed and saved there."""
    saved = store.load_stage(path, key)
    if saved is not None:
        log.info("%s: read back from %s (delete it to compute them again)", what, path)
        return saved
    log.info("%s: computing ...", what)
    arrays = compute()
    store.save_stage(path, key, **arrays)
    return arrays


def division_stage(models: ModelsAtCheckpoint, pairs) -> dict:
    run = models.run
    engine = method_engine(run.cfg, models.get(), run.device, run.dtype, pairs)
    epoch = models.epoch + 1     # the division the run makes next with these weights
    v = verdict(engine, epoch)
    return {"epoch": np.array(v.epoch), "checkpoint_epoch": np.array(models.epoch), "signals": np.array(v.signals),
            "owners": np.array(v.owners), "values": v.values, "clean_probabilities": v.clean_probabilities,
            "votes": v.votes, "weights": v.weights, "weight_names": np.array(v.weight_names),
            "positive_similarity": v.positive_similarity}


def identity_stage(models: ModelsAtCheckpoint, pairs) -> dict:
    run = models.run
    features = pair_features(models.get(), pairs, run.device, run.dtype)
    rank, count = identity_ranks(features, [r.image_id for r in pairs.records], [r.pid for r in pairs.records])
    return {"identity_rank": rank, "identity_captions": count}


def pair_rows(pairs, scores, ranks, p_clean, order, p_yes, group) -> tuple[list[str], list[dict]]:
    """(columns, one dict a pair in `order`)."""
    signals = [str(s) for s in scores["signals"]]
    weight_names = [str(s) for s in scores["weight_names"]]
    votes = scores["votes"].sum(0)
    columns = list(store.COLUMNS) + weight_names
    if pairs.is_clean is not None:
        columns.append("permuted")
    if p_yes is not None:
        columns += ["mllm_p_yes", "mllm_group"]
    columns += [f"p_clean/{s}" for s in signals] + [f"loss/{s}" for s in signals]
    rows = []
    for rank, i in enumerate(order.tolist(), 1):
        record, source = pairs.records[i], pairs.sources[i]
        row = {"suspect_rank": rank, "pair": i, "file_path": source.file_path, "caption": record.caption,
               "id": source.identity, "clean_probability": float(p_clean[i]),
               "similarity": float(scores["positive_similarity"][i]),
               "identity_rank": int(ranks["identity_rank"][i]), "identity_captions": int(ranks["identity_captions"][i]),
               "votes_clean": f"{int(votes[i])}/{len(signals)}", "words": len(record.caption.split())}
        row.update({name: float(scores["weights"][k, i]) for k, name in enumerate(weight_names)})
        if pairs.is_clean is not None:
            row["permuted"] = int(not pairs.is_clean[i])
        if p_yes is not None:
            row["mllm_p_yes"], row["mllm_group"] = float(p_yes[i]), group[i]
        row.update({f"p_clean/{s}": float(scores["clean_probabilities"][k, i]) for k, s in enumerate(signals)})
        row.update({f"loss/{s}": float(scores["values"][k, i]) for k, s in enumerate(signals)})
        rows.append(row)
    return columns, rows


def opinion_summary(p_yes, group, failed: int, model_id: str, is_clean) -> dict:
    group = np.array(group)
    out = {"model": model_id, "failed": failed}
    for name in ("suspect", "control"):
        values = p_yes[(group == name) & ~np.isnan(p_yes)]
        out[name] = {"asked": int((group == name).sum()), "mean_p_yes": float(values.mean()) if len(values) else None,
                     "said_yes": int((values > 0.5).sum())}
        if is_clean is not None:
            out[name]["permuted"] = int((~is_clean[group == name]).sum())
    return out


def make_summary(args, cfg, checkpoint, anno_file, pairs, scores, p_clean, order, extra: dict) -> dict:
    below = p_clean < args.threshold
    identities = [s.identity for s in pairs.sources]
    captions = [r.caption for r in pairs.records]
    weights = {str(name): {"kept": int((w >= 0.5).sum()), "mean": float(w.mean())}
               for name, w in zip(scores["weight_names"], scores["weights"])}
    summary = {"run": os.path.abspath(args.run), "checkpoint": os.path.abspath(checkpoint),
               "checkpoint_epoch": int(scores["checkpoint_epoch"]), "division_epoch": int(scores["epoch"]),
               "annotations": anno_file, "split": args.split, "noisy_file": pairs.noisy_file, "pairs": len(p_clean),
               "division": {"method": cfg.method, "division_read": cfg.division_read, "weighting": cfg.weighting,
                            "signals": [str(s) for s in scores["signals"]]},
               "threshold": args.threshold, "below": int(below.sum()), "weights": weights,
               "by_identity": by_identity(identities, below),
               "by_caption_length": by_caption_length(captions, below, pairs.is_clean)}
    if pairs.is_clean is not None:
        summary["truth"] = truth_metrics(order, pairs.is_clean, below)
    summary.update(extra)
    return summary


def summary_text(s: dict, top_rows: list[dict]) -> str:
    """The summary for people: what was audited, how many pairs are suspect and where, the first suspects."""
    n = s["pairs"]
    lines = [f"audit of the {s['split']} pairs of {s['annotations']}: {n} pairs",
             f"scored by {s['checkpoint']} (epoch {s['checkpoint_epoch']}) with the run's division as at epoch "
             f"{s['division_epoch']} ({s['division']['method']}, read {s['division']['division_read']}, weighting "
             f"{s['division']['weighting']}; signals {', '.join(s['division']['signals'])})",
             f"clean probability below {s['threshold']}: {s['below']} pairs ({100 * s['below'] / n:.1f}%); the run's "
             "weights would keep " + ", ".join(f"{w['kept']}" + ("" if name == "weight" else f" ({name})")
                                               for name, w in s["weights"].items()) + f" of {n}"]
    if "truth" in s:
        t = s["truth"]
        lines.append(f"against the noise file's truth ({t['permuted']} permuted): AUROC {t.get('auroc', float('nan')):.1f}, "
                     f"precision at {t['permuted']} {t.get('precision_at_k', float('nan')):.1f}%; of the pairs below "
                     f"{s['threshold']}, {t['flagged_precision']:.1f}% permuted (recall {t['flagged_recall']:.1f}%)")
    ident = s["by_identity"]
    lines.append(f"by identity ({ident['identities']} identities), how many have how many pairs below "
                 f"{s['threshold']}: " + ", ".join(f"{v} have {k}" for k, v in ident["identities_by_pairs_below"].items()))
    if ident["most_below"]:
        lines.append("  most: " + ", ".join(f"id {m['id']} ({m['below']} of {m['pairs']})" for m in ident["most_below"]))
    lines.append("by caption length (words): " + "; ".join(
        f"{r['words']}: {r['below']} of {r['pairs']} below" + (f" ({r['permuted']} permuted)" if "permuted" in r else "")
        for r in s["by_caption_length"]))
    if "second_opinion" in s:
        o = s["second_opinion"]
        lines.append("second opinion of the MLLM (P(yes) that the caption describes its image): " + "; ".join(
            f"{name}s: {o[name]['asked']} asked, mean P(yes) "
            + (f"{o[name]['mean_p_yes']:.3f}" if o[name]["mean_p_yes"] is not None else "-")
            + f", {o[name]['said_yes']} said yes" + (f", {o[name]['permuted']} permuted" if "permuted" in o[name] else "")
            for name in ("suspect", "control")) + (f"; {o['failed']} failed" if o["failed"] else ""))
    lines.append(f"the {len(top_rows)} most suspect:")
    for r in top_rows:
        extra = (" permuted" if r.get("permuted") else "") + (
            f" P(yes) {r['mllm_p_yes']:.3f}" if r.get("mllm_p_yes") == r.get("mllm_p_yes") and "mllm_p_yes" in r else "")
        lines.append(f"  #{r['suspect_rank']} pair {r['pair']} id {r['id']} {r['file_path']}: clean {r['clean_probability']:.3f},"
                     f" similarity {r['similarity']:.3f}, rank {r['identity_rank']} of {r['identity_captions']} in its "
                     f"identity{extra}: {r['caption']}")
    return "\n".join(lines)


def export_cleaned(out: str, pairs, pairs_key: dict, below: np.ndarray, path: str, log, cfg) -> dict:
    """--write_clean: the pairs below the threshold dropped, the page's marks winning."""
    marks = store.read_marks(out, pairs_key)
    report = write_cleaned(pairs.data.dataset.anno_file, pairs.sources, pairs_to_drop(below, marks), path,
                           pairs.permutation)
    log.info("wrote %s: %d pairs kept, %d dropped (%d below the threshold%s)", report["file"], report["kept"],
             report["dropped"], int(below.sum()), f", {len(marks)} marks of the page applied" if marks else "")
    log.info("train on it: the run's training command with %s", training_options(report, cfg.noisy_rate))
    if report.get("noise_file"):
        log.info("its noise (the pairs as the run saw them; %d of the kept were permuted): %s",
                 report["permuted_kept"], report["noise_file"])
        if report["permuted_kept"] == 1:
            log.warning("one kept pair was permuted: a permutation cannot move one caption alone, so %s counts it "
                        "as clean", report["noise_file"])
    return report
