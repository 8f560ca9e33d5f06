"""Retrieval metrics of docs/METHOD.md §6 (text to image: rows are queries, columns gallery images)."""
from __future__ import annotations

import numpy as np
import torch
from prettytable import PrettyTable

METRIC_NAMES = ("R1", "R5", "R10", "mAP", "mINP")


def _as_tensor(x, device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.to(device)


@torch.no_grad()
def rank_metrics(similarity, query_pids, gallery_pids, chunk_size: int = 1024, device=None) -> dict:
    """R@1/5/10, mAP and mINP in percent for a [queries, gallery] similarity matrix.

    Queries are ranked in chunks, so a 20k x 20k test never holds a full argsort (a chunk of 1024 rows
    of 20k indices is 160 MB); on a GPU when there is one.
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # left where it is (a GPU similarity is never copied to the host); chunks move to `device` as needed
    sim = similarity if isinstance(similarity, torch.Tensor) else _as_tensor(similarity, "cpu")
    qp = _as_tensor(query_pids, device).long()
    gp = _as_tensor(gallery_pids, device).long()
    if sim.dim() != 2 or sim.shape != (len(qp), len(gp)):
        raise ValueError(f"similarity has shape {tuple(sim.shape)}, expected ({len(qp)}, {len(gp)}) "
                         "= (len(query_pids), len(gallery_pids))")
    hits = {k: 0.0 for k in (1, 5, 10)}
    ap_sum = inp_sum = 0.0
    for start in range(0, len(qp), chunk_size):
        s = sim[start:start + chunk_size].to(device, non_blocking=True).float()
        order = s.argsort(dim=1, descending=True)
        matches = gp[order] == qp[start:start + chunk_size, None]          # [c, G] bool
        del order
        cum = matches.cumsum(dim=1)                                        # matches up to rank r
        num_rel = cum[:, -1].clamp(min=1).double()
        for k in hits:
            hits[k] += (cum[:, min(k, cum.shape[1]) - 1] > 0).sum().item()
        ranks = torch.arange(1, matches.shape[1] + 1, device=device, dtype=torch.float64)
        ap_sum += ((cum.double() / ranks) * matches).sum(dim=1).div(num_rel).sum().item()
        # 1-based rank of the last match: position of the maximum of cum, first occurrence
        last = (cum == cum[:, -1:]).double().argmax(dim=1).double() + 1
        inp_sum += (num_rel / last).mul(cum[:, -1] > 0).sum().item()
    n = max(len(qp), 1)
    return {"R1": 100 * hits[1] / n, "R5": 100 * hits[5] / n, "R10": 100 * hits[10] / n,
            "mAP": 100 * ap_sum / n, "mINP": 100 * inp_sum / n}


def metrics_table(rows: dict[str, dict], title: str | None = None) -> PrettyTable:
    """The evaluation table: one row per similarity (BGE, TSE, BGE+TSE, ...), columns R1 R5 R10 mAP mINP rSum."""
    table = PrettyTable(["task", *METRIC_NAMES, "rSum"])
    if title:
        table.title = title
    for name, m in rows.items():
        table.add_row([name, *(f"{m[k]:.2f}" for k in METRIC_NAMES), f"{m['R1'] + m['R5'] + m['R10']:.2f}"])
    table.float_format = ".2"
    return table
