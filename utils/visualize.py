"""Rank-list pictures: a caption above its top-k gallery images (PIL only, so no plotting stack is needed).

Used by `test.py --visualize N` (correct images framed green, wrong ones red; with THI output, before and
after re-ranking side by side) and by `retrieve.py --save` (no ground truth: neutral frames).
"""
from __future__ import annotations

import os
import random
import textwrap

import torch
from PIL import Image, ImageDraw, ImageFont

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


def ranklist_picture(caption: str, paths: list[str], scores: list[float], correct: list[bool] | None = None,
                     title: str | None = None, extra: tuple[str, str] | None = None) -> Image.Image:
    """One row: title and caption on top, then each image with its rank and score underneath.

    correct: per image True (green frame) / False (red); None for grey frames (no ground truth).
    extra: (label, path) of one more image drawn after a gap, e.g. the first correct one when it is
    ranked below the top-k, so a failure shows what should have been found.
    """
    font, small = _font(13), _font(11)
    cells = len(paths) + (1 if extra else 0)
    cell_w = THUMB[0] + 2 * FRAME
    width = max(cells * (cell_w + GAP) + GAP + (3 * GAP if extra else 0), 360)
    chars = max(20, int(width / (font.getlength("n") or 7)))
    lines = ([title] if title else []) + textwrap.wrap(caption, chars) or [""]
    line_h, small_h = _text_height(font), _text_height(small)
    top = GAP + len(lines) * line_h + GAP
    height = top + THUMB[1] + 2 * FRAME + small_h * 2 + GAP
    pic = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(pic)
    for k, line in enumerate(lines):
        draw.text((GAP, GAP + k * line_h), line, fill=(0, 0, 0) if (k or not title) else (60, 60, 160), font=font)

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
    sims = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sims, torch.Tensor) or tuple(sims.shape) != tuple(shape):
        got = tuple(sims.shape) if isinstance(sims, torch.Tensor) else type(sims).__name__
        raise SystemExit(f"{path}: expected a [queries, gallery] = {tuple(shape)} tensor of this split, got {got}")
    return sims.float()


def visualize_run(run, evaluator, checkpoint: str, n: int, mode: str = "random", topk: int = 10,
                  seed: int = 0) -> list[str]:
    """Write N rank-list pictures of `checkpoint` into RUN_DIR/visualize/; returns their paths.

    Rankings use the fused similarity test.py reports (the evaluator's last row).  With THI output the
    re-ranked list is drawn to the right; 'worst' is chosen by the model's own ranking (before THI).
    """
    run.load_weights(checkpoint)
    sims = list(evaluator.similarity_rows(run.models).values())[-1].cpu()
    split = evaluator.split
    ranks = first_correct_ranks(sims, split.caption_pids, split.image_pids)
    thi = load_thi_similarity(run.cfg.run_dir, sims.shape)
    thi_ranks = first_correct_ranks(thi, split.caption_pids, split.image_pids) if thi is not None else None
    out_dir = os.path.join(run.cfg.run_dir, "visualize")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for k, q in enumerate(pick_queries(ranks, n, mode, seed), 1):
        pic = query_picture(q, sims, split, int(ranks[q]), topk, title="" if thi is None else "before THI: ")
        if thi is not None:
            pic = stack([pic, query_picture(q, thi, split, int(thi_ranks[q]), topk, title="after THI: ")],
                        horizontal=True)
        path = os.path.join(out_dir, f"{mode}_{k:02d}_query{q}.png")
        pic.save(path)
        written.append(path)
    return written
