"""Evaluate a run folder's best.pth and last.pth with the run's own saved config, or checkpoint files with a config.

    python test.py --run logs/CUHK-PEDES/20260101_120000_RDE
    python test.py --run RUN_DIR --checkpoint best --root_dir /other/data/root
    python test.py --checkpoint RDE_best.pth --config configs/rde/cuhk.yaml --root_dir /data     # published weights
    python test.py --checkpoint A.pth B.pth --config configs/recommended.yaml                     # two files: twins

Checkpoint files may be in RDE / ICL, IRRA-family or MLLM4Text-ReID layout, or written by main.py
(model/published.py); every tensor of a file is reported as loaded or unused, with the reason.  With --config,
any training option can follow to override the file (--embeddings bge, --img_size 384 128, --text_length 77 ...).
"""
import argparse
import os
import sys

from configs import build_parser
from inference.runs import load_checkpoint_files, load_run
from utils.logger import setup_logger
from utils.safe_load import add_trust_flag, command


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)   # unknown options go on to main.py's parser whole
    p.add_argument("--run", help="run folder made by main.py (holds configs.yaml and *.pth)")
    p.add_argument("--config", help="options file (e.g. configs/rde/cuhk.yaml) for --checkpoint files, instead of --run")
    p.add_argument("--checkpoint", nargs="+",
                   help="with --run: checkpoint names in the run folder or .pth paths, each evaluated (default: best "
                        "last); with --config: one checkpoint file, or two for twins")
    add_trust_flag(p)
    p.add_argument("--out", default="", help="with --config: folder for test_log.txt and --visualize pictures")
    p.add_argument("--root_dir", help="dataset root, if it moved since training")
    p.add_argument("--anno_path", help="annotation file, if it moved since training")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--device", help="auto, cpu, cuda ...")
    p.add_argument("--test_batch_size", type=int)
    p.add_argument("--num_workers", type=int)
    p.add_argument("--image_cache", choices=("true", "false"),
                   help="read the gallery from the image cache (default: the run's setting)")
    p.add_argument("--image_cache_dir", help="folder of the image caches (default: the run's setting)")
    p.add_argument("--visualize", type=int, default=0, metavar="N",
                   help="draw N queries with their top-10 into RUN_DIR/visualize/ (first --checkpoint)")
    p.add_argument("--visualize_mode", choices=["random", "worst"], default="random",
                   help="which queries: a seeded random sample, or the worst by rank of the first correct image")
    args, rest = p.parse_known_args(argv)
    if (args.run is None) == (args.config is None):
        p.error("give either --run RUN_DIR, or --checkpoint FILE [FILE] with --config CONFIG")
    if args.config is not None:
        if not args.checkpoint:
            p.error("--config needs --checkpoint FILE (or two files for twins)")
        if args.visualize and not args.out:
            p.error("--visualize with --config needs --out DIR for the pictures")
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)} (training options can only be overridden with --config; "
                "a run folder is evaluated with its own)")
    # the options of main.py, typed after --config, override the file (only the ones given appear)
    args.options = vars(build_parser().parse_args(rest)) if rest else {}
    args.options.pop("config", None)
    args.checkpoint = args.checkpoint or ["best", "last"]
    return args


def main(argv=None) -> dict:
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return evaluate(argv)


def evaluate(argv: list[str]) -> dict:
    args = parse(argv)
    overrides = dict(root_dir=args.root_dir, anno_path=args.anno_path, device=args.device,
                     test_batch_size=args.test_batch_size, num_workers=args.num_workers,
                     image_cache=None if args.image_cache is None else args.image_cache == "true",
                     image_cache_dir=args.image_cache_dir)
    if args.config is not None:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        run = load_checkpoint_files(args.checkpoint, args.config, out_dir=args.out, **args.options, **overrides)
        log = setup_logger(args.out or None, filename="test_log.txt")
        names = [" + ".join(os.path.basename(f) for f in args.checkpoint)]
    else:
        run = load_run(args.run, **overrides)
        log = setup_logger(args.run, filename="test_log.txt")
        names = args.checkpoint
    evaluator = run.evaluator(args.split)
    all_results = {}
    for name in names:
        ckpt = run.load_weights(name)
        for report in run.reports or []:
            log.info("\n%s", "\n".join(report.lines()))
        title = f"{os.path.basename(name)} (epoch {ckpt['epoch']}), {run.cfg.dataset_name} {args.split}"
        results, table = evaluator.evaluate(run.models, title=title)
        log.info("\n%s", table)
        all_results[name] = results
    if args.visualize:
        from reports.ranklists import visualize_run
        for path in visualize_run(run, evaluator, args.checkpoint[0], args.visualize, args.visualize_mode):
            log.info("wrote %s", path)
    return all_results


if __name__ == "__main__":
    main()
