"""Position embeddings resized to another image grid (bilinear, CLS row kept) or text length (linear): OpenAI's
224 x 224 / 77-token tables to 384 x 128 person crops and other caption lengths."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from .arch import CLIPConfig


def interpolate_vision_pos_embed(pos: torch.Tensor, src_grid: tuple[int, int],
                                 dst_grid: tuple[int, int]) -> torch.Tensor:
    """[1 + gh*gw, W] -> [1 + gh'*gw', W]: CLS row kept, the grid resized bilinearly."""
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if pos.shape[0] != 1 + src_grid[0] * src_grid[1]:
        raise ValueError(f"position table has {pos.shape[0]} rows, "
                         f"grid {src_grid} needs {1 + src_grid[0] * src_grid[1]}")
    if src_grid == dst_grid:
        return pos.clone()
    cls, grid = pos[:1], pos[1:]
    width = pos.shape[1]
    grid = grid.float().reshape(1, src_grid[0], src_grid[1], width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(dst_grid[0] * dst_grid[1], width).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


def interpolate_text_pos_embed(pos: torch.Tensor, length: int) -> torch.Tensor:
    """[L, W] -> [length, W], linear along the sequence (e.g. 77 -> 168 for UFine6926)."""
    if pos.shape[0] == length:
        return pos.clone()
    out = F.interpolate(pos.float().t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return out.squeeze(0).t().contiguous().to(pos.dtype)


def interpolate_pos_embed(sd: Mapping[str, torch.Tensor], src: CLIPConfig, dst: CLIPConfig) -> dict[str, torch.Tensor]:
    """Copy of `sd` with both position tables resized from `src`'s grid / context length to `dst`'s."""
    out = dict(sd)
    out["visual.positional_embedding"] = interpolate_vision_pos_embed(
        sd["visual.positional_embedding"], src.grid_size, dst.grid_size)
    out["positional_embedding"] = interpolate_text_pos_embed(sd["positional_embedding"], dst.context_length)
    return out
