"""The one-stream ViT tracker of OSTrack (METHOD.md section 1), used for teachers and students alike.

Template and search crops share one patch embedding, get their own learned position embeddings, are concatenated
``[template; search]`` and run through pre-norm ViT blocks (timm's ``Block``), a final LayerNorm and the center
head. Parameter names follow timm / OSTrack's backbone so that checkpoints map one to one
(see ``ct_ray.models.checkpoints``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable, Iterable

import torch
from torch import nn
from timm.layers import DropPath
from timm.models.vision_transformer import Block

LayerNorm = partial(nn.LayerNorm, eps=1e-6)

BlockLayer = Callable[..., nn.Module]


@dataclass(frozen=True)
class TrackerConfig:
    """Architecture of a one-stream tracker and the crops it was trained on. Defaults are OSTrack ViT-B/16-256.

    ``template_factor`` / ``search_factor`` are the context factors of its template and search crops (METHOD.md
    section 6): they travel with the weights in every checkpoint, so the online tracker, evaluation, validation and
    the demo crop as the model was trained."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    template_size: int = 128
    search_size: int = 256
    head_channels: int = 256
    drop_path_rate: float = 0.0
    template_factor: float = 2.0
    search_factor: float = 4.0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "template_size", "search_size",
                     "head_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrackerConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"TrackerConfig.embed_dim ({self.embed_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        for name in ("template_size", "search_size"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"TrackerConfig.{name} ({getattr(self, name)}) must be a multiple of "
                                 f"patch_size ({self.patch_size})")
        if self.head_channels % 8:
            raise ValueError(f"TrackerConfig.head_channels ({self.head_channels}) must be divisible by 8 "
                             "(the head's branches narrow to C/8)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"TrackerConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"TrackerConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        for name in ("template_factor", "search_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TrackerConfig.{name} must be > 0, got {value!r}")

    @property
    def template_tokens(self) -> int:
        return (self.template_size // self.patch_size) ** 2

    @property
    def search_tokens(self) -> int:
        return (self.search_size // self.patch_size) ** 2

    @property
    def feat_size(self) -> int:
        """Side of the search token grid and of the head's score map (16 for 256 px crops, patch 16)."""
        return self.search_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrackerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrackerConfig keys: {unknown}")
        return cls(**values)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens; one instance is shared by template and search crops."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _sigmoid_clamped(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x.sigmoid(), min=1e-4, max=1 - 1e-4)


def decode_boxes(score_map: torch.Tensor, size_map: torch.Tensor, offset_map: torch.Tensor) -> torch.Tensor:
    """Boxes (B, 4) as cx, cy, w, h normalised to the search crop, from the argmax cell of ``score_map``."""
    batch, _, height, width = score_map.shape
    index = score_map.flatten(1).argmax(dim=1)
    ix = (index % width).to(size_map.dtype)
    iy = torch.div(index, width, rounding_mode="floor").to(size_map.dtype)
    gather = index.view(batch, 1, 1).expand(batch, 2, 1)
    size = size_map.flatten(2).gather(2, gather).squeeze(-1)
    offset = offset_map.flatten(2).gather(2, gather).squeeze(-1)
    return torch.stack([(ix + offset[:, 0]) / width, (iy + offset[:, 1]) / height, size[:, 0], size[:, 1]], dim=1)


class CenterHead(nn.Module):
    """OSTrack's center head: score, offset and size branches of 4 x [conv3x3-BN-ReLU] + conv1x1.

    Names (``conv1_ctr`` ... ``conv5_size``) are OSTrack's, so its ``box_head.*`` keys load unchanged.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        widths = [in_channels, channels, channels // 2, channels // 4, channels // 8]
        for branch, outputs in (("ctr", 1), ("offset", 2), ("size", 2)):
            for i in range(4):
                setattr(self, f"conv{i + 1}_{branch}", _conv_bn_relu(widths[i], widths[i + 1]))
            setattr(self, f"conv5_{branch}", nn.Conv2d(widths[4], outputs, kernel_size=1))

    def init_priors(self, feat_size: int, search_factor: float) -> None:
        """Output biases at the priors of a fresh head, as RetinaNet and CenterNet start their focal-loss heads: the
        score map at the probability of one positive cell in ``feat_size**2`` and the size map at the target's size
        in a search crop of context ``search_factor`` (``1 / search_factor``). With zero biases every cell starts at
        0.5, the focal loss starts near 12 and a tracker trained from scratch spent its first 5-9 of 20 epochs
        pushing the score map down before it learned to localise (docs/METHOD.md section 1, "Departure")."""
        cells = feat_size * feat_size
        nn.init.constant_(self.conv5_ctr.bias, -math.log(cells - 1))
        size = 1.0 / search_factor
        nn.init.constant_(self.conv5_size.bias, math.log(size / (1.0 - size)))

    def _branch(self, name: str, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"conv{i}_{name}")(x)
        return x

    def forward(self, feature_map: torch.Tensor) -> dict[str, torch.Tensor]:
        ctr, size, offset = (self._branch(name, feature_map) for name in ("ctr", "size", "offset"))
        # The sigmoid, its clamp and the decode run in float32 even under bf16 autocast: in bf16 1 - 1e-4 rounds to
        # 1.0, and a confident head's focal loss (log(1 - p)) would be -inf.
        with torch.autocast(device_type=feature_map.device.type, enabled=False):
            score_map = _sigmoid_clamped(ctr.float())
            size_map = _sigmoid_clamped(size.float())
            offset_map = offset.float()
            return {
                "pred_boxes": decode_boxes(score_map, size_map, offset_map),
                "score_map": score_map,
                "size_map": size_map,
                "offset_map": offset_map,
            }


class OneStreamTracker(nn.Module):
    """OSTrack-style tracker: ``model(template, search)`` -> dict of ``pred_boxes``, ``score_map``, ``size_map``,
    ``offset_map``.

    Inputs are normalised float crops (B, 3, H, W). ``pred_boxes`` are (B, 4) cx, cy, w, h normalised to the search
    crop. ``block_layer`` builds each block (timm's ``Block`` by default); any module mapping (B, N, D) tokens to
    (B, N, D) with the same constructor arguments can stand in.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig(), block_layer: BlockLayer = Block) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.pos_embed_z = nn.Parameter(torch.zeros(1, config.template_tokens, dim))
        self.pos_embed_x = nn.Parameter(torch.zeros(1, config.search_tokens, dim))
        drop_path = [float(r) for r in torch.linspace(0, config.drop_path_rate, config.depth)]
        self.blocks = nn.ModuleList(
            block_layer(dim=dim, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=True,
                        drop_path=drop_path[i], norm_layer=LayerNorm)
            for i in range(config.depth)
        )
        self.norm = LayerNorm(dim)
        self.box_head = CenterHead(dim, config.head_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed_z, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_x, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.box_head.init_priors(self.config.feat_size, self.config.search_factor)

    @property
    def feat_size(self) -> int:
        return self.config.feat_size

    @property
    def num_template_tokens(self) -> int:
        return self.config.template_tokens

    def set_fused_attention(self, fused: bool) -> None:
        """Fused ``scaled_dot_product_attention`` (default) or the exact-math path (for parity checks)."""
        for block in self.blocks:
            attn = getattr(block, "attn", None)
            if attn is not None and hasattr(attn, "fused_attn"):
                attn.fused_attn = fused

    def embed_template(self, template: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(template) + self.pos_embed_z

    def embed_search(self, search: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(search) + self.pos_embed_x

    def embed(self, template: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        """Tokens ``[template; search]`` (B, Nz + Nx, D) entering the first block."""
        return torch.cat([self.embed_template(template), self.embed_search(search)], dim=1)

    def run_blocks(self, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks ``start`` .. ``stop - 1`` on ``tokens``."""
        for block in self.blocks[start:stop]:
            tokens = block(tokens)
        return tokens

    def forward_head(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final norm, the search tokens reshaped to (B, D, F, F), and the center head."""
        tokens = self.norm(tokens)
        search = tokens[:, self.num_template_tokens:]
        batch, count, dim = search.shape
        side = self.feat_size
        feature_map = search.transpose(1, 2).reshape(batch, dim, side, side)
        return self.box_head(feature_map)

    def forward_features(self, template: torch.Tensor, search: torch.Tensor,
                         after_blocks: Iterable[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs every block; returns the last block's output and the raw outputs (before the final norm) of the
        blocks whose indices are in ``after_blocks``, in that order."""
        wanted = list(after_blocks)
        for index in wanted:
            if not 0 <= index < len(self.blocks):
                raise IndexError(f"block index {index} out of range for a {len(self.blocks)}-block tracker")
        captured: dict[int, torch.Tensor] = {}
        tokens = self.embed(template, search)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                captured[index] = tokens
        return tokens, [captured[i] for i in wanted]

    def forward_with_template_tokens(self, template_tokens: torch.Tensor, search: torch.Tensor) -> dict:
        """Forward with precomputed ``embed_template`` output (the online tracker computes it once per sequence)."""
        tokens = torch.cat([template_tokens, self.embed_search(search)], dim=1)
        return self.forward_head(self.run_blocks(tokens, 0, len(self.blocks)))

    def forward(self, template: torch.Tensor, search: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_with_template_tokens(self.embed_template(template), search)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def set_drop_path(model: OneStreamTracker, rate: float) -> OneStreamTracker:
    """Drop-path (stochastic depth) in every block at rates rising linearly from 0 to ``rate``, as a model built with
    ``drop_path_rate=rate`` has (timm's ``Block.drop_path1`` / ``drop_path2``); 0 removes it."""
    rates = [float(r) for r in torch.linspace(0, rate, len(model.blocks))]
    for block, value in zip(model.blocks, rates):
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(value) if value > 0 else nn.Identity())
    return model


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a data-parallel wrapper (DDP's ``.module``), or the module itself."""
    return getattr(module, "module", module)

