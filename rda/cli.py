"""RDA captions for a dataset: python -m rda --config CONFIG.yaml --model_dir QWEN2_VL_DIR --out OUT.json

Runs docs/METHOD.md §8 on every training caption (enrichment with THI's VQA + aggregation on its own image,
decomposition, rewriting into --m paraphrases) and writes the dataset's annotation file again, every record of
every split, with `diversity_captions` added to the training records: train with it by
`python main.py --config CONFIG.yaml --anno_path OUT.json`.

Beside OUT (OUT without .json, plus a suffix):
    .cache.jsonl     every MLLM answer: a killed run started again asks only what is missing
    .details.jsonl   one line per processed caption: enriched text, sub-sentences, groups, why it fell back
    .summary.json    how many captions were augmented, how many fell back and why
A caption that fails or whose reply is mangled keeps its original caption (a string entry, which the loader
uses as it is).  With --limit N only the first N training captions are augmented; the others keep theirs.
Over several GPUs: --shard K/N per process, then the same command without it (see mllm/shards.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from configs import load_yaml
from datasets import DatasetError, build_dataset
from mllm.backends import add_backend_args, backend_from_args
from mllm.cache import AnswerCache, ask
from mllm.shards import add_shard_arg
from utils.files import write_json, write_jsonl
from utils.logger import setup_logger
from utils.progress import library_bars_follow_terminal
from .pipeline import augment, summary


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m rda", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a training config (configs/*.yaml): its dataset_name, root_dir, anno_path")
    p.add_argument("--dataset_name", help="overrides the config's")
    p.add_argument("--root_dir", help="overrides the config's")
    p.add_argument("--anno_path", help="source annotation file (default: the dataset's own)")
    p.add_argument("--out", required=True, help="the annotation file to write (JSON)")
    add_backend_args(p)
    p.add_argument("--m", type=int, default=3, help="paraphrases per sub-sentence (0: reorganisation only)")
    p.add_argument("--limit", type=int, help="only the first N training captions (quick looks)")
    p.add_argument("--cache", help="answer cache file (default: beside --out)")
    add_shard_arg(p)
    args = p.parse_args(argv)
    if args.m < 0:
        p.error("--m must be at least 0")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    # the config gives what the command line leaves out; main.py's defaults after that
    config = load_yaml(args.config) if args.config else {}
    for key, default in (("dataset_name", None), ("root_dir", "data"), ("anno_path", None)):
        if getattr(args, key) is None:
            setattr(args, key, config.get(key) or default)
    if not args.dataset_name:
        p.error("give --dataset_name or a --config that names one")
    if os.path.abspath(args.out) == os.path.abspath(args.anno_path or ""):
        p.error("--out must not be the source annotation file: a failed run would lose it")
    return args


def side_file(out: str, suffix: str) -> str:
    return os.path.splitext(out)[0] + suffix


def annotated_records(dataset, entries: list) -> list[dict]:
    """The dataset's annotation records as read from its file, train records with diversity_captions (entries
    aligned with dataset.train, i.e. train records in file order, their captions in order)."""
    with open(dataset.anno_file, encoding="utf-8") as f:
        raw = json.load(f)
    # the dataset's own parser says which records are training ones (split names have aliases)
    parsed = dataset.read_records(dataset.anno_file)
    k = 0
    for record, rec in zip(raw, parsed):
        if rec.split == "train":
            record["diversity_captions"] = entries[k:k + len(rec.captions)]
            k += len(rec.captions)
    if k != len(entries):
        raise RuntimeError(f"{dataset.anno_file}: {k} training captions in the file, {len(entries)} processed")
    return raw


def main(argv=None) -> dict:
    """Runs RDA; returns the summary (also written beside --out)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    log_file = os.path.basename(side_file(out, ".log.txt"))
    log = setup_logger(os.path.dirname(out), name="rda",
                       filename=log_file if args.shard is None else args.shard.own_file(log_file))
    library_bars_follow_terminal()

    # the backend first: a missing vLLM or model folder is reported before the dataset is read
    backend = backend_from_args(args)
    try:
        dataset = build_dataset(args.dataset_name, args.root_dir, args.anno_path)
    except DatasetError as e:
        raise SystemExit(str(e)) from None
    train = dataset.train
    n = len(train) if args.limit is None else min(args.limit, len(train))
    log.info("RDA on %s (%s): %d of %d training captions, m=%d, model %s", dataset.name, dataset.anno_file, n,
             len(train), args.m, backend.model_id)

    cache = AnswerCache(args.cache or side_file(out, ".cache.jsonl"), args.shard)

    def ask_text(requests):
        return ask(backend, cache, "generate", requests, args.batch_size, max_new_tokens=args.max_new_tokens)

    todo = train[:n] if args.shard is None else args.shard.take(train[:n])
    pairs = augment([r.caption for r in todo], [r.img_path for r in todo], ask_text, args.m)
    log.info("%s", cache.summary())
    if args.shard is not None:
        log.info("shard %s: %d of %d captions processed, answers in %s; when every shard is done, run the same "
                 "command without --shard to write %s", args.shard, len(todo), n, cache.path, out)
        return {"shard": str(args.shard), "processed": len(todo)}
    entries = [p.entry for p in pairs] + [r.caption for r in train[n:]]
    write_json(out, annotated_records(dataset, entries), indent=None)   # compact: annotation files are large
    write_jsonl(side_file(out, ".details.jsonl"), [p.to_json() for p in pairs])
    result = summary(pairs, len(train))
    write_json(side_file(out, ".summary.json"), result)
    log.info("augmented %d of %d captions processed (%.1f groups each); %d kept their original caption%s",
             result["augmented"], n, result["groups_per_caption"], result["fell_back"],
             "".join(f"\n  {count:6d}  {why}" for why, count in result["reasons"].items()))
    if result["sentences_without_paraphrase"]:
        log.info("%d sub-sentences got no usable paraphrase (their group holds the sub-sentence only)",
                 result["sentences_without_paraphrase"])
    log.info("wrote %s: train with  python main.py ... --anno_path %s", out, out)
    return result
