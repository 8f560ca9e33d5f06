"""Training curves from a run's metrics.jsonl, for people without TensorBoard.

    python -m reports.curves RUN_DIR            # writes RUN_DIR/curves.png

Panels: losses, learning rate, retrieval metrics, and the division as three panels (pairs kept, how much of
the simulated noise it found in %, mean weights in 0-1): on one axis the weights and percentages were flat
lines under the pair counts.  matplotlib draws them when installed; a plain PIL fallback keeps the command
working in a minimal environment (the test image, for one).
"""
from __future__ import annotations

import argparse
import math
import os

from utils import run_folder

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
COLUMNS = 3  # panels per row: six panels in one row were too wide to read
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def read_metrics(path: str) -> list[dict]:
    records = run_folder.read_metrics(path)
    if not records:
        raise SystemExit(f"{path} holds no epochs yet")
    return records


DIVISION_PANELS = ("division: pairs", "division: noisy pairs found (%)", "division: mean weight (0-1)")
Y_RANGE = {DIVISION_PANELS[2]: (0.0, 1.0)}  # weights always on their full scale: a constant 1.0 reads as 'all kept'


def division_panel(key: str) -> str:
    """The panel of a division value, by its scale (the keys of solver/division.py division_quality)."""
    stat = key.split("/", 1)[1]
    if "weight" in stat:
        return DIVISION_PANELS[2]
    if stat.endswith(("precision", "recall")):
        return DIVISION_PANELS[1]
    return DIVISION_PANELS[0]


def panels(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """{panel title: {series name: (epochs, values)}}; empty panels are left out."""
    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    groups = {"losses": [k for k in keys if k.startswith("loss")],
              "learning rate": [k for k in keys if k == "lr" or k.startswith("lr/")],
              "retrieval (%)": [m for m in METRICS if m in keys],
              **{panel: [] for panel in DIVISION_PANELS}}
    for k in keys:
        if k.startswith("division/"):
            groups[division_panel(k)].append(k)
    out = {}
    for title, names in groups.items():
        series = {}
        for name in names:
            pts = [(r.get("epoch", i + 1), r[name]) for i, r in enumerate(records)
                   if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
            if pts:
                series[name] = ([e for e, _ in pts], [v for _, v in pts])
        if series:
            out[title] = series
    return out


def plot_matplotlib(data: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless servers
    import matplotlib.pyplot as plt

    cols = min(len(data), COLUMNS)
    rows = math.ceil(len(data) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(data):]:
        ax.set_visible(False)
    for ax, (name, series) in zip(axes.flat, data.items()):
        for label, (x, y) in series.items():
            ax.plot(x, y, marker="." if len(x) < 40 else None, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if name in Y_RANGE:
            lo, hi = Y_RANGE[name]
            ax.set_ylim(min(lo, *(min(y) for _, y in series.values())) - 0.03,
                        max(hi, *(max(y) for _, y in series.values())) + 0.03)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pil(data: dict, path: str, title: str) -> None:
    """Line charts without matplotlib: axes, min/max labels, one coloured line per series, a legend."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)  # scalable since Pillow 10.1
    except TypeError:
        font = ImageFont.load_default()
    pw, ph, pad, legend_h = 420, 300, 45, 14
    cols = min(len(data), COLUMNS)
    heights = [ph + legend_h * len(s) for s in data.values()]
    row_h = [max(heights[i:i + cols]) for i in range(0, len(heights), cols)]
    img = Image.new("RGB", (pw * cols, 24 + sum(row_h)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), title, fill="black", font=font)
    for p, (name, series) in enumerate(data.items()):
        left, top = (p % cols) * pw, 24 + sum(row_h[:p // cols])
        x0, y0, x1, y1 = left + pad, top + 20, left + pw - 12, top + ph - 25
        draw.text((x0, top), name, fill="black", font=font)
        draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
        xs = [x for xv, _ in series.values() for x in xv]
        ys = [y for _, yv in series.values() for y in yv]
        xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)
        if name in Y_RANGE:
            ymin, ymax = min(ymin, Y_RANGE[name][0]), max(ymax, Y_RANGE[name][1])
        xspan, yspan = (xmax - xmin) or 1, (ymax - ymin) or 1
        draw.text((x0 - pad + 2, y0), f"{ymax:.3g}", fill="black", font=font)
        draw.text((x0 - pad + 2, y1 - 12), f"{ymin:.3g}", fill="black", font=font)
        draw.text((x0, y1 + 3), f"epoch {xmin:g}", fill="black", font=font)
        draw.text((x1 - 50, y1 + 3), f"{xmax:g}", fill="black", font=font)
        for k, (label, (xv, yv)) in enumerate(series.items()):
            colour = COLOURS[k % len(COLOURS)]
            pts = [(x0 + (x - xmin) / xspan * (x1 - x0), y1 - (y - ymin) / yspan * (y1 - y0)) for x, y in zip(xv, yv)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for x, y in pts:  # dots too: a one-epoch run is still visible
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            ly = top + ph + legend_h * k
            draw.line([(x0, ly + 7), (x0 + 16, ly + 7)], fill=colour, width=3)
            draw.text((x0 + 22, ly), label, fill=colour, font=font)
    img.save(path)


def plot_run(run_dir: str, out: str | None = None, backend: str = "auto") -> str:
    """Write the curves of a run folder; returns the PNG path."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        raise SystemExit(f"{metrics} not found: expected a run folder written by main.py")
    data = panels(read_metrics(metrics))
    if not data:
        raise SystemExit(f"{metrics}: no numeric losses, lr, metrics or division values to plot")
    out = out or os.path.join(run_dir, "curves.png")
    # the run folder's name (time and run name), not its absolute path: that says nothing a reader needs,
    # leaks the user's directory layout into shared figures and ran off small panels
    title = f"{os.path.basename(os.path.abspath(run_dir))}: {os.path.basename(metrics)}"
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            backend = "matplotlib"
        except ImportError:
            backend = "pil"
    (plot_matplotlib if backend == "matplotlib" else plot_pil)(data, out, title)
    return out


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description="Plot a run's training curves (metrics.jsonl) into curves.png")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.add_argument("--backend", choices=["auto", "matplotlib", "pil"], default="auto")
    args = p.parse_args(argv)
    path = plot_run(args.run_dir, args.out, args.backend)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
