"""The per-epoch division at realistic size, minus the feature extraction (bench/eval.py times that).

(a) loss pass: `solver.division_reads.division_signals`, what the clean division read runs after feature extraction, on
    random features already on the device: the per-sample loss of every training pair (the first training loss,
    in chunks of the batch size, in-batch negatives as in training) under each embedding of each model, plus the
    positive-pair cosine.  N = 68,126 pairs (CUHK-PEDES's training captions, 34,054 images,
    11,003 identities) by default on a GPU.
(b) mixture + consensus: `Engine.fit_division` and `Engine.weigh` on those signals: one two-component Gaussian mixture per
    signal (sklearn, CPU), then CCD's consensus (or ALR's weights with --weighting alr).  Timed for RDE's
    mild-noise settings (noisy rate <= 0.4: max_iter 10, tol 1e-2) and heavy-noise settings (max_iter 100).

    python bench/division.py                         # GPU: CUHK size, single and twin
    python bench/division.py --small                 # CPU: 8,192 pairs
"""
from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import CUHK_TRAIN, add_common_args, finish_args, free_memory, report, timed  # noqa: E402

# the backbone does not take part (features are given): a tiny one, with the real feature sizes
TINY_BACKBONE = {"embed_dim": 512, "vision_width": 64, "vision_layers": 1, "vision_heads": 1,
                 "text_width": 64, "text_heads": 1, "text_layers": 1, "vocab_size": 49408}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_pairs", type=int, default=None, help=f"training pairs (GPU {CUHK_TRAIN['captions']}, small 8192)")
    p.add_argument("--captions_per_image", type=float, default=CUHK_TRAIN["captions"] / CUHK_TRAIN["images"])
    p.add_argument("--num_ids", type=int, default=None, help=f"identities (GPU {CUHK_TRAIN['ids']}; scaled with N)")
    p.add_argument("--batch_size", type=int, default=64, help="the loss chunk: the training batch size")
    p.add_argument("--models", type=int, nargs="+", choices=(1, 2), default=[1, 2], help="1 = single, 2 = twins")
    p.add_argument("--embeddings", nargs="+", default=["bge", "tse"])
    p.add_argument("--bge_dim", type=int, default=512, help="BGE feature size (CLIP's embed_dim)")
    p.add_argument("--tse_dim", type=int, default=1024, help="TSE feature size")
    p.add_argument("--loss_names", default="TAL", help="the first one is the division's loss")
    p.add_argument("--noisy_rate", type=float, nargs="+", default=[0.2, 0.5],
                   help="picks RDE's mixture settings: <= 0.4 mild (max_iter 10), > 0.4 heavy (max_iter 100)")
    p.add_argument("--weighting", default="ccd", choices=("ccd", "alr"))
    p.add_argument("--repeat", type=int, default=1, help="timed repetitions (the mean is reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed loss passes and mixture fits before the timed ones (0: the first is timed, as in "
                        "bench.suite --rehearse, where a pass over 68k pairs takes seconds on a CPU)")
    p.add_argument("--read_images", type=int, default=0, metavar="N",
                   help="also time the division's data read (clean: the training images once through the eval "
                        "loader; augmented: one training-loader pass, one view per model) over N synthetic JPEGs "
                        "(2 captions each), with and without the image cache (bench/data.py read_times)")
    p.add_argument("--read_workers", type=int, default=None, help="loader workers of --read_images (default: 2 "
                                                                   "small, 8 otherwise)")
    p.add_argument("--img_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"),
                   help="image size of --read_images")
    return add_common_args(p)


def resolve_defaults(args):
    args.num_pairs = args.num_pairs or (8192 if args.small else CUHK_TRAIN["captions"])
    if args.num_ids is None:
        args.num_ids = max(1, round(CUHK_TRAIN["ids"] * args.num_pairs / CUHK_TRAIN["captions"]))
    return args


def synthetic_records(n: int, captions_per_image: float, num_ids: int) -> list:
    """What the division's read takes of the records: each pair's image_id and pid (images grouped by identity)."""
    image_of = (np.arange(n) / captions_per_image).astype(int)
    num_images = int(image_of[-1]) + 1
    pid_of_image = np.arange(num_images) * num_ids // num_images
    return [SimpleNamespace(image_id=int(i), pid=int(pid_of_image[i])) for i in image_of]


def build_trainer(args, num_models: int, noisy_rate: float):
    """An engine without data: its models give the embedding heads and losses, its fit_division and weigh the division."""
    from solver.build import build_engine
    from configs import resolve

    cfg = resolve({"pretrain_choice": "random", "clip_arch": {**TINY_BACKBONE, "embed_dim": args.bge_dim},
                   "img_size": [32, 16], "text_length": 8, "embeddings": list(args.embeddings),
                   **({"tse_dim": args.tse_dim} if "tse" in args.embeddings else {}),  # TSE's: else refused
                   "loss_names": args.loss_names, "batch_size": args.batch_size,
                   "seed": args.seed, "weighting": args.weighting, "twin": num_models == 2,
                   "dataset_name": "CUHK-PEDES", "noisy_rate": noisy_rate, "device": str(args.device)}, {})
    trainer = build_engine(cfg, num_classes=args.num_ids)
    for model in trainer.models:
        model.eval()
    return trainer


def random_features(args, model, num_images: int, num_pairs: int, seed: int, noisy_rate: float):
    """({emb: [images, D]}, {emb: [pairs, D]}) fp32 on the device, as extract_features returns them.

    Each caption is its image's feature plus noise, except a `noisy_rate` fraction of captions that belong to
    another pair's image (simulated noisy correspondence), so the losses are bimodal as the mixture expects.
    """
    g = torch.Generator().manual_seed(seed)
    image_feats, text_feats = {}, {}
    image_ids = torch.tensor([r.image_id for r in args._records])
    noisy = noisy_mask(args, noisy_rate).nonzero().squeeze(1)     # the same pairs for every model
    image_ids[noisy] = image_ids[noisy[torch.randperm(len(noisy), generator=g)]]
    for emb, head in model.embeddings.items():
        dim = getattr(head, "out_dim", None) or args.bge_dim
        img = torch.randn(num_images, dim, generator=g)
        txt = img[image_ids] + 1.5 * torch.randn(num_pairs, dim, generator=g)
        image_feats[emb], text_feats[emb] = img.to(args.device), txt.to(args.device)
    return image_feats, text_feats


def noisy_mask(args, noisy_rate: float) -> torch.Tensor:
    """The pairs whose caption random_features takes from another pair's image."""
    n = len(args._records)
    g = torch.Generator().manual_seed(args.seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:int(noisy_rate * n)]] = True
    return mask


def bench_models(args, num_models: int) -> list[dict]:
    from solver.division import gmm_settings
    from solver.division_reads import division_signals

    device = args.device
    records = args._records
    num_images = records[-1].image_id + 1
    image_ids = torch.tensor([r.image_id for r in records], device=device)
    pids = torch.tensor([r.pid for r in records], device=device)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed)).to(device)
    rows = []
    for noisy_rate in args.noisy_rate:
        trainer = build_trainer(args, num_models, noisy_rate)
        features = [random_features(args, m, num_images, len(records), args.seed + k, noisy_rate)
                    for k, m in enumerate(trainer.models)]

        def loss_pass():
            return division_signals(trainer.models, features, image_ids, pids, order, args.batch_size)

        for _ in range(args.warmup):
            loss_pass()                                             # warm-up
        loss_s, (signals, positive_sim) = timed(loss_pass, device, args.repeat)
        for _ in range(args.warmup):
            trainer.weigh(trainer.fit_division(signals, positive_sim, 0))      # warm-up
        fit_s, weights = timed(lambda: trainer.weigh(trainer.fit_division(signals, positive_sim, 1)), device,
                               args.repeat)
        settings = gmm_settings(noisy_rate, trainer.cfg.dataset_name, trainer.cfg.gmm,
                                trainer.cfg.gmm_tight_under_noise)
        rows.append({
            "models": num_models, "pairs": len(records), "images": num_images, "ids": args.num_ids,
            "chunk": args.batch_size, "signals": len(signals), "noisy_rate": noisy_rate,
            "gmm": f"max_iter {settings['max_iter']}, tol {settings['tol']:g}",
            "loss_pass_s": loss_s, "pairs_per_s": len(records) * num_models / loss_s,
            "gmm_consensus_s": fit_s, "gmm_per_signal_s": fit_s / len(signals),
            "total_s": loss_s + fit_s, "kept": int((weights >= 0.5).sum()),
            "noise_recall": 100.0 * float((weights[noisy_mask(args, noisy_rate)] < 0.5).float().mean())
            if noisy_rate > 0 else None,
        })
        del trainer, features
        free_memory(device)
    return rows


COLUMNS = [("models", "models"), ("pairs", "pairs"), ("signals", "signals"), ("gmm", "mixture settings"),
           ("loss_pass_s", "loss pass s"), ("pairs_per_s", "model-pairs/s"), ("gmm_consensus_s", "GMM+consensus s"),
           ("gmm_per_signal_s", "GMM s / signal"), ("total_s", "total s"), ("kept", "kept"),
           ("noise_recall", "noise recall %")]


def main(argv=None) -> dict:
    args = resolve_defaults(finish_args(build_parser().parse_args(argv)))
    args._records = synthetic_records(args.num_pairs, args.captions_per_image, args.num_ids)
    rows = [r for m in args.models for r in bench_models(args, m)]
    del args._records
    reads = read_division_data(args) if args.read_images else None
    return report("division", args, rows, COLUMNS,
                  title=f"bench/division.py: {args.num_pairs:,} pairs, chunks of {args.batch_size}, "
                        f"{args.loss_names.split('+')[0]} per sample, {args.weighting.upper()} (feature extraction not included)",
                  extra={"reads": reads})


def read_division_data(args) -> list[dict]:
    """The division pass's data read with and without the image cache: clean (each training image once) and
    augmented (every pair through the training loader, one view per model)."""
    from bench.data import print_reads, read_times

    workers = args.read_workers if args.read_workers is not None else (2 if args.small else 8)
    rows = read_times("gallery", args.read_images, args.img_size, 512, workers, seed=args.seed)
    for views in sorted(set(args.models)):
        rows += read_times("train", args.read_images, args.img_size, args.batch_size, workers, views=views,
                           seed=args.seed)
    print_reads(f"division read: {args.read_images:,} JPEGs / {2 * args.read_images:,} pairs at "
                f"{args.img_size[0]}x{args.img_size[1]} (clean = gallery read of the training images; augmented = "
                f"training loader)", rows)
    return rows


if __name__ == "__main__":
    main()
