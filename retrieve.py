"""Search a folder of person crops with a trained run: text in, ranked image files out.

    python retrieve.py --run RUN_DIR --images FOLDER --query "a woman in a red coat" [--topk 10]
    python retrieve.py --run RUN_DIR --images FOLDER --queries queries.txt --save ranked.png

The folder is embedded once; the features are cached in FOLDER/.reid_index/ and only new or changed files
are embedded again.  Scores are the fused similarity test.py reports (mean cosine over every embedding of
every model, twins included).
"""
import argparse
import logging
import os
import sys

from inference.retrieval_index import load_encoders, open_index, query_notes, search
from utils.safe_load import add_trust_flag, command


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder made by main.py (holds configs.yaml and *.pth)")
    p.add_argument("--images", required=True, help="folder of person images (searched recursively)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", help="one description")
    what.add_argument("--queries", help="text file, one description per line")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .pth file")
    p.add_argument("--device", help="auto, cpu, cuda ...")
    p.add_argument("--batch_size", type=int, help="images per batch while indexing (default: the run's)")
    p.add_argument("--num_workers", type=int, help="image loading workers (default: the run's)")
    add_trust_flag(p)
    p.add_argument("--save", metavar="PNG", help="draw each query above its top-k images into this file")
    return p.parse_args(argv)


def read_queries(args) -> list[str]:
    if args.query is not None:
        queries = [args.query]
    else:
        try:
            with open(args.queries, encoding="utf-8") as f:
                queries = [line.strip() for line in f]
        except OSError as e:
            raise SystemExit(f"--queries {args.queries}: {e.strerror}") from None
    queries = [q for q in queries if q]
    if not queries:
        raise SystemExit("no query given (empty --query, or --queries file without non-empty lines)")
    return queries


def main(argv=None) -> list[dict]:
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return run(argv)


def run(argv: list[str]) -> list[dict]:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    queries = read_queries(args)
    enc = load_encoders(args.run, args.checkpoint, args.device)
    index, report = open_index(args.images, enc, args.batch_size, args.num_workers)
    print(f"{index.folder}: {len(index.paths)} images ({report})")
    results = []
    for query, hits in zip(queries, search(index, enc, queries, args.topk)):
        print(f"\n{query}")
        for note in query_notes(query, enc.cfg.text_length):
            print(f"  note: {note}")
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:4d}  {score:.4f}  {path}")
        results.append({"query": query, "hits": hits})
    if args.save:
        from reports.ranklists import ranklist_picture, stack

        rows = [ranklist_picture(r["query"], [os.path.join(index.folder, p) for p, _ in r["hits"]],
                                 [s for _, s in r["hits"]], names=[p for p, _ in r["hits"]]) for r in results]
        stack(rows).save(args.save)
        print(f"\nwrote {args.save}")
    return results


if __name__ == "__main__":
    main()
