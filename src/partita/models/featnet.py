"""FeatNet: the feature embedder, a learned projection of a piece's musical descriptor.

Input: ``partita.represent.features.piano_descriptor`` of a piece or excerpt (360 values: pitch
classes as written and relative to the key, top/bass steps, the top line's scale-degree
transitions, chord sizes and intervals, register, tempo-free rhythm ratios, timing and velocity
statistics). Layers::

    descriptor [B, 360] -> standardise (mean/std of the training crops, kept as buffers)
      -> dropout -> Linear (-> GELU -> Linear when ``hidden`` > 0) -> ``dim - 1`` values
      -> append the atypicality axis -> L2 normalisation -> ``dim`` values

The last axis says how unlike the training music the input is: ``max(0, a / limit - 1)`` with
``a`` the mean squared z-score of the standardised descriptor and ``limit`` twice the 99th
percentile of ``a`` over the training pieces (set after training). It is 0 for music like the
training set, so it changes nothing there, and grows fast for inputs such as random notes (``a``
of 10-26 where piano pieces have 0.4-1.5), which then sit far from every composer: attribution's
novelty test (Mahalanobis distance) calls them unknown, and search ranks nothing close to them.

Trained with a two-level supervised contrastive loss (``partita.train.featnet``): crops of the same
work are positives, crops of other works by the same composer weaker positives. The point of
learning the projection, rather than comparing standardised descriptors: the loss decides which
of the 360 dimensions tell composers and works apart and which only tell performances apart
(benchmarks/RESULTS.md, "piano embeddings"). ``forward(descriptors) -> [B, dim]``, unit length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partita.errors import PartitaError
from partita.models.config import ModelConfig
from partita.represent.features import DESCRIPTOR_NAMES

__all__ = ["FeatNet", "FeatNetConfig", "PRESETS"]

DESCRIPTORS = {"piano-v1": len(DESCRIPTOR_NAMES)}


@dataclass
class FeatNetConfig(ModelConfig):
    """Everything that defines a FeatNet, its input included."""

    kind: ClassVar[str] = "FeatNet"

    descriptor: str = "piano-v1"  # which descriptor function makes the input
    chord_tolerance: float = 0.05  # seconds: onsets closer than this are one chord
    hidden: int = 0  # 0: one linear projection; > 0: an MLP with this hidden size
    dim: int = 64  # the embedding size (the last value is the atypicality axis)
    dropout: float = 0.1  # on the standardised input

    def __post_init__(self) -> None:
        if self.descriptor not in DESCRIPTORS:
            raise PartitaError(f"descriptor must be one of {', '.join(DESCRIPTORS)}, got {self.descriptor!r}")
        if int(self.dim) < 3 or int(self.hidden) < 0:
            raise PartitaError(f"dim must be >= 3 and hidden >= 0, got dim {self.dim}, hidden {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise PartitaError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def in_dim(self) -> int:
        return DESCRIPTORS[self.descriptor]


#: ``small`` is what ships (a linear projection won on ASAP's validation works); ``mlp`` adds a
#: hidden layer; ``tiny`` is for tests.
PRESETS: dict[str, FeatNetConfig] = {
    "tiny": FeatNetConfig(dim=16),
    "small": FeatNetConfig(dim=64),
    "mlp": FeatNetConfig(hidden=256, dim=64),
}
FeatNetConfig.presets = PRESETS


class FeatNet(nn.Module):
    """Embeds descriptors ``[B, in_dim]`` as unit vectors ``[B, dim]`` (module doc)."""

    family = "featnet"  # the bundle family (partita.bundle)
    config_class = FeatNetConfig

    def __init__(self, config: FeatNetConfig):
        super().__init__()
        self.config = c = config
        self.register_buffer("mean", torch.zeros(c.in_dim))
        self.register_buffer("std", torch.ones(c.in_dim))
        self.register_buffer("atypicality_limit", torch.tensor(float("inf")))
        self.drop = nn.Dropout(c.dropout)
        if c.hidden:
            self.proj = nn.Sequential(nn.Linear(c.in_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.dim - 1))
        else:
            self.proj = nn.Linear(c.in_dim, c.dim - 1)

    def set_standardisation(self, descriptors: Tensor) -> None:
        """Mean and standard deviation of the training descriptors (a dimension that never varies
        gets a standard deviation of 1, so it stays 0)."""
        std = descriptors.std(0)
        self.mean.copy_(descriptors.mean(0))
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def atypicality(self, descriptors: Tensor) -> Tensor:
        """Mean squared z-score of each standardised descriptor ``[B]``."""
        x = (descriptors.to(self.mean.dtype) - self.mean) / self.std
        return (x * x).mean(-1)

    def set_atypicality_limit(self, descriptors: Tensor) -> None:
        """The limit of the atypicality axis: twice the 99th percentile over ``descriptors`` (the
        training pieces, whole)."""
        self.atypicality_limit.fill_(2.0 * float(torch.quantile(self.atypicality(descriptors).float(), 0.99)))

    def forward(self, descriptors: Tensor) -> Tensor:
        x = (descriptors.to(self.mean.dtype) - self.mean) / self.std
        projected = F.normalize(self.proj(self.drop(x)), dim=-1)
        outlier = torch.relu((x * x).mean(-1, keepdim=True) / self.atypicality_limit - 1.0)
        return F.normalize(torch.cat([projected, outlier.to(projected.dtype)], -1), dim=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
