"""OpenAI CLIP (ViT image tower + causal text transformer), METHOD.md section 2.

Parameter names follow OpenAI's state-dict layout exactly, so OpenAI's
`ViT-B-16.pt` and IRRA/RDE-style fine-tuned checkpoints load with strict key
checking. Two deliberate departures from OpenAI's module code, neither visible
in the weights:

* activations are batch-first [B, L, W] (OpenAI permutes to [L, B, W]);
* attention is our own module: one fused qkv matmul + SDPA everywhere except the
  last block of each tower, which computes softmax(QK^T) explicitly because
  token selection (TSE / fused embedding) needs its head-averaged weights.

Both towers return *projected* token sequences (ln + projection applied to every
token); the global embeddings are the CLS token (image) and EOT token (text).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import logging
import warnings
import zipfile
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import PIXEL_MEAN, PIXEL_STD

OPENAI_VIT_B16_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
)
# Where OpenAI's `clip` package downloads to; we only look there, never download.
OPENAI_CACHE_DIR = os.path.expanduser("~/.cache/clip")
# OpenAI publishes each file's SHA-256 as the second-to-last part of its download URL.
OPENAI_SHA256 = {OPENAI_VIT_B16_URL.rsplit("/", 1)[1]: OPENAI_VIT_B16_URL.rsplit("/", 2)[1]}


# --------------------------------------------------------------------------- config


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    image_size: tuple[int, int] = (384, 128)
    patch_size: int = 16
    stride: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12

    def __post_init__(self):
        # YAML/JSON give lists; a bare int means a square image.
        size = self.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {size!r}")
        if not 0 < self.stride <= self.patch_size:
            raise ValueError(f"stride must be in [1, patch_size={self.patch_size}], got {self.stride}")
        if min(self.image_size) < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        for tower, width, heads in (("vision", self.vision_width, self.vision_heads),
                                    ("text", self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"{tower}_width={width} is not divisible by {tower}_heads={heads} "
                                 f"(CLIP uses heads = width // 64)")

    @property
    def grid_size(self) -> tuple[int, int]:
        return grid_size(self.image_size, self.patch_size, self.stride)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw


def grid_size(image_size: Iterable[int], patch_size: int, stride: int) -> tuple[int, int]:
    """Patch grid of a conv with kernel `patch_size` and `stride` (overlapping when stride < patch)."""
    h, w = image_size
    return (h - patch_size) // stride + 1, (w - patch_size) // stride + 1


# --------------------------------------------------------------------------- layers


class QuickGELU(nn.Module):
    # OpenAI's weights were trained with this approximation, not exact GELU.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names.

    in_proj_weight [3W, W] holds q, k, v stacked, which is both OpenAI's layout
    and the fastest way to compute them (one matmul).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D]

        weights = None
        if need_weights:
            scores = torch.matmul(q * (self.head_dim ** -0.5), k.transpose(-2, -1)).float()
            if causal:
                future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu_(1)
                scores = scores.masked_fill(future, float("-inf"))
            # Softmax in fp32: these weights drive top-k token selection, where bf16 ties hurt.
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs.to(v.dtype), v)
            weights = probs.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        out = out.transpose(1, 2).reshape(b, n, w)
        return self.out_proj(out), weights


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        attn_out, weights = self.attn(self.ln_1(x), causal=causal, need_weights=need_weights)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        """Returns (x, last block's attention averaged over heads, or None)."""
        weights = None
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            x, weights = block(x, causal=causal, need_weights=need_weights and i == last)
        return x, weights

    def init_weights(self) -> None:
        # CLIP's initialize_parameters; the residual-branch outputs get the
        # extra 1/sqrt(2 * layers) so the residual stream's variance stays bounded.
        attn_std = self.width ** -0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        width = cfg.vision_width
        self.set_pixel_stats()
        self.grid_size = cfg.grid_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.stride, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_patches + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))

    def set_pixel_stats(self) -> None:
        """uint8 images are normalised in forward, on the device: the loaders then copy a quarter of the bytes
        and spend no CPU on float conversion.  Buffers outside the state dict (the OpenAI key layout stays as
        it is), so a model built on the meta device and loaded with assign=True sets them again."""
        self.register_buffer("pixel_mean", 255 * torch.tensor(PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255 * torch.tensor(PIXEL_STD).view(3, 1, 1), persistent=False)

    def init_weights(self) -> None:
        scale = self.conv1.out_channels ** -0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.init_weights()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] -> float32 in CLIP's normalised units."""
        return (images.float() - self.pixel_mean.float()) / self.pixel_std.float()

    def forward(self, images: torch.Tensor, need_weights: bool = False):
        """images: uint8 [B, 3, H, W] as the loaders give them, or already normalised floats.
        Returns the transformer output before ln_post, [B, 1 + N, W], and the attention map."""
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [B, W, gh, gw]
        if x.shape[-2:] != self.grid_size:
            raise ValueError(f"image of size {tuple(images.shape[-2:])} gives a {tuple(x.shape[-2:])} patch grid, "
                             f"but the model was built for {self.grid_size}; resize images or rebuild the model")
        x = x.flatten(2).transpose(1, 2)  # [B, N, W], row-major over the grid like OpenAI
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        return self.transformer(x, need_weights=need_weights)


# --------------------------------------------------------------------------- CLIP


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig | None = None):
        super().__init__()
        cfg = cfg or CLIPConfig()
        self.config = cfg
        self.context_length = cfg.context_length
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.text_width ** -0.5)
        self.transformer.init_weights()
        self.visual.init_weights()

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    # ---- image
    def encode_image_tokens(self, images: torch.Tensor):
        """images [B, 3, H, W] -> (tokens [B, 1 + N, embed_dim], attn [B, 1 + N, 1 + N]); token 0 is CLS."""
        x, attn = self.visual(images, need_weights=True)
        return self.visual.ln_post(x) @ self.visual.proj, attn

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLS token [B, embed_dim] (OpenAI's encode_image); no attention weights needed, so all-SDPA."""
        x, _ = self.visual(images)
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj

    # ---- text
    def _text_forward(self, ids: torch.Tensor, need_weights: bool):
        n = ids.shape[1]
        if n > self.context_length:
            raise ValueError(f"text of length {n} exceeds the model's context_length {self.context_length}")
        # Shorter inputs are fine: under the causal mask, a prefix of the position table is exact.
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        return self.transformer(x, causal=True, need_weights=need_weights)

    def encode_text_tokens(self, ids: torch.Tensor):
        """ids [B, L] -> (tokens [B, L, embed_dim], causal attn [B, L, L])."""
        x, attn = self._text_forward(ids, need_weights=True)
        return self.ln_final(x) @ self.text_projection, attn

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Projected EOT token [B, embed_dim]; EOT has the largest id, hence argmax (as OpenAI)."""
        x, _ = self._text_forward(ids, need_weights=False)
        eot = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return self.ln_final(eot) @ self.text_projection

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        return self.encode_image(images), self.encode_text(ids)


# --------------------------------------------------------------------------- state dicts

_BLOCK = r"transformer\.resblocks\.\d+\.(?:attn\.(?:in_proj_weight|in_proj_bias|out_proj\.(?:weight|bias))" \
         r"|ln_[12]\.(?:weight|bias)|mlp\.c_(?:fc|proj)\.(?:weight|bias))"
# Exactly the keys of a ViT CLIP. Anything else (IRRA's classifier / cross-modal heads,
# non-tensor entries like `input_resolution`, optimizer state) is dropped on load.
_CLIP_KEY = re.compile(
    r"(?:visual\.(?:conv1\.weight|class_embedding|positional_embedding|ln_pre\.(?:weight|bias)"
    r"|ln_post\.(?:weight|bias)|proj|" + _BLOCK + r")"
    r"|" + _BLOCK +
    r"|token_embedding\.weight|positional_embedding|ln_final\.(?:weight|bias)|text_projection|logit_scale)"
)
# Wrappers added by DataParallel/DDP (`module.`), IRRA/RDE (`base_model.`) and torch.compile.
_WRAPPER_PREFIXES = ("module.", "base_model.", "_orig_mod.")


def _strip_prefixes(key: str, prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _missing_file_message(path: str) -> str:
    return (f"CLIP checkpoint not found: {path!r}. OpenAI's ViT-B-16.pt is not downloaded automatically; "
            f"download it by hand (e.g. {OPENAI_VIT_B16_URL}, the URL in OpenAI's clip package) "
            f"and pass its path, or put it at {os.path.join(OPENAI_CACHE_DIR, 'ViT-B-16.pt')}.")


def _is_torchscript_archive(path: str) -> bool:
    # Both torch.save and TorchScript write zip archives; only TorchScript ships code/ and constants.pkl.
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _read_checkpoint(path: str) -> Any:
    """Unpickle a checkpoint file; ValueError naming the file when it is not one."""
    expected = ("expected a TorchScript archive (OpenAI's ViT-B-16.pt) or a torch.save'd state dict / "
                "checkpoint dict; the file may be truncated or of another format")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                # torch.jit is deprecated in recent torch, but OpenAI only publishes TorchScript archives.
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path!r} looks like a TorchScript archive but cannot be loaded ({_first_line(e)}); "
                             f"{expected}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe loader refuses pickled non-tensor objects (args, scheduler state) that
        # training checkpoints often carry; anything else here is a damaged or foreign file.
        if "weights_only" not in str(e):
            raise ValueError(f"{path!r} is not a readable checkpoint ({_first_line(e)}); {expected}") from e
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path!r} is not a readable checkpoint ({_first_line(e)}); {expected}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path!r} is not a readable checkpoint ({_first_line(e)}); {expected}") from e
    warnings.warn(f"{path}: loaded with weights_only=False because it holds non-tensor objects; "
                  f"only load checkpoints you trust")
    return obj


def _sha256(path: str) -> str:
    """The file's SHA-256, hashed in 1 MiB chunks, remembered per (size, mtime) in PATH.sha256.json."""
    st = os.stat(path)
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = path + ".sha256.json"
    try:
        with open(cache) as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in stamp} == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: hash again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    try:
        with open(cache, "w") as f:
            json.dump({**stamp, "sha256": digest.hexdigest()}, f)
    except OSError:
        pass  # read-only folder: the check still ran, it is only not remembered
    return digest.hexdigest()


def verify_openai_checksum(path: str) -> None:
    """A file named like an OpenAI release (ViT-B-16.pt) must be that release, byte for byte.

    A mismatch is an error when the file is damaged or a foreign TorchScript archive: a partial download
    otherwise surfaces later as an obscure unpickling error. A plain torch.save'd state dict saved under the
    name (someone's own weights, never OpenAI's TorchScript release) only gets a warning.
    """
    expected = OPENAI_SHA256.get(os.path.basename(path))
    if expected is None:
        return
    actual = _sha256(path)
    if actual == expected:
        return
    size = os.path.getsize(path)
    if zipfile.is_zipfile(path) and not _is_torchscript_archive(path):
        warnings.warn(f"{path!r} is not OpenAI's {os.path.basename(path)} (SHA-256 {actual[:12]}..., OpenAI's is "
                      f"{expected[:12]}...); it is a plain state dict, loaded as such")
        return
    raise ValueError(f"{path!r} ({size} bytes) has SHA-256 {actual}, but OpenAI's {os.path.basename(path)} has "
                     f"{expected}: the file is truncated or corrupted (an interrupted download?). Download it again "
                     f"from {OPENAI_VIT_B16_URL}")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict (OpenAI layout keys) from a checkpoint file.

    Accepts OpenAI's TorchScript archive, a plain state dict, or a checkpoint dict
    with the weights under `model` / `state_dict`. Wrapper prefixes are stripped
    and only keys of the CLIP layout are kept. Tensors keep their stored dtype.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_file_message(path))
    verify_openai_checksum(path)

    obj = _read_checkpoint(path)
    if isinstance(obj, nn.Module):  # TorchScript archive or a pickled full model
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, expected a state dict (a mapping of "
                         f"parameter names to tensors) or a checkpoint dict with a 'model' / 'state_dict' entry")

    sd: dict[str, torch.Tensor] = {}
    ignored = []
    for raw_key, value in obj.items():
        key = _strip_prefixes(str(raw_key))
        if not isinstance(value, torch.Tensor):
            continue
        if not _CLIP_KEY.fullmatch(key):
            ignored.append(str(raw_key))
            continue
        if key in sd:
            raise ValueError(f"{path!r}: two entries map to CLIP key {key!r} after stripping prefixes "
                             f"{_WRAPPER_PREFIXES} (one is {raw_key!r}); cannot tell which to use")
        sd[key] = value
    if not sd:
        seen = [str(k) for k in list(obj.keys())[:8]]
        raise ValueError(f"{path!r} contains no CLIP weights (expected keys like 'visual.conv1.weight', "
                         f"'token_embedding.weight', optionally under 'module.' / 'base_model.'); "
                         f"{len(obj)} keys seen, e.g. {seen}")
    if ignored:  # e.g. the heads of an IRRA / RDE checkpoint: said, so that a misspelt layout is noticed
        logging.getLogger("reid").info("%s: %d tensors outside the CLIP layout were not loaded, e.g. %s",
                                       path, len(ignored), ignored[:5])
    return sd


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if idx != set(range(len(idx))):
        raise ValueError(f"non-contiguous block indices under {prefix!r}: {sorted(idx)}")
    return len(idx)


def _guess_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    # Non-square grids come from person-ReID fine-tuning (e.g. 24 x 8 for 384 x 128):
    # the count alone is ambiguous, so pick the factorisation closest to a 3:1 portrait.
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0 and h >= num_patches // h]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / 3.0)))


def config_from_state_dict(sd: Mapping[str, torch.Tensor],
                           source_grid: tuple[int, int] | None = None) -> CLIPConfig:
    """Architecture of an OpenAI-layout ViT CLIP state dict (as OpenAI's build_model reads it).

    The stride is not stored in the weights, so the returned config has stride =
    patch size and an image size whose grid matches the stored position table.
    `source_grid` (gh, gw) overrides the grid guess for non-square tables.
    """
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                "positional_embedding", "text_projection", "ln_final.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"not a ViT CLIP state dict: missing {missing} (ResNet CLIPs are not supported)")

    vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
    num_patches = sd["visual.positional_embedding"].shape[0] - 1
    if source_grid is None:
        gh, gw = _guess_grid(num_patches)
    else:
        gh, gw = source_grid
        if gh * gw != num_patches:
            raise ValueError(f"source_grid {source_grid} has {gh * gw} cells, the state dict has {num_patches}")
    text_width = sd["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_size=(gh * patch, gw * patch),
        patch_size=patch,
        stride=patch,
        vision_width=vision_width,
        vision_layers=_count_blocks(sd, "visual.transformer."),
        vision_heads=vision_width // 64,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_heads=text_width // 64,
        text_layers=_count_blocks(sd, "transformer."),
    )


# --------------------------------------------------------------------------- position embeddings


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


# --------------------------------------------------------------------------- building


def load_clip(path: str | os.PathLike | None, image_size: Iterable[int] = (384, 128), stride: int = 16,
              text_length: int = 77, source_grid: tuple[int, int] | None = None) -> CLIP:
    """CLIP from a checkpoint file, adapted to `image_size` / `stride` / `text_length`; fp32 weights."""
    if path is None or str(path) in ("", "random"):
        raise ValueError("load_clip needs a checkpoint path; build a randomly initialised model with "
                         "CLIP(CLIPConfig(...)) or build_clip('random', ...)")
    sd = load_state_dict_file(path)
    # Master weights in fp32 (OpenAI stores fp16); autocast handles mixed precision.
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    src = config_from_state_dict(sd, source_grid)
    dst = replace(src, image_size=tuple(image_size), stride=stride, context_length=text_length)
    sd = interpolate_pos_embed(sd, src, dst)

    # Meta-device construction skips the random init we would overwrite anyway.
    with torch.device("meta"):
        model = CLIP(dst)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{os.fspath(path)!r} does not match the CLIP architecture read from it: "
                           f"missing keys {list(missing)}, unexpected keys {list(unexpected)}")
    model.visual.set_pixel_stats()
    return model


def build_clip(pretrain: str | None, image_size: Iterable[int] = (384, 128), stride: int = 16,
               text_length: int = 77, arch: dict | None = None) -> CLIP:
    """CLIP from a file path, an OpenAI model name ('ViT-B/16', looked up in ~/.cache/clip), or 'random'."""
    if not pretrain or pretrain == "random":
        kwargs = {**(arch or {}), "image_size": tuple(image_size), "stride": stride, "context_length": text_length}
        return CLIP(CLIPConfig(**kwargs))
    if re.fullmatch(r"(RN|ViT-)[\w/@-]+", pretrain) and not os.path.exists(pretrain):
        path = os.path.join(OPENAI_CACHE_DIR, pretrain.replace("/", "-") + ".pt")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrain={pretrain!r} names an OpenAI CLIP model, expected its weights at {path}; "
                f"nothing is downloaded automatically: download it by hand "
                f"(ViT-B/16: {OPENAI_VIT_B16_URL}; other models: the URLs in OpenAI's clip/clip.py)")
        return load_clip(path, image_size, stride, text_length)
    return load_clip(pretrain, image_size, stride, text_length)
