"""THI on a trained run: python -m thi --run RUN_DIR --model_dir QWEN2_VL_DIR [options]
or on checkpoint files:  python -m thi --checkpoint RDE_best.pth --config configs/rde/cuhk.yaml --model_dir ...

Ranks the run's test queries with its best checkpoint, asks the MLLM about the top candidates (rounds of yes/no
with the gate, VQA on the accepted anchor, aggregation into a refined query), re-ranks, and prints R@1/5/10, mAP
and mINP for the base ranking and after each round.  Writes OUT/queries.jsonl (one line per query: candidates,
P(yes) per round, anchor, answers, refined query, error) and OUT/metrics.json; OUT defaults to RUN_DIR/thi.
Every MLLM answer is cached in OUT/mllm_cache.jsonl, so a killed run started again asks only what is missing.
Over several GPUs: --shard K/N per process, then the same command without it (mllm/shards.py; run_vllm_ICL.sh).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys

import torch

from inference.runs import load_checkpoint_files, load_run
from mllm.backends import add_backend_args, backend_from_args
from mllm.cache import AnswerCache, ask
from mllm.shards import add_shard_arg
from utils.checkpoint import atomic_save
from utils.files import write_json, write_jsonl
from utils.logger import setup_logger
from utils.metrics import metrics_table, rank_metrics
from utils.progress import library_bars_follow_terminal
from utils.safe_load import add_trust_flag, command
from .interaction import localise, new_states, refine
from .rerank import RunSimilarity, reranked

# docs/METHOD.md §7.2 (ref): xi per dataset, K, lambda
DEFAULT_XI = {"ICFG-PEDES": 0.55}
FALLBACK_XI = 0.5


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m thi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder made by main.py")
    p.add_argument("--config", help="options file (e.g. configs/rde/cuhk.yaml) for --checkpoint files, instead of "
                                    "--run: published RDE / ICL / IRRA-family weights as they are (test.py reads the same)")
    add_backend_args(p)
    add_thi_args(p)
    p.add_argument("--checkpoint", nargs="+", default=["best"],
                   help="with --run: best, last or a .pth path; with --config: one checkpoint file, or two for twins")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--limit", type=int, help="only the first N queries (quick looks)")
    p.add_argument("--out", help="output folder (default RUN_DIR/thi; with --config logs/thi/CHECKPOINT_NAME)")
    p.add_argument("--cache", help="answer cache file (default OUT/mllm_cache.jsonl)")
    p.add_argument("--root_dir", help="dataset root, if it moved since training")
    p.add_argument("--anno_path", help="annotation file, if it moved since training")
    p.add_argument("--device", help="device of the retrieval model (auto, cpu, cuda ...)")
    add_trust_flag(p)
    add_shard_arg(p)
    args = p.parse_args(argv)
    if (args.run is None) == (args.config is None):
        p.error("give either --run RUN_DIR, or --checkpoint FILE [FILE] with --config CONFIG")
    if args.run is not None and len(args.checkpoint) != 1:
        p.error("with --run, give one --checkpoint (best, last or a .pth path)")
    check_thi_args(p, args)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def add_thi_args(p) -> None:
    """THI's own settings, shared with the search page (app.py), which runs the same rounds on one query."""
    p.add_argument("--rounds", type=int, default=5, help="K: interaction rounds = candidates per query")
    p.add_argument("--xi", type=float, help="gate threshold on s1 (default 0.55 on ICFG-PEDES, else 0.5)")
    p.add_argument("--lam", type=float, default=0.8, help="S_final = lam S_base + (1 - lam) S_hat")


def check_thi_args(p, args) -> None:
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if not 0 <= args.lam <= 1:
        p.error("--lam must be in [0, 1]")


def default_xi(dataset_name: str) -> float:
    return DEFAULT_XI.get(dataset_name, FALLBACK_XI)


@contextlib.contextmanager
def retrieval_off_the_gpu(run, sims: RunSimilarity):
    """While the MLLM works, the retrieval side holds no GPU memory; its model(s) come back afterwards, for the
    refined queries.  vLLM refuses to start unless --gpu_memory_utilization of the card is free, and the
    similarity matrices alone can take gigabytes (one 19,848 x 19,848 fp32 matrix on ICFG-PEDES is 1.6 GB;
    twins keep seven).  Only the headline matrix is used from here on, and it is on the CPU already."""
    sims.rows = {sims.headline: sims.base}
    on_gpu = run.device.type == "cuda"
    if on_gpu:
        for model in run.models:
            model.to("cpu")
        sims.image_feats = [f.cpu() for f in sims.image_feats]
        gc.collect()
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        if on_gpu:
            for model in run.models:
                model.to(run.device)
            sims.image_feats = [f.to(run.device) for f in sims.image_feats]


def main(argv=None) -> dict:
    """Runs THI; returns {'metrics': {row: metrics}, 'states': [QueryState], 'base': S_base, 'final': S_final}
    (S_final after the last round; both [queries, gallery])."""
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return run_thi(argv)


def run_thi(argv: list[str]) -> dict:
    args = parse(argv)
    stem = os.path.splitext(os.path.basename(args.checkpoint[0]))[0]
    out = args.out or (os.path.join(args.run, "thi") if args.run else os.path.join("logs", "thi", stem))
    os.makedirs(out, exist_ok=True)
    log_file = "thi_log.txt" if args.shard is None else args.shard.own_file("thi_log.txt")
    log = setup_logger(out, name="thi", filename=log_file)   # thi.* modules log through it
    library_bars_follow_terminal()

    # the backend first: a missing vLLM or model folder is reported before the dataset is read
    backend = backend_from_args(args)
    where = dict(root_dir=args.root_dir, anno_path=args.anno_path, device=args.device)
    run = (load_run(args.run, **where) if args.run else
           load_checkpoint_files(args.checkpoint, args.config, out_dir=out, **where))
    xi = args.xi if args.xi is not None else default_xi(run.cfg.dataset_name)
    run.load_weights(args.checkpoint[0])
    for report in run.reports or []:
        log.info("\n%s", "\n".join(report.lines()))
    sims = RunSimilarity(run, args.split)
    split = sims.split
    n = len(split.captions) if args.limit is None else min(args.limit, len(split.captions))
    s_base = sims.base[:n]
    captions, query_pids = split.captions[:n], split.caption_pids[:n]

    cache = AnswerCache(args.cache or os.path.join(out, "mllm_cache.jsonl"), args.shard)
    states = new_states(s_base, captions, args.rounds)
    asked = states if args.shard is None else args.shard.take(states)
    with retrieval_off_the_gpu(run, sims):
        localise(asked, split.img_paths,
                 lambda reqs: ask(backend, cache, "yes_probability", reqs, args.batch_size), args.rounds, xi)
        refine(asked, split.img_paths,
               lambda reqs: ask(backend, cache, "generate", reqs, args.batch_size, max_new_tokens=args.max_new_tokens))
    log.info("%s", cache.summary())
    if args.shard is not None:
        log.info("shard %s: %d of %d queries asked, answers in %s; when every shard is done, run the same command "
                 "without --shard for the metrics", args.shard, len(asked), n, cache.path)
        return {"states": asked}

    refined = [s for s in states if s.refined is not None]
    refined_rows = sims.of_captions([s.refined for s in refined])
    metrics = {f"base ({sims.headline})": rank_metrics(s_base, query_pids, split.image_pids)}
    for r in range(args.rounds):
        upto = [i for i, s in enumerate(refined) if s.anchor_round <= r]
        s_final = reranked(s_base, refined_rows[upto], [refined[i].query for i in upto],
                           [refined[i].anchor for i in upto], args.lam)
        metrics[f"THI round {r + 1}"] = rank_metrics(s_final, query_pids, split.image_pids)

    title = (f"THI on {run.cfg.dataset_name} {args.split} ({n} queries; K={args.rounds}, xi={xi}, lam={args.lam}; "
             f"{len(refined)} refined, {sum(s.error is not None for s in states)} failed)")
    log.info("\n%s", metrics_table(metrics, title))
    write_jsonl(os.path.join(out, "queries.jsonl"), [s.to_json() for s in states])
    write_json(os.path.join(out, "metrics.json"), {
        "metrics": metrics, "rounds": args.rounds, "xi": xi, "lam": args.lam, "queries": n,
        "checkpoint": args.checkpoint[0] if args.run else args.checkpoint, "model_id": backend.model_id, "dataset_name": run.cfg.dataset_name})
    # every query of the split (those past --limit keep their base row): what test.py --visualize compares
    full = sims.base.clone()
    full[:n] = s_final
    atomic_save(full, os.path.join(out, "final_similarity.pt"))
    log.info("refined queries, anchors and answers: %s", os.path.join(out, "queries.jsonl"))
    return {"metrics": metrics, "states": states, "final": s_final, "base": s_base}

