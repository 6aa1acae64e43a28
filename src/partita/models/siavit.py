"""SiaViT: a siamese convolutional vision transformer that embeds pianoroll windows (after Harmonixr).

Input: helical pianorolls ``rolls [B, 12, 6, T]`` (``partita.represent.pianoroll``: 12 pitch
classes x 6 octaves over F1-E7, ``T`` frames of ``config.frame_seconds``, rendered in
``config.mode``). The config alone says how to build the input (frame length, window length, mode,
normalisation), so a bundle is enough to embed new MIDI (``partita.search.embed``).

Layers, for one window::

    roll [B, 1, 12, 6, T]
      -> stem: WraparoundConv3d (time stride ``stem_stride``) + norm + GELU
      -> stages: per stage, residual blocks (two wraparound convolutions under one skip), dropout,
         then max-pool over time by 2 between stages (pitch and octave are never pooled: the helix
         stays whole and the convolutions stay transposition-equivariant)
      -> patches: ``patch_frames`` time frames of all channels x 12 x 6 cells -> one Linear to d_model
      -> transformer encoder (bidirectional, pre-norm, SDPA) with positions over time patches
         (RoPE by default, learned, or none as in Harmonixr)
      -> mean over patches -> MLP head -> ``dim`` values -> L2 normalisation

"Siamese" means one encoder applied to both windows of a pair (the training code calls
``forward`` on both and compares the embeddings); nothing here depends on pairs.

``forward(rolls) -> [B, dim]``, unit length. Windows of any length work (RoPE has no table to
outgrow; learned positions are limited to ``max_patches``); a window shorter than a patch is
padded with silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partita.errors import PartitaError
from partita.models.config import ModelConfig
from partita.nn.attention import Rotary, apply_rotary
from partita.nn.blocks import MLP, init_gpt2
from partita.nn.wraparound import WRAP_MODES, WraparoundConv3d

__all__ = ["PRESETS", "SiaViT", "SiaViTConfig"]

_MODES = ("binary", "velocity", "decay")


@dataclass
class SiaViTConfig(ModelConfig):
    """Everything that defines a SiaViT, input included; ``SiaViTConfig.preset("small")`` to start."""

    kind: ClassVar[str] = "SiaViT"

    # input: how a window of music becomes a roll
    frame_seconds: float = 0.1  # one time frame of the pianoroll
    window_seconds: float = 30.0  # the crop the model sees in training (and per window when embedding)
    mode: str = "decay"  # pianoroll mode: binary | velocity | decay
    normalize_input: bool = True  # divide each window by its maximum (loudness-free: scores vs performances)
    # convolutions
    channels: list = field(default_factory=lambda: [16, 32])  # per stage
    blocks_per_stage: int = 1  # residual blocks (2 convolutions each) per stage
    kernel: list = field(default_factory=lambda: [3, 3, 3])  # (pitch, octave, time)
    stem_kernel: list = field(default_factory=lambda: [3, 3, 5])
    stem_stride: int = 2  # time stride of the stem
    wrap: str = "helix"  # helix (rolled wraparound) | pitch (Harmonixr's circular pad) | zeros
    norm: str = "group"  # group (batch-independent) | batch (Harmonixr)
    conv_dropout: float = 0.1
    # transformer
    patch_frames: int = 3  # time frames (after the convolutions) per transformer token
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    d_ff: Optional[int] = None  # None = 4 * d_model
    dropout: float = 0.1
    positions: str = "rope"  # rope | learned | none (Harmonixr)
    max_patches: int = 512  # learned positions only
    # head
    head_hidden: list = field(default_factory=list)  # hidden sizes of the MLP head (Harmonixr: [512, 256])
    head_dropout: float = 0.1
    dim: int = 128  # the embedding size

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        self.kernel = [int(k) for k in self.kernel]
        self.stem_kernel = [int(k) for k in self.stem_kernel]
        self.head_hidden = [int(h) for h in self.head_hidden]
        if self.mode not in _MODES:
            raise PartitaError(f"mode must be one of {', '.join(_MODES)}, got {self.mode!r}")
        if self.wrap not in WRAP_MODES:
            raise PartitaError(f"wrap must be one of {', '.join(WRAP_MODES)}, got {self.wrap!r}")
        if self.norm not in ("group", "batch"):
            raise PartitaError(f"norm must be 'group' or 'batch', got {self.norm!r}")
        if self.positions not in ("rope", "learned", "none"):
            raise PartitaError(f"positions must be 'rope', 'learned' or 'none', got {self.positions!r}")
        if not self.frame_seconds > 0 or not self.window_seconds >= self.frame_seconds:
            raise PartitaError("frame_seconds must be > 0 and window_seconds at least one frame")
        if not self.channels or min(self.channels) < 1:
            raise PartitaError(f"channels must be a non-empty list of positive sizes, got {self.channels}")
        for name in ("kernel", "stem_kernel"):
            k = getattr(self, name)
            if len(k) != 3 or k[0] % 2 == 0 or k[1] % 2 == 0 or min(k) < 1:
                raise PartitaError(f"{name} must be [pitch, octave, time] with odd pitch and octave sizes, got {k}")
        for name in ("blocks_per_stage", "stem_stride", "patch_frames", "d_model", "n_layer", "n_head", "dim", "max_patches"):
            if int(getattr(self, name)) < 1:
                raise PartitaError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise PartitaError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.positions == "rope" and (self.d_model // self.n_head) % 2:
            raise PartitaError(f"rotary positions need an even head size, got {self.d_model // self.n_head}")

    @property
    def window_frames(self) -> int:
        return int(round(self.window_seconds / self.frame_seconds))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


    @classmethod
    def tiny(cls, **overrides: Any) -> "SiaViTConfig":
        return cls.preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides: Any) -> "SiaViTConfig":
        return cls.preset("small", **overrides)

    @classmethod
    def base(cls, **overrides: Any) -> "SiaViTConfig":
        return cls.preset("base", **overrides)


#: Named configurations. ``tiny``: tests. ``small``: trains on a CPU in ~20 minutes (0.2 s frames,
#: 30 s windows). ``base``: a GPU model at Harmonixr's resolution (50 ms frames, 60 s windows).
#: ``harmonixr``: Harmonixr's published hyper-parameters (its train.py: 3 residual conv layers of
#: 32/64/128 channels, batch norm, dropout 0.5/0.4/0.4, a 3-layer 512-wide transformer with 8 heads
#: and no positional encoding, a 512-256 head, 128-d embeddings, 60 s of 50 ms decay frames, and its
#: plain pitch-class wraparound); train it with ``--loss contrastive --lr 5e-6 --weight-decay 1e-5``.
PRESETS: dict[str, SiaViTConfig] = {
    "tiny": SiaViTConfig(frame_seconds=0.25, window_seconds=8.0, channels=[4, 8], d_model=32, n_layer=1,
                         n_head=2, patch_frames=2, dim=16, stem_kernel=[3, 3, 3]),
    "small": SiaViTConfig(frame_seconds=0.2, window_seconds=30.0, channels=[16, 32], d_model=128, n_layer=2,
                          n_head=4, patch_frames=2, dim=128, stem_stride=2),
    "base": SiaViTConfig(frame_seconds=0.05, window_seconds=60.0, channels=[32, 64, 128], blocks_per_stage=2,
                         stem_stride=2, stem_kernel=[5, 3, 5], d_model=384, n_layer=6, n_head=6,
                         patch_frames=4, dim=128, head_hidden=[512]),
    "harmonixr": SiaViTConfig(frame_seconds=0.05, window_seconds=60.0, mode="decay", normalize_input=False,
                              channels=[32, 64, 128], blocks_per_stage=1, stem_kernel=[5, 5, 5], stem_stride=2,
                              kernel=[3, 3, 3], wrap="pitch", norm="batch", conv_dropout=0.4, patch_frames=1,
                              d_model=512, n_layer=3, n_head=8, d_ff=1024, dropout=0.3, positions="none",
                              head_hidden=[512, 256], head_dropout=0.3, dim=128),
}
SiaViTConfig.presets = PRESETS


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    """Two wraparound convolutions under one skip: ``x + conv(act(norm(conv(x))))`` (pre-activation),
    with a 1x1x1 projection on the skip when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, kernel: list, *, wrap: str, norm: str, dropout: float):
        super().__init__()
        self.norm1 = _norm(norm, c_in)
        self.conv1 = WraparoundConv3d(c_in, c_out, kernel, wrap=wrap, bias=False)
        self.norm2 = _norm(norm, c_out)
        self.conv2 = WraparoundConv3d(c_out, c_out, kernel, wrap=wrap, bias=False)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv3d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(self.drop(F.gelu(self.norm2(h))))
        return self.skip(x) + h


class EncoderAttention(nn.Module):
    """Bidirectional multi-head self-attention through SDPA, with optional rotary positions."""

    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, rope: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block (attention, then partita's GELU MLP)."""

    def __init__(self, d_model: int, n_head: int, d_ff: Optional[int], dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = EncoderAttention(d_model, n_head, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout=dropout, bias=True)

    def forward(self, x: Tensor, rope: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))


class SiaViT(nn.Module):
    """Embeds pianoroll windows ``[B, 12, 6, T]`` as unit vectors ``[B, dim]`` (module doc)."""

    family = "siavit"  # the bundle family (partita.bundle)
    config_class = SiaViTConfig

    def __init__(self, config: SiaViTConfig):
        super().__init__()
        self.config = c = config
        self.stem = WraparoundConv3d(1, c.channels[0], c.stem_kernel, stride=c.stem_stride, wrap=c.wrap, bias=False)
        self.stem_norm = _norm(c.norm, c.channels[0])
        stages = []
        c_in = c.channels[0]
        for s, c_out in enumerate(c.channels):
            blocks: list[nn.Module] = []
            for b in range(c.blocks_per_stage):
                blocks.append(ResidualBlock(c_in if b == 0 else c_out, c_out, c.kernel, wrap=c.wrap, norm=c.norm,
                                            dropout=c.conv_dropout))
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.conv_out_norm = _norm(c.norm, c.channels[-1])
        self.conv_drop = nn.Dropout(c.conv_dropout)
        # Patch projection: every cell of the helix keeps its own weights (pitch matters for style).
        self.patch = nn.Linear(c.channels[-1] * 72 * c.patch_frames, c.d_model)
        self.wpe = nn.Embedding(c.max_patches, c.d_model) if c.positions == "learned" else None
        self.rotary = Rotary(c.head_dim) if c.positions == "rope" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(c.d_model, c.n_head, c.d_ff, c.dropout) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        head: list[nn.Module] = []
        width = c.d_model
        for h in c.head_hidden:
            head += [nn.Linear(width, h), nn.GELU(), nn.Dropout(c.head_dropout)]
            width = h
        head.append(nn.Linear(width, c.dim))
        self.head = nn.Sequential(*head)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        init_gpt2(module)
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def prepare(self, rolls: Tensor) -> Tensor:
        """The input normalisation the config asks for (``normalize_input``: each window / its max)."""
        rolls = rolls.float()
        if self.config.normalize_input:
            peak = rolls.flatten(1).amax(dim=1).clamp(min=1e-6)
            rolls = rolls / peak[:, None, None, None]
        return rolls

    def features(self, rolls: Tensor) -> Tensor:
        """The convolutional feature map ``[B, C, 12, 6, T']`` of ``rolls [B, 12, 6, T]``."""
        x = self.prepare(rolls).unsqueeze(1)
        x = F.gelu(self.stem_norm(self.stem(x)))
        for s, stage in enumerate(self.stages):
            if s > 0:  # halve time between stages; pitch and octave stay whole
                x = F.max_pool3d(x, kernel_size=(1, 1, 2), ceil_mode=True)
            x = stage(x)
        return self.conv_drop(F.gelu(self.conv_out_norm(x)))

    def forward(self, rolls: Tensor) -> Tensor:
        """``rolls [B, 12, 6, T]`` -> unit-length embeddings ``[B, dim]``."""
        c = self.config
        if rolls.dim() != 4 or tuple(rolls.shape[1:3]) != (12, 6):
            raise PartitaError(f"SiaViT takes pianorolls [batch, 12, 6, frames], got shape {tuple(rolls.shape)}")
        if rolls.shape[-1] == 0:
            raise PartitaError("an empty pianoroll (0 frames) cannot be embedded")
        x = self.features(rolls)
        B, C, P, O, T = x.shape
        n = -(-T // c.patch_frames)
        if n * c.patch_frames != T:  # pad the last patch with silence (zeros after the activation)
            x = F.pad(x, (0, n * c.patch_frames - T))
        # [B, C, P, O, n, f] -> [B, n, C * P * O * f]
        x = x.view(B, C, P, O, n, c.patch_frames).permute(0, 4, 1, 2, 3, 5).reshape(B, n, -1)
        x = self.patch(x)
        if self.wpe is not None:
            if n > c.max_patches:
                raise PartitaError(f"{n} patches exceed max_patches ({c.max_patches}) of a model with learned positions")
            x = x + self.wpe(torch.arange(n, device=x.device))
        x = self.drop(x)
        rope = self.rotary.span(0, n, device=x.device, dtype=x.dtype) if self.rotary is not None else None
        for block in self.blocks:
            x = block(x, rope)
        x = self.ln_f(x).mean(dim=1)
        return F.normalize(self.head(x), dim=-1)
