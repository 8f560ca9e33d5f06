"""The retrieval model: a CLIP dual encoder, the embedding heads on top of it, and their losses."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.distributed import gather_batch

from .clip import build_clip
from .embeddings import build_embedding
from .losses import build_loss, parse_loss_names


class RetrievalModel(nn.Module):
    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.backbone = build_clip(cfg.pretrain_path or cfg.pretrain_choice, image_size=tuple(cfg.img_size),
                                   stride=cfg.stride_size, text_length=cfg.text_length, arch=cfg.clip_arch)
        self.backbone.logit_scale.requires_grad_(False)  # our losses have their own temperatures
        if cfg.get("freeze_patch_projection"):
            self.backbone.visual.conv1.requires_grad_(False)  # 3RTPR's rebuild (MoCo v3's trick for stability)
        width = self.backbone.text_projection.shape[1]
        self.embeddings = nn.ModuleDict({name: build_embedding(name, cfg, width) for name in cfg.embeddings})
        self.loss_names = parse_loss_names(cfg.loss_names)
        # the loss the division listens to and ICL's RDA term trains (configs/reading.py primary_loss)
        self.primary_loss = cfg.get("primary_loss") or self.loss_names[0]
        # every trained embedding (loss_embeddings, default all) gets every loss; the others are evaluated only.
        # ModuleDict so that losses with parameters (ID) train and save
        trained = cfg.get("loss_embeddings") or list(self.embeddings)
        self.losses = nn.ModuleDict({
            emb: nn.ModuleDict({name: build_loss(name, cfg, self.embeddings[emb].out_dim, num_classes)
                                for name in self.loss_names})
            for emb in self.embeddings if emb in trained})

    def forward(self, images, caption_ids, pids, rda_ids=None):
        """Training: per-sample losses over the global batch (every process's samples under torchrun).

        Returns ({(embedding, loss): [B_global]}, the same for (image, RDA caption) pairs or None).
        """
        image_feats = {k: gather_batch(v) for k, v in self.encode_image(images).items()}
        text_feats = {k: gather_batch(v) for k, v in self.encode_text(caption_ids).items()}
        pids = gather_batch(pids)
        rda = None
        if rda_ids is not None:
            rda_feats = {k: gather_batch(v) for k, v in self.encode_text(rda_ids).items()}
            rda = self.per_sample_losses(image_feats, rda_feats, pids)
        return self.per_sample_losses(image_feats, text_feats, pids), rda

    def encode_image(self, images) -> dict[str, torch.Tensor]:
        tokens, attn = self.backbone.encode_image_tokens(images)
        return {name: head.encode_image(tokens, attn) for name, head in self.embeddings.items()}

    def encode_text(self, ids) -> dict[str, torch.Tensor]:
        tokens, attn = self.backbone.encode_text_tokens(ids)
        return {name: head.encode_text(tokens, attn, ids) for name, head in self.embeddings.items()}

    def per_sample_losses(self, image_feats: dict, text_feats: dict, pids) -> dict[tuple[str, str], torch.Tensor]:
        """{(embedding, loss): [B] per-sample values} for features from encode_image / encode_text, for each
        trained embedding (the losses' keys)."""
        return {(emb, name): loss(image_feats[emb], text_feats[emb], pids)
                for emb, losses in self.losses.items() for name, loss in losses.items()}

    def new_modules(self) -> list[nn.Module]:
        """RDE-style heads trained from scratch: head_lr (solver/optimizer.py)."""
        return [self.embeddings]

    def irra_modules(self) -> list[nn.Module]:
        """IRRA-style modules trained from scratch (the ID classifier): lr x lr_factor (solver/optimizer.py)."""
        return [self.losses]


def similarities(image_feats: dict, text_feats: dict) -> dict[str, torch.Tensor]:
    """Cosine similarity [queries, gallery] per embedding."""
    return {name: F.normalize(text_feats[name].float(), dim=-1) @ F.normalize(image_feats[name].float(), dim=-1).t()
            for name in image_feats}
