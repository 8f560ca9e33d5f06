"""Evaluate a run folder's best.pth and last.pth with the run's own saved config.

    python test.py --run logs/CUHK-PEDES/20260101_120000_RDE
    python test.py --run RUN_DIR --checkpoint best --root_dir /other/data/root
"""
import argparse
import os
import sys

from utils.logger import setup_logger
from utils.runs import load_run


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder made by main.py (holds configs.yaml and *.pth)")
    p.add_argument("--checkpoint", nargs="+", default=["best", "last"],
                   help="checkpoint names in the run folder, or paths to .pth files")
    p.add_argument("--root_dir", help="dataset root, if it moved since training")
    p.add_argument("--anno_path", help="annotation file, if it moved since training")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--device", help="auto, cpu, cuda ...")
    p.add_argument("--test_batch_size", type=int)
    p.add_argument("--num_workers", type=int)
    p.add_argument("--visualize", type=int, default=0, metavar="N",
                   help="draw N queries with their top-10 into RUN_DIR/visualize/ (first --checkpoint)")
    p.add_argument("--visualize_mode", choices=["random", "worst"], default="random",
                   help="which queries: a seeded random sample, or the worst by rank of the first correct image")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    run = load_run(args.run, root_dir=args.root_dir, anno_path=args.anno_path, device=args.device,
                   test_batch_size=args.test_batch_size, num_workers=args.num_workers)
    log = setup_logger(args.run, filename="test_log.txt")
    evaluator = run.evaluator(args.split)
    all_results = {}
    for name in args.checkpoint:
        ckpt = run.load_weights(name)
        title = f"{os.path.basename(name)} (epoch {ckpt['epoch']}), {run.cfg.dataset_name} {args.split}"
        results, table = evaluator.evaluate(run.models, title=title)
        log.info("\n%s", table)
        all_results[name] = results
    if args.visualize:
        from utils.visualize import visualize_run
        for path in visualize_run(run, evaluator, args.checkpoint[0], args.visualize, args.visualize_mode):
            log.info("wrote %s", path)
    return all_results


if __name__ == "__main__":
    main()
