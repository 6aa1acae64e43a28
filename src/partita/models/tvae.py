"""A composer-conditioned transformer VAE over fixed-length token segments.

Shape of the model, for a batch of ``B`` segments of at most ``context`` token ids (right-padded
with ``pad_id``) and their labels (composer indices):

* **encoder**: token embedding -> ``n_enc_layer`` bidirectional transformer blocks (RoPE,
  padding masked) -> mean over the valid positions -> ``(mu, logvar)`` of ``q(z | x)``, a diagonal
  Gaussian in ``d_latent`` dimensions. The encoder never sees the label: whatever composer
  information the latents carry, it read from the notes (``partita eval conditioned`` measures it
  on held-out pieces);
* **prior**: a mixture of Gaussians with one learned diagonal component per label,
  ``p(z | y) = N(prior_mu[y], exp(prior_logvar[y]))``. Training knows the label, so the KL term is
  the closed form ``KL(q(z | x) || p(z | y))`` to the segment's own component (a supervised
  GMVAE): segments of one composer are pulled into one region of the latent space, and sampling
  "in the style of y" is ``z ~ p(z | y)``;
* **decoder**: a causal transformer over ``[BOS, x_0, ..., x_{T-2}]`` predicting ``x_0..x_{T-1}``;
  every block has causal self-attention (``partita.nn.attention.CausalSelfAttention``, RoPE, KV
  cache for sampling), cross-attention to a small *memory*, and an MLP. The memory is the label's
  embedding followed by ``n_memory`` vectors projected from ``z``: the composer is in view of
  every position of every layer, directly (the label) and through the latent (its region of the
  prior). An earlier system of this kind generated music a classifier could not tell apart by
  composer; conditioning every layer on the label, and not only through a latent the decoder may
  learn to ignore (posterior collapse), is what this design does about it.

``forward`` returns a ``TVAEOutput``: logits ``[B, T, vocab]``, the summed token cross-entropy and
the number of predicted tokens, the per-dimension KL ``[B, d_latent]``, and ``mu``/``logvar``/``z``.
The training loss (KL annealing, free bits) is the training module's business
(``partita.train.tvae``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partita.errors import PartitaError
from partita.models.config import ModelConfig
from partita.nn.attention import CausalSelfAttention, KVCache, Rotary, apply_rotary
from partita.nn.blocks import MLP, init_gpt2

__all__ = ["TVAE", "TVAEConfig", "TVAEOutput", "PRESETS", "Attention", "gaussian_kl"]


@dataclass
class TVAEConfig(ModelConfig):
    """Everything that defines a TVAE; ``TVAEConfig.preset("small", vocab_size=..., labels=[...])``."""

    kind: ClassVar[str] = "TVAE"

    vocab_size: int = 1000  # the tokenizer's vocabulary (len(tokenizer))
    labels: list[str] = field(default_factory=list)  # composer names, index = prior component
    context: int = 128  # tokens per segment (encoder input, decoder output)
    d_model: int = 128
    n_head: int = 4
    n_enc_layer: int = 2
    n_dec_layer: int = 2
    d_ff: Optional[int] = None  # MLP hidden size; None = 4 * d_model
    d_latent: int = 32
    n_memory: int = 4  # memory vectors made from z (the label's vector comes on top)
    dropout: float = 0.1
    bias: bool = False
    rope_base: float = 10000.0
    prior_spread: float = 1.0  # std of the initial component means (unit variances): separated regions
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    ignore_index: int = -100

    def __post_init__(self) -> None:
        self.labels = [str(x) for x in self.labels]
        for name in ("vocab_size", "context", "d_model", "n_head", "n_enc_layer", "n_dec_layer", "d_latent", "n_memory"):
            if int(getattr(self, name)) < 1:
                raise PartitaError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.labels:
            raise PartitaError("a TVAE needs at least one label (composer)")
        if len(set(self.labels)) != len(self.labels):
            raise PartitaError("TVAE labels must be distinct")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise PartitaError(f"d_model ({self.d_model}) must be n_head ({self.n_head}) times an even head size")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= int(getattr(self, name)) < self.vocab_size:
                raise PartitaError(f"{name} {getattr(self, name)} is not in the vocabulary of {self.vocab_size}")

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


#: ``tiny``: tests. ``small``: ~1.1M parameters, 128-token segments (a few bars), trains on one CPU
#: thread in ~15 minutes. ``base``: a GPU model over 512-token segments.
PRESETS: dict[str, TVAEConfig] = {
    "tiny": TVAEConfig(labels=["a"], context=32, d_model=32, n_head=2, n_enc_layer=1, n_dec_layer=1, d_latent=8,
                       n_memory=2, dropout=0.0),
    "small": TVAEConfig(labels=["a"], context=128, d_model=128, n_head=4, n_enc_layer=2, n_dec_layer=2, d_latent=32),
    "base": TVAEConfig(labels=["a"], context=512, d_model=512, n_head=8, n_enc_layer=6, n_dec_layer=8, d_latent=128,
                       n_memory=8),
}
TVAEConfig.presets = PRESETS


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor, prior_logvar: Tensor) -> Tensor:
    """``KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar))`` per dimension (diagonal Gaussians)."""
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu) ** 2) / prior_logvar.exp() - 1.0)


class Attention(nn.Module):
    """Multi-head attention of ``x [B, T, C]`` over ``context [B, S, C]`` through SDPA, no causal
    mask: the encoder's self-attention (``context = x``, with RoPE on queries and keys) and the
    decoder's cross-attention to the memory (no positions: the memory is a set of vectors)."""

    def __init__(self, d_model: int, n_head: int, *, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, *, rope: Optional[tuple[Tensor, Tensor]] = None,
                key_mask: Optional[Tensor] = None) -> Tensor:
        """``key_mask [B, S]``: True where a key may be attended to (None: all)."""
        B, T, C = x.shape
        S = context.shape[1]
        H, Dh = self.n_head, self.head_dim
        q = self.q(x).view(B, T, H, Dh).transpose(1, 2)
        k, v = self.kv(context).view(B, S, 2, H, Dh).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional block: self-attention then MLP."""

    def __init__(self, c: TVAEConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.d_model, bias=c.bias)
        self.attn = Attention(c.d_model, c.n_head, dropout=c.dropout, bias=c.bias)
        self.ln_2 = nn.LayerNorm(c.d_model, bias=c.bias)
        self.mlp = MLP(c.d_model, c.d_ff, dropout=c.dropout, bias=c.bias)

    def forward(self, x: Tensor, rope, key_mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, rope=rope, key_mask=key_mask)
        return x + self.mlp(self.ln_2(x))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the memory, MLP."""

    def __init__(self, c: TVAEConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.d_model, bias=c.bias)
        self.attn = CausalSelfAttention(c.d_model, c.n_head, dropout=c.dropout, bias=c.bias)
        self.ln_x = nn.LayerNorm(c.d_model, bias=c.bias)
        self.cross = Attention(c.d_model, c.n_head, dropout=c.dropout, bias=c.bias)
        self.ln_2 = nn.LayerNorm(c.d_model, bias=c.bias)
        self.mlp = MLP(c.d_model, c.d_ff, dropout=c.dropout, bias=c.bias)

    def forward(self, x: Tensor, memory: Tensor, **attn_kwargs) -> Tensor:
        x = x + self.attn(self.ln_1(x), **attn_kwargs)
        x = x + self.cross(self.ln_x(x), memory)
        return x + self.mlp(self.ln_2(x))


@dataclass
class TVAEOutput:
    logits: Tensor  # [B, T, vocab_size]
    recon: Optional[Tensor]  # summed token cross-entropy (nats), None without targets
    n_tokens: int  # predicted (non-pad) tokens
    kl: Tensor  # [B, d_latent] per-dimension KL to the label's prior component
    mu: Tensor
    logvar: Tensor
    z: Tensor


class TVAE(nn.Module):
    """Encoder -> mixture-of-Gaussians latent -> label-and-latent-conditioned decoder (module doc)."""

    family = "tvae"
    config_class = TVAEConfig

    def __init__(self, config: TVAEConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)  # shared by encoder, decoder and output head
        self.rotary = Rotary(c.head_dim, c.rope_base)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(c) for _ in range(c.n_enc_layer))
        self.enc_ln = nn.LayerNorm(c.d_model, bias=c.bias)
        self.to_latent = nn.Linear(c.d_model, 2 * c.d_latent)
        self.prior_mu = nn.Parameter(torch.randn(c.n_labels, c.d_latent, generator=torch.Generator().manual_seed(0))
                                     * c.prior_spread)
        self.prior_logvar = nn.Parameter(torch.zeros(c.n_labels, c.d_latent))
        self.label_emb = nn.Embedding(c.n_labels, c.d_model)
        self.from_latent = nn.Linear(c.d_latent, c.n_memory * c.d_model)
        self.mem_ln = nn.LayerNorm(c.d_model, bias=c.bias)
        self.decoder = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_dec_layer))
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        for module in self.modules():  # pre-order, as before
            init_gpt2(module)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * (c.n_enc_layer + c.n_dec_layer)))
        # Start with a near-zero logvar: posteriors as wide as the prior components.
        nn.init.zeros_(self.to_latent.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def label_index(self, label: Any) -> int:
        """The index of a composer name (any letter case) or index; unknown -> PartitaError listing them."""
        names = self.config.labels
        if isinstance(label, (int,)) and not isinstance(label, bool):
            if not 0 <= label < len(names):
                raise PartitaError(f"label {label} out of range: this model knows {len(names)} composers")
            return int(label)
        key = str(label).strip().lower()
        for i, name in enumerate(names):
            if name.lower() == key:
                return i
        raise PartitaError(f"unknown composer {str(label)!r}: this model knows {', '.join(names)}")

    # ------------------------------------------------------------------ encoder and prior

    def encode(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)``, both ``[B, d_latent]``, of segments ``ids [B, T]`` (pad-padded)."""
        c = self.config
        if ids.dim() != 2 or ids.shape[1] > c.context:
            raise PartitaError(f"segments must be [batch, <= {c.context}] token ids, got shape {tuple(ids.shape)}")
        ids = ids.long()
        valid = ids != c.pad_id
        n = valid.sum(dim=1, keepdim=True)
        if bool((n == 0).any()):
            raise PartitaError("a segment has no tokens (only padding): nothing to encode")
        x = self.drop(self.wte(ids))
        rope = self.rotary.span(0, ids.shape[1], device=ids.device, dtype=x.dtype)
        for block in self.encoder:
            x = block(x, rope, valid)
        x = self.enc_ln(x)
        pooled = (x * valid[:, :, None].to(x.dtype)).sum(dim=1) / n.to(x.dtype)
        mu, logvar = self.to_latent(pooled).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def prior(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of the prior components of ``labels [B]``."""
        labels = labels.long()
        return self.prior_mu[labels], self.prior_logvar.clamp(-10.0, 10.0)[labels]

    def sample_prior(self, labels: Tensor, generators: Optional[list] = None, scale: float = 1.0) -> Tensor:
        """``z [B, d_latent]`` drawn from the labels' components (row ``b`` with ``generators[b]``);
        ``scale`` multiplies the standard deviation (0: the component means)."""
        mu, logvar = self.prior(labels)
        if generators is None:
            eps = torch.randn_like(mu)
        else:
            eps = torch.stack([torch.randn(mu.shape[1], generator=g, device=g.device) for g in generators]).to(mu)
        return mu + float(scale) * (0.5 * logvar).exp() * eps

    # ------------------------------------------------------------------ decoder

    def memory(self, z: Tensor, labels: Tensor) -> Tensor:
        """The decoder's cross-attention memory ``[B, 1 + n_memory, d_model]``: label vector, then z's."""
        c = self.config
        lab = self.label_emb(labels.long())[:, None, :]
        lat = self.from_latent(z).view(z.shape[0], c.n_memory, c.d_model)
        return self.mem_ln(torch.cat([lab, lat], dim=1))

    def decode(self, ids: Tensor, memory: Tensor, *, cache: Optional[KVCache] = None, last_only: bool = False) -> Tensor:
        """Logits ``[B, T, vocab]`` for decoder inputs ``ids [B, T]`` (``[BOS, x_0, ...]``); with a
        ``cache`` (``model.new_cache()``) the inputs follow the cached positions."""
        c = self.config
        start = cache.next_position if cache is not None else 0
        if start + ids.shape[1] > c.context:
            raise PartitaError(f"{start + ids.shape[1]} positions exceed the TVAE's context ({c.context})")
        x = self.drop(self.wte(ids.long()))
        rope = self.rotary.span(start, ids.shape[1], device=ids.device, dtype=x.dtype)
        for i, block in enumerate(self.decoder):
            x = block(x, memory, rope=rope, start=start, layer=i, cache=cache)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
        return F.linear(x, self.wte.weight)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_dec_layer)

    def decoder_inputs(self, ids: Tensor) -> Tensor:
        """``[BOS, x_0, ..., x_{T-2}]`` for segments ``ids [B, T]``."""
        bos = torch.full_like(ids[:, :1], self.config.bos_id)
        return torch.cat([bos, ids[:, :-1]], dim=1)

    # ------------------------------------------------------------------ the whole model

    def forward(self, ids: Tensor, labels: Tensor, *, sample: Optional[bool] = None) -> TVAEOutput:
        """Encode, draw ``z`` (the reparameterisation trick when ``sample``, default: in training;
        else ``z = mu``), decode with teacher forcing; recon and KL of the module doc."""
        c = self.config
        ids = ids.long()
        labels = labels.long()
        mu, logvar = self.encode(ids)
        sample = self.training if sample is None else sample
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu
        pm, plv = self.prior(labels)
        kl = gaussian_kl(mu, logvar, pm, plv)
        logits = self.decode(self.decoder_inputs(ids), self.memory(z, labels))
        targets = ids.masked_fill(ids == c.pad_id, c.ignore_index)
        n = int((targets != c.ignore_index).sum())
        recon = F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), targets.reshape(-1),
                                ignore_index=c.ignore_index, reduction="sum")
        return TVAEOutput(logits=logits, recon=recon, n_tokens=n, kl=kl, mu=mu, logvar=logvar, z=z)
