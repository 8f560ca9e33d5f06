"""LoRA SFT data for THI's localisation question (docs/METHOD.md §7.3), built from a trained run:

    python -m thi.sft_data --run RUN_DIR --out DIR [--negatives_per_positive 1] [--limit N]

For each training caption: a positive, the caption with its own image -> "Yes", and hard negatives, the caption
with one of the 10 training images of another identity most similar to it under the run's trained model(s)
(fused as test.py fuses its headline row) -> "No".  The question is thi/prompts.py's LOCALISATION_PROMPT, the
one THI asks, under its SYSTEM_PROMPT.

Writes, in LLaMA-Factory's multimodal sharegpt format (so that its users can train as ICL did):
    DIR/thi_sft.json        [{"messages": [user "<image>PROMPT", assistant "Yes"|"No"], "images": [path],
                              "system": SYSTEM_PROMPT}, ...]; per caption its positive, then its negatives
    DIR/dataset_info.json   the "thi_sft" entry (added to the file if DIR already has one)
    DIR/thi_sft_meta.json   where the data came from (run, checkpoint, pool, seed) and counts
python -m thi.sft trains on DIR without leaving the project.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from datasets.loaders import CaptionList, ImageFolderList
from datasets.transforms import build_transforms
from evaluation.evaluator import encode_loader, similarity_rows
from inference.runs import load_run
from mllm.backends import SYSTEM_PROMPT
from model import similarities
from utils.files import write_json
from utils.logger import setup_logger
from .prompts import localisation_prompt

HARD_POOL = 10          # docs/METHOD.md §7.2 (ref): negatives are drawn among the 10 most similar images
DATA_FILE, INFO_FILE, META_FILE = "thi_sft.json", "dataset_info.json", "thi_sft_meta.json"
DATASET_NAME = "thi_sft"
IMAGE_TOKEN = "<image>"  # LLaMA-Factory's placeholder; THI shows the image before the prompt, so it leads


@dataclass(frozen=True)
class Sample:
    caption: int            # index among the run's training captions
    image: int              # index among the unique training images
    answer: str             # "Yes" or "No"


def unique_images(train) -> tuple[list[str], list[int]]:
    """(path, pid) of each training image, indexed by TrainRecord.image_id."""
    paths, pids = {}, {}
    for r in train:
        paths[r.image_id], pids[r.image_id] = r.img_path, r.pid
    return [paths[i] for i in range(len(paths))], [pids[i] for i in range(len(pids))]


@torch.no_grad()
def hard_negative_pools(run, captions: list[str], caption_pids: list[int], image_paths: list[str],
                        image_pids: list[int], pool: int = HARD_POOL, chunk: int = 1024,
                        progress: bool = True) -> torch.Tensor:
    """[len(captions), k] indices of the k = min(pool, ...) images of other identities most similar to each
    caption, best first, under the run's fused similarity.  Images are encoded once; the similarity is made
    `chunk` captions at a time, so that a 68k x 34k matrix is never held."""
    cfg = run.cfg
    images = DataLoader(ImageFolderList(image_paths, build_transforms(tuple(cfg.img_size), is_train=False)),
                        batch_size=cfg.test_batch_size, num_workers=cfg.num_workers)
    texts = DataLoader(CaptionList(captions, cfg.text_length), batch_size=cfg.test_batch_size,
                       num_workers=cfg.num_workers)
    image_feats = [encode_loader(m, images, "image", run.device, run.dtype, progress) for m in run.models]
    text_feats = [encode_loader(m, texts, "caption", run.device, run.dtype, progress) for m in run.models]
    image_pid = torch.as_tensor(image_pids, device=run.device)
    caption_pid = torch.as_tensor(caption_pids, device=run.device)
    # every caption has at least this many images of other identities
    k = min(pool, len(image_pids) - max(Counter(image_pids).values()))
    if k < 1:
        raise SystemExit("the training set has a single identity: there are no negatives to draw")
    out = []
    for start in range(0, len(captions), chunk):
        rows = slice(start, start + chunk)
        per_model = [similarities(img, {name: f[rows] for name, f in txt.items()})
                     for img, txt in zip(image_feats, text_feats)]
        sim = list(similarity_rows(per_model).values())[-1]        # test.py's headline: fusion / ensemble
        sim = sim.masked_fill(caption_pid[rows, None] == image_pid[None, :], float("-inf"))
        out.append(sim.topk(k, dim=1).indices.cpu())
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


def build_samples(run, negatives_per_positive: int = 1, limit: int | None = None, pool: int = HARD_POOL,
                  seed: int = 0, chunk: int = 1024, progress: bool = True) -> list[Sample]:
    """Per training caption (the first `limit`): its positive, then its negatives drawn at random (seeded)
    from its pool of hard negatives."""
    train = run.dataset.train[:limit]
    image_paths, image_pids = unique_images(run.dataset.train)
    pools = hard_negative_pools(run, [r.caption for r in train], [r.pid for r in train], image_paths,
                                image_pids, pool, chunk, progress)
    rng = random.Random(seed)
    n = min(negatives_per_positive, pools.shape[1])
    samples = []
    for i, r in enumerate(train):
        samples.append(Sample(i, r.image_id, "Yes"))
        for rank in sorted(rng.sample(range(pools.shape[1]), n)):
            samples.append(Sample(i, int(pools[i, rank]), "No"))
    return samples


def sharegpt(sample: Sample, captions: list[str], image_paths: list[str]) -> dict:
    return {"messages": [{"role": "user", "content": IMAGE_TOKEN + localisation_prompt(captions[sample.caption])},
                         {"role": "assistant", "content": sample.answer}],
            "images": [image_paths[sample.image]],
            "system": SYSTEM_PROMPT}


DATASET_INFO = {
    "file_name": DATA_FILE,
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "images": "images", "system": "system"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system"},
}


def write_dataset(out: str, samples: list[Sample], captions: list[str], image_paths: list[str], meta: dict) -> str:
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, DATA_FILE), [sharegpt(s, captions, image_paths) for s in samples])
    info_path = os.path.join(out, INFO_FILE)
    info = {}
    if os.path.isfile(info_path):          # a LLaMA-Factory data folder: keep its other datasets
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    info[DATASET_NAME] = DATASET_INFO
    write_json(info_path, info)
    write_json(os.path.join(out, META_FILE), meta)
    return os.path.join(out, DATA_FILE)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m thi.sft_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder made by main.py (its trained model ranks the negatives)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--negatives_per_positive", type=int, default=1)
    p.add_argument("--pool", type=int, default=HARD_POOL, help="negatives are drawn among this many most similar")
    p.add_argument("--limit", type=int, help="only the first N training captions (quick looks)")
    p.add_argument("--checkpoint", default="best", help="best, last or a .pth path")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw among the pool")
    p.add_argument("--chunk", type=int, default=1024, help="captions per block of the similarity matrix")
    p.add_argument("--root_dir", help="dataset root, if it moved since training")
    p.add_argument("--anno_path", help="annotation file, if it moved since training")
    p.add_argument("--device", help="device of the retrieval model (auto, cpu, cuda ...)")
    args = p.parse_args(argv)
    for name in ("negatives_per_positive", "pool", "chunk", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv=None) -> list[Sample]:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    log = setup_logger(args.out, name="thi", filename="sft_data_log.txt")
    run = load_run(args.run, root_dir=args.root_dir, anno_path=args.anno_path, device=args.device)
    run.load_weights(args.checkpoint)
    samples = build_samples(run, args.negatives_per_positive, args.limit, args.pool, args.seed, args.chunk)
    train = run.dataset.train
    image_paths, _ = unique_images(train)
    positives = sum(s.answer == "Yes" for s in samples)
    meta = {"run": os.path.abspath(args.run), "checkpoint": args.checkpoint, "dataset": run.cfg.dataset_name,
            "pool": args.pool, "negatives_per_positive": args.negatives_per_positive, "seed": args.seed,
            "captions": positives, "positives": positives, "negatives": len(samples) - positives,
            "system_prompt": SYSTEM_PROMPT, "prompt": localisation_prompt("{caption}")}
    path = write_dataset(args.out, samples, [r.caption for r in train], image_paths, meta)
    log.info("%d samples (%d positives, %d hard negatives) from %s: %s; LLaMA-Factory dataset '%s' in %s",
             len(samples), positives, len(samples) - positives, args.run, path, DATASET_NAME,
             os.path.join(args.out, INFO_FILE))
    return samples


if __name__ == "__main__":
    main()
