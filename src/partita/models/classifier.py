"""A GRU composer classifier over music tokens: embedding -> bidirectional GRU -> pooled -> linear.

Inputs for a batch of ``B`` token segments of ``T`` ids (the tokenizer's ids, shorter segments
right-padded with ``pad_id``): ``ids [B, T]``. ``forward`` returns ``(logits [B, n_labels], loss
or None)`` (nanoGPT style); the loss is the cross-entropy against ``targets [B]`` (label indices).

Why this shape: a recurrent reader is cheap on a CPU, needs no positions, and reads a segment of
any length; the bidirectional GRU's outputs are pooled over the valid (non-pad) positions by a
mean (what the segment is like on the whole) and a max (whether some telling pattern occurs at
all), concatenated, then a linear layer gives one logit per label. Padded positions never reach
the GRU (packed sequences), so a segment's logits do not depend on how much padding its batch has.

A piece longer than a segment is classified by ``piece_log_probs``: up to ``max_segments`` windows
of ``segment`` tokens spread evenly over the piece are read in one batch and their log-probabilities
averaged (a soft vote). The label names are part of the config, so a bundle alone says what it
predicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from partita.data.segments import segment_windows
from partita.errors import PartitaError
from partita.models.config import ModelConfig

__all__ = ["GRUClassifier", "ClassifierConfig", "PRESETS"]


@dataclass
class ClassifierConfig(ModelConfig):
    """Everything that defines a classifier; ``ClassifierConfig.preset("small", vocab_size=..., labels=[...])``."""

    kind: ClassVar[str] = "classifier"

    vocab_size: int = 1000  # the tokenizer's vocabulary (len(tokenizer))
    labels: list[str] = field(default_factory=list)  # label names, index = class
    d_embed: int = 64
    d_hidden: int = 128  # GRU hidden size per direction
    n_layer: int = 1  # stacked GRU layers
    dropout: float = 0.1  # on the embeddings and the pooled vector
    segment: int = 128  # tokens per window (training segments and piece windows)
    pad_id: int = 0

    def __post_init__(self) -> None:
        self.labels = [str(x) for x in self.labels]
        for name in ("vocab_size", "d_embed", "d_hidden", "n_layer", "segment"):
            if int(getattr(self, name)) < 1:
                raise PartitaError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.labels) < 2:
            raise PartitaError(f"a classifier needs at least 2 labels, got {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise PartitaError("classifier labels must be distinct")
        if not 0 <= self.pad_id < self.vocab_size:
            raise PartitaError(f"pad_id {self.pad_id} is not in the vocabulary of {self.vocab_size}")

    @property
    def n_labels(self) -> int:
        return len(self.labels)


#: ``tiny``: tests. ``small``: trains on one CPU thread in ~15 minutes (~0.2M parameters, < 1 MB;
#: windows of 128 tokens, because a GRU's cost grows with the sequential length and a single CPU
#: thread does ~0.5 s per batch of 32 such windows).
#: ``base``: two layers, wider, for a GPU or a long CPU run.
PRESETS: dict[str, ClassifierConfig] = {
    "tiny": ClassifierConfig(labels=["a", "b"], d_embed=16, d_hidden=16, segment=32, dropout=0.0),
    "small": ClassifierConfig(labels=["a", "b"], d_embed=64, d_hidden=128, segment=128),
    "base": ClassifierConfig(labels=["a", "b"], d_embed=256, d_hidden=512, n_layer=2, segment=512, dropout=0.2),
}
ClassifierConfig.presets = PRESETS


class GRUClassifier(nn.Module):
    """Embedding -> bidirectional GRU -> masked mean + max pooling -> linear (module doc)."""

    family = "classifier"
    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_embed, padding_idx=c.pad_id)
        self.drop = nn.Dropout(c.dropout)
        self.gru = nn.GRU(c.d_embed, c.d_hidden, num_layers=c.n_layer, batch_first=True, bidirectional=True,
                          dropout=c.dropout if c.n_layer > 1 else 0.0)
        self.norm = nn.LayerNorm(4 * c.d_hidden)
        self.head = nn.Linear(4 * c.d_hidden, c.n_labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def features(self, ids: Tensor) -> Tensor:
        """The pooled vector ``[B, 4 * d_hidden]`` (mean and max of both directions) of ``ids [B, T]``."""
        c = self.config
        if ids.dim() != 2:
            raise ValueError(f"ids must be [batch, time], got shape {tuple(ids.shape)}")
        ids = ids.long()
        mask = ids != c.pad_id
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise PartitaError("a segment has no tokens (only padding): nothing to classify")
        x = self.drop(self.embed(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # [B, T, 2H]
        m = mask[:, :, None].to(out.dtype)
        mean = (out * m).sum(dim=1) / lengths[:, None].to(out.dtype)
        mx = out.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)
        return self.norm(torch.cat([mean, mx], dim=-1))

    def forward(self, ids: Tensor, targets: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        logits = self.head(self.drop(self.features(ids)))
        loss = None if targets is None else F.cross_entropy(logits.float(), targets.long())
        return logits, loss

    @torch.no_grad()
    def piece_log_probs(self, ids: Sequence[int] | np.ndarray, *, max_segments: int = 16) -> np.ndarray:
        """Log-probabilities ``[n_labels]`` of a whole piece: its windows' log-softmax averaged, renormalised.

        ``ids``: the piece's token ids (BOS/EOS may be there; PAD ids are dropped). Windows:
        ``segment_windows(len, config.segment, max_segments)``.
        """
        c = self.config
        ids = np.asarray(ids, dtype=np.int64).ravel()
        ids = ids[ids != c.pad_id]
        if ids.size == 0:
            raise PartitaError("the piece has no tokens: nothing to classify")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise PartitaError(f"token ids must be in [0, {c.vocab_size}) for this classifier's tokenizer")
        wins = segment_windows(len(ids), c.segment, max_segments)
        batch = np.full((len(wins), min(c.segment, len(ids))), c.pad_id, np.int64)
        for r, (s, e) in enumerate(wins):
            batch[r, : e - s] = ids[s:e]
        was = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            logits, _ = self(torch.from_numpy(batch).to(device))
        finally:
            self.train(was)
        mean = torch.log_softmax(logits.float(), dim=-1).mean(dim=0)
        return (mean - torch.logsumexp(mean, dim=0)).cpu().numpy()  # renormalised: a distribution
