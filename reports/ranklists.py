"""Rank-list pictures: a caption above its top-k gallery images (PIL only, so no plotting stack is needed).

Used by `test.py --visualize N` (correct images framed green, wrong ones red; with THI output, before and
after re-ranking side by side for the queries THI re-ranked) and by `retrieve.py --save` (no ground truth:
neutral frames, each image's file name listed under the row).
"""
from __future__ import annotations

import json
import os
import random
import textwrap

import torch
from PIL import Image, ImageDraw, ImageFont

from utils.safe_load import load as safe_load

THUMB = (64, 128)          # (width, height) of one gallery image: person crops are about 1:2 to 1:3
FRAME = 4                  # frame width, thick enough to read green / red at a glance
GAP = 6
GREEN, RED, GREY = (30, 170, 60), (215, 40, 40), (150, 150, 150)
BACKGROUND = (255, 255, 255)


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)  # scalable since Pillow 10.1
    except TypeError:
        return ImageFont.load_default()


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("Hg")
    return bottom + 3


def thumbnail(path: str, size: tuple[int, int] = THUMB) -> Image.Image:
    """The image fitted into `size` (aspect kept, grey padding); an unreadable file becomes a grey box."""
    canvas = Image.new("RGB", size, (225, 225, 225))
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail(size, Image.Resampling.BICUBIC)
            canvas.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    except Exception:  # noqa: BLE001 - a picture is still useful with one grey cell
        ImageDraw.Draw(canvas).line([(0, 0), size], fill=RED, width=2)
    return canvas


def _fit(text: str, font, width: float) -> str:
    """text cut from the left to fit `width` pixels: the end of a path (the file name) tells images apart."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("..." + text) > width:
        text = text[1:]
    return "..." + text


def ranklist_picture(caption: str, paths: list[str], scores: list[float], correct: list[bool] | None = None,
                     title: str | None = None, extra: tuple[str, str] | None = None,
                     names: list[str] | None = None) -> Image.Image:
    """One row: title and caption on top, then each image with its rank and score underneath.

    correct: per image True (green frame) / False (red); None for grey frames (no ground truth).
    extra: (label, path) of one more image drawn after a gap, e.g. the first correct one when it is
    ranked below the top-k, so a failure shows what should have been found.
    names: one label per image, listed under the row as '#rank  name' (a thumbnail is too narrow to hold a
    file name, and a picture of results is of little use if the files cannot be found again).
    """
    font, small = _font(13), _font(11)
    cells = len(paths) + (1 if extra else 0)
    cell_w = THUMB[0] + 2 * FRAME
    width = max(cells * (cell_w + GAP) + GAP + (3 * GAP if extra else 0), 360)
    chars = max(20, int(width / (font.getlength("n") or 7)))
    title_lines = textwrap.wrap(title, chars) if title else []
    lines = title_lines + textwrap.wrap(caption, chars) or [""]
    line_h, small_h = _text_height(font), _text_height(small)
    top = GAP + len(lines) * line_h + GAP
    height = top + THUMB[1] + 2 * FRAME + small_h * 2 + GAP + (len(names) * small_h + GAP if names else 0)
    pic = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(pic)
    for k, line in enumerate(lines):
        draw.text((GAP, GAP + k * line_h), line, fill=(60, 60, 160) if k < len(title_lines) else (0, 0, 0), font=font)

    def cell(x: int, path: str, colour, label: str, score: str) -> None:
        draw.rectangle([x, top, x + cell_w - 1, top + THUMB[1] + 2 * FRAME - 1], fill=colour)
        pic.paste(thumbnail(path), (x + FRAME, top + FRAME))
        y = top + THUMB[1] + 2 * FRAME + 1
        draw.text((x, y), label, fill=(0, 0, 0), font=small)
        draw.text((x, y + small_h), score, fill=(90, 90, 90), font=small)

    for r, (path, score) in enumerate(zip(paths, scores)):
        colour = GREY if correct is None else (GREEN if correct[r] else RED)
        cell(GAP + r * (cell_w + GAP), path, colour, f"#{r + 1}", f"{score:.3f}")
    if extra:
        x = GAP + len(paths) * (cell_w + GAP) + 3 * GAP
        draw.line([(x - 2 * GAP, top), (x - 2 * GAP, top + THUMB[1] + 2 * FRAME)], fill=GREY, width=1)
        cell(x, extra[1], GREEN, extra[0], "")
    for r, name in enumerate(names or []):
        y = top + THUMB[1] + 2 * FRAME + small_h * 2 + GAP + r * small_h
        draw.text((GAP, y), _fit(f"#{r + 1}  {name}", small, width - 2 * GAP), fill=(0, 0, 0), font=small)
    return pic


def stack(pictures: list[Image.Image], horizontal: bool = False, gap: int = GAP) -> Image.Image:
    """Pictures one below the other (or side by side), on white."""
    if horizontal:
        size = (sum(p.width for p in pictures) + gap * (len(pictures) - 1), max(p.height for p in pictures))
    else:
        size = (max(p.width for p in pictures), sum(p.height for p in pictures) + gap * (len(pictures) - 1))
    out = Image.new("RGB", size, (200, 200, 200) if gap else BACKGROUND)
    offset = 0
    for p in pictures:
        out.paste(p, (offset, 0) if horizontal else (0, offset))
        offset += (p.width if horizontal else p.height) + gap
    return out


# --------------------------------------------------------------------------- test.py --visualize


def first_correct_ranks(sims: torch.Tensor, query_pids, gallery_pids, chunk: int = 1024) -> torch.Tensor:
    """[Q] 1-based rank of each query's first correct gallery image (what mINP and 'worst' are about).

    Counted as 1 + the number of gallery images scoring above the best correct one: no [Q, G] sort needed.
    """
    qp = torch.as_tensor(query_pids, device=sims.device)
    gp = torch.as_tensor(gallery_pids, device=sims.device)
    ranks = []
    for start in range(0, sims.shape[0], chunk):
        s = sims[start:start + chunk].float()
        match = qp[start:start + chunk, None] == gp[None, :]
        best = s.masked_fill(~match, float("-inf")).max(dim=1, keepdim=True).values
        ranks.append(1 + (s > best).sum(dim=1))
    return torch.cat(ranks).cpu()


def pick_queries(ranks: torch.Tensor, n: int, mode: str, seed: int = 0) -> list[int]:
    """n query indices: the worst ranked (ties: lower index first) or a seeded random sample."""
    n = min(n, len(ranks))
    if mode == "worst":
        return torch.sort(-ranks, stable=True).indices[:n].tolist()
    if mode == "random":
        return sorted(random.Random(seed).sample(range(len(ranks)), n))
    raise ValueError(f"visualize mode {mode!r}: expected random or worst")


def query_picture(q: int, sims: torch.Tensor, split, rank: int, topk: int = 10, title: str = "") -> Image.Image:
    scores, order = sims[q].float().topk(min(topk, sims.shape[1]))
    qpid = split.caption_pids[q]
    correct = [split.image_pids[g] == qpid for g in order.tolist()]
    extra = None
    if rank > len(correct):  # the first correct image is below the top-k: show it and where it went
        first = next(g for g in sims[q].argsort(descending=True).tolist() if split.image_pids[g] == qpid)
        extra = (f"GT #{rank}", split.img_paths[first])
    return ranklist_picture(split.captions[q], [split.img_paths[g] for g in order.tolist()], scores.tolist(),
                            correct, title=f"{title}query {q}, first correct at rank {rank}", extra=extra)


def load_thi_similarity(run_dir: str, shape) -> torch.Tensor | None:
    """RUN_DIR/thi/final_similarity.pt ([queries, gallery], THI's re-ranked scores) when present and matching."""
    path = os.path.join(run_dir, "thi", "final_similarity.pt")
    if not os.path.isfile(path):
        return None
    sims = safe_load(path, "similarity file", "; it is written by python -m thi: run it again")
    if not isinstance(sims, torch.Tensor) or tuple(sims.shape) != tuple(shape):
        got = tuple(sims.shape) if isinstance(sims, torch.Tensor) else type(sims).__name__
        raise SystemExit(f"{path}: expected a [queries, gallery] = {tuple(shape)} tensor of this split, got {got}")
    return sims.float()


def load_thi_queries(run_dir: str) -> dict[int, dict] | None:
    """{query index: THI's record of it} from RUN_DIR/thi/queries.jsonl (one line per query THI ran on);
    None when THI wrote no such file."""
    path = os.path.join(run_dir, "thi", "queries.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return {rec["query"]: rec for rec in map(json.loads, filter(str.strip, f))}


def thi_unchanged_reason(q: int, thi_queries: dict[int, dict] | None) -> str | None:
    """Why THI's ranking of query q is its base ranking, or None when THI re-ranked it (or cannot tell).

    final_similarity.pt holds every query of the split, those THI never asked (past `thi --limit`) and those
    it asked without refining keeping their base row: drawing them 'before | after' shows two identical
    lists that look like THI changed nothing on purpose.
    """
    if thi_queries is None:      # THI output without queries.jsonl: assume every row was re-ranked
        return None
    state = thi_queries.get(q)
    if state is None:
        return "not asked by THI (past thi --limit)"
    if state.get("refined") is None:
        why = state.get("error") or "no candidate accepted by the gate"
        return f"THI kept the base ranking ({why[:80]})"
    return None


def visualize_run(run, evaluator, checkpoint: str, n: int, mode: str = "random", topk: int = 10,
                  seed: int = 0) -> list[str]:
    """Write N rank-list pictures of `checkpoint` into RUN_DIR/visualize/; returns their paths.

    Rankings use the fused similarity test.py reports (the evaluator's last row).  With THI output the
    re-ranked list is drawn to the right of queries THI re-ranked; the others are drawn once, their title
    saying why THI left them as they were.  'worst' is chosen by the model's own ranking (before THI).
    """
    run.load_weights(checkpoint)
    sims = list(evaluator.similarity_rows(run.models).values())[-1].cpu()
    split = evaluator.split
    ranks = first_correct_ranks(sims, split.caption_pids, split.image_pids)
    thi = load_thi_similarity(run.cfg.run_dir, sims.shape)
    thi_ranks = first_correct_ranks(thi, split.caption_pids, split.image_pids) if thi is not None else None
    thi_queries = load_thi_queries(run.cfg.run_dir) if thi is not None else None
    out_dir = os.path.join(run.cfg.run_dir, "visualize")
    try:
        os.makedirs(out_dir, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(13, "not writable", out_dir)
    except OSError as e:      # someone else's read-only run folder
        raise SystemExit(f"--visualize: cannot write the pictures into {out_dir} ({e.strerror}; the run folder is "
                         "read-only?); evaluate without --visualize, or copy the run folder somewhere writable")
    written = []
    for k, q in enumerate(pick_queries(ranks, n, mode, seed), 1):
        unchanged = thi_unchanged_reason(q, thi_queries) if thi is not None else None
        if thi is None or unchanged:
            pic = query_picture(q, sims, split, int(ranks[q]), topk, title=f"{unchanged}: " if unchanged else "")
        else:
            pic = stack([query_picture(q, sims, split, int(ranks[q]), topk, title="before THI: "),
                         query_picture(q, thi, split, int(thi_ranks[q]), topk, title="after THI: ")],
                        horizontal=True)
        path = os.path.join(out_dir, f"{mode}_{k:02d}_query{q}.png")
        pic.save(path)
        written.append(path)
    return written
