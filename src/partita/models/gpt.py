"""A GPT for music tokens: decoder-only transformer with bar/beat embeddings and label conditioning.

Inputs for a batch of ``B`` sequences of ``T`` tokens:

* ``ids [B, T]``: token ids. Ids ``0..vocab_size-1`` are the tokenizer's; id ``vocab_size + k``
  is the *label token* of label ``k`` (composer, artist, collection...) and
  ``vocab_size + n_labels`` means "no label". A conditioned sequence starts with its label
  token (``GPT.label_token(k)``), e.g. ``[label, BOS, ...]``. With ``fim=True`` two more
  input-only ids follow, ``GPT.fill_token("suffix")`` and ``GPT.fill_token("middle")``, the
  markers of the fill-in-the-middle arrangement ``[label, SUFFIX, suffix, MIDDLE, prefix,
  middle]`` (``partita.data.streams``, ``partita.generation.infill``). The head predicts only the
  ``vocab_size`` tokenizer ids, so a label is never generated; targets must be tokenizer ids or
  ``ignore_index``.
* ``bars [B, T]`` and ``positions [B, T]`` (only with ``bar_embeddings=True``): the bar index and
  the position in the bar of every token, from ``partita.represent.tokens.token_timing`` or
  ``TokenStreams.bars(i)/positions(i)`` (0 for a label token). Bar indices are taken modulo
  ``max_bars`` (wrapped, not clipped: a long piece keeps distinguishing bars, and with
  ``max_bars`` a multiple of 4 or 8 the wrap falls on phrase boundaries, where "bar 0 of a
  phrase" is what the embedding can learn anyway); positions are clipped to
  ``positions_per_bar - 1``. Both embeddings are added to the token embedding.

Positions of tokens are rotary (RoPE, default; relative, so generation can slide past the
context, see ``partita.nn.attention``) or learned absolute embeddings (``positions="learned"``:
index = place in the current window, at most ``context - 1``; not translation invariant, so past
the context a generator must recompute the window instead of sliding the cache).

State for generation and long songs is held in objects passed to ``forward`` and changed in
place (``partita.nn.attention`` documents them):

* ``cache=KVCache`` (``model.new_cache()``): incremental decoding; ``model.crop_cache(cache, keep,
  xl=..., knn=...)`` slides the window and moves what falls out into the memories;
* ``xl=XLMemory`` (``model.new_xl_memory(B)``, needs ``xl_memory=True``): Transformer-XL memory of
  the previous segment in every layer; ``xl.reset(mask)`` when a row's song ends;
* ``knn=KNNMemory`` (``model.new_knn_memory(B)``, needs ``knn_memory=True``): Memorizing-
  Transformers memory of all past keys/values of the song in layer ``knn_layer``;
  ``knn.reset(mask)`` when a row's song ends.

``forward`` returns ``(logits [B, T, vocab_size], loss or None)`` (nanoGPT style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partita.errors import PartitaError
from partita.models.config import ModelConfig
from partita.nn.attention import KNNMemory, KVCache, Rotary, XLMemory, apply_rotary
from partita.nn.blocks import BLOCKS, init_gpt2, make_block

__all__ = ["GPT", "GPTConfig", "PRESETS"]


@dataclass
class GPTConfig(ModelConfig):
    """Everything that defines a GPT; ``GPTConfig.preset("small", vocab_size=...)`` to start."""

    kind: ClassVar[str] = "GPT"

    vocab_size: int = 517  # the tokenizer's vocabulary (len(tokenizer)); 517 = partita's default REMI
    n_labels: int = 0  # label tokens vocab_size..vocab_size+n_labels-1, plus one "no label" token
    context: int = 512  # tokens seen at once in training (the window)
    n_layer: int = 6
    n_head: int = 4
    d_model: int = 256
    d_ff: Optional[int] = None  # MLP hidden size; None = 4 * d_model
    dropout: float = 0.0  # on embeddings and residual branches
    # on attention probabilities: 0 by default, since any of it sends PyTorch's CPU attention to
    # its unfused path (8x slower; training the small preset took 3x longer with 0.1)
    attn_dropout: float = 0.0
    gelu: str = "none"  # "none" (exact) | "tanh" (the approximation GPT-2 and TchAIkovsky use; presets)
    bias: bool = False  # biases in Linear and LayerNorm (False: a bit faster, as good)
    positions: str = "rope"  # "rope" | "learned"
    rope_base: float = 10000.0
    block: str = "sequential"  # "sequential" (GPT-2) | "parallel" (GPT-J, TchAIkovsky)
    bar_embeddings: bool = False  # add bar-index and position-in-bar embeddings
    max_bars: int = 64  # bar indices wrap modulo this
    positions_per_bar: int = 128  # position-in-bar values (REMI at 8 per beat: 32 in 4/4, 96 in 12/4)
    xl_memory: bool = False  # Transformer-XL memory of the previous segment in every layer
    xl_length: Optional[int] = None  # positions kept in XL memory; None = context
    knn_memory: bool = False  # Memorizing-Transformers kNN memory in one layer
    knn_layer: Optional[int] = None  # which layer (negative counts from the top); None = second from top
    knn_topk: int = 32
    knn_max_memory: int = 16384  # keys kept per batch row (oldest dropped)
    ignore_index: int = -100  # target value the loss skips
    fim: bool = False  # two input-only marker tokens for fill-in-the-middle (infilling)

    def __post_init__(self) -> None:
        if self.positions not in ("rope", "learned"):
            raise PartitaError(f"positions must be 'rope' or 'learned', got {self.positions!r}")
        if self.block not in BLOCKS:
            raise PartitaError(f"block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
        if self.gelu not in ("none", "tanh"):
            raise PartitaError(f"gelu must be 'none' or 'tanh', got {self.gelu!r}")
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "max_bars", "positions_per_bar",
                     "knn_topk", "knn_max_memory"):
            if int(getattr(self, name)) < 1:
                raise PartitaError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_labels < 0:
            raise PartitaError(f"n_labels must be >= 0, got {self.n_labels}")
        if self.d_model % self.n_head:
            raise PartitaError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.positions == "rope" and (self.d_model // self.n_head) % 2:
            raise PartitaError(f"rotary positions need an even head size, got {self.d_model // self.n_head}")
        if self.knn_memory:
            self.knn_layer_index  # validates

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def n_embeddings(self) -> int:
        """Rows of the token embedding: tokenizer ids, label tokens, "no label", FIM markers."""
        return self.vocab_size + self.n_labels + 1 + (2 if self.fim else 0)

    @property
    def knn_layer_index(self) -> int:
        """The kNN layer as a non-negative index."""
        i = self.knn_layer if self.knn_layer is not None else max(self.n_layer - 2, 0)
        if not -self.n_layer <= i < self.n_layer:
            raise PartitaError(f"knn_layer {i} is not a layer of a {self.n_layer}-layer model")
        return i % self.n_layer


#: Named configurations. ``tiny``: tests (< 1M parameters). ``mini``: ~2-3M parameters, context
#: 256, for a CPU run of minutes. ``small``: trains on a CPU in under an
#: hour on a small corpus (~5M parameters, context 512). ``base``: a GPU model like TchAIkovsky's
#: released one (~85M parameters without embeddings, ~100M with a 20k BPE vocabulary).
PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(context=64, n_layer=2, n_head=2, d_model=64, max_bars=16, positions_per_bar=64, gelu="tanh"),
    "small": GPTConfig(context=512, n_layer=6, n_head=4, d_model=256, dropout=0.1, gelu="tanh"),
    # a CPU run in a short budget: ~2.5x the steps of small in the same time (partita.train.gpt.choose_preset)
    "mini": GPTConfig(context=256, n_layer=4, n_head=4, d_model=192, dropout=0.1, gelu="tanh"),
    "base": GPTConfig(vocab_size=20000, context=1024, n_layer=12, n_head=12, d_model=768, dropout=0.1,
                      block="parallel", gelu="tanh"),
}
GPTConfig.presets = PRESETS


class GPT(nn.Module):
    """Decoder-only transformer over music tokens (see the module doc for inputs and state)."""

    family = "gpt"  # the bundle family (partita.bundle)
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.n_embeddings, c.d_model)
        self.wpe = nn.Embedding(c.context, c.d_model) if c.positions == "learned" else None
        self.rotary = Rotary(c.head_dim, c.rope_base) if c.positions == "rope" else None
        if c.bar_embeddings:
            self.bar_emb = nn.Embedding(c.max_bars, c.d_model)
            self.pos_emb = nn.Embedding(c.positions_per_bar, c.d_model)
        else:
            self.bar_emb = self.pos_emb = None
        self.drop = nn.Dropout(c.dropout)
        self.knn_layer = c.knn_layer_index if c.knn_memory else -1
        self.blocks = nn.ModuleList(
            make_block(c.block, c.d_model, c.n_head, d_ff=c.d_ff, dropout=c.dropout, attn_dropout=c.attn_dropout, bias=c.bias, gelu=c.gelu,
                       knn=(i == self.knn_layer))
            for i in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        # The output head is the token embedding's first vocab_size rows (weight tying); label
        # rows are input-only, so a label is never predicted.
        self.apply(init_gpt2)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    # ------------------------------------------------------------------ helpers

    def label_token(self, label: Optional[int]) -> int:
        """The input id of label ``label`` (0..n_labels-1), or of "no label" for None."""
        c = self.config
        if label is None:
            return c.vocab_size + c.n_labels
        if not 0 <= int(label) < c.n_labels:
            raise PartitaError(f"label {label} out of range: this model knows {c.n_labels} labels")
        return c.vocab_size + int(label)

    def fill_token(self, which: str) -> int:
        """The input id of the fill-in-the-middle marker ``which`` ("suffix" or "middle")."""
        c = self.config
        if not c.fim:
            raise PartitaError("this model was not trained for infilling (no fill-in-the-middle tokens): "
                               "use a model trained with 'partita train gpt --fim' such as gpt-piano")
        return c.vocab_size + c.n_labels + 1 + ("suffix", "middle").index(which)

    def new_cache(self, offset: int = 0) -> KVCache:
        return KVCache(self.config.n_layer, offset)

    def new_xl_memory(self, batch_size: int) -> XLMemory:
        if not self.config.xl_memory:
            raise PartitaError("this model was not configured with xl_memory=True")
        return XLMemory(self.config.n_layer, batch_size, self.config.xl_length or self.config.context)

    def new_knn_memory(self, batch_size: int, **kwargs: Any) -> KNNMemory:
        """A kNN memory for this model (``kwargs``: a different topk or max_memory)."""
        c = self.config
        if not c.knn_memory:
            raise PartitaError("this model was not configured with knn_memory=True")
        kwargs = {"topk": c.knn_topk, "max_memory": c.knn_max_memory, **kwargs}
        return KNNMemory(batch_size, c.n_head, c.head_dim, **kwargs)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters; ``non_embedding=True`` leaves out the embedding tables
        (token, learned position, bar, position-in-bar), the usual count in scaling laws."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for emb in (self.wte, self.wpe, self.bar_emb, self.pos_emb):
                if emb is not None:
                    n -= emb.weight.numel()
        return n

    def estimate_flops_per_token(self, context: Optional[int] = None, training: bool = True) -> float:
        """FLOPs per token (PaLM appendix B): ``6N + 12 L d T`` for a training step, a third of
        that for a forward pass. ``N`` counts the non-embedding parameters plus the output head
        (``vocab_size x d_model``, tied but still a matmul); ``T`` is ``context`` (default: the
        config's). For MFU: ``flops_per_token * tokens_per_second / peak_flops``."""
        c = self.config
        t = context or c.context
        n = self.num_parameters(non_embedding=True) + c.vocab_size * c.d_model
        flops = 6 * n + 12 * c.n_layer * c.d_model * t
        return float(flops if training else flops / 3)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        ids: Tensor,
        targets: Optional[Tensor] = None,
        *,
        bars: Optional[Tensor] = None,
        positions: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        xl: Optional[XLMemory] = None,
        knn: Optional[KNNMemory] = None,
        window: Optional[int] = None,
        last_only: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``(logits [B, T, vocab_size], loss)``; loss is None without ``targets [B, T]``.

        ``cache``: the new tokens follow the cached ones (their keys/values are appended).
        ``xl``/``knn``: memories, read, and appended to when there is no cache (module doc).
        ``window``: sliding-window attention over the last ``window`` positions (what decoding
        with ``crop_cache(cache, window - 1)`` before every token computes).
        ``last_only``: logits of the last position only (``[B, 1, V]``), for sampling.
        """
        c = self.config
        if ids.dim() != 2:
            raise ValueError(f"ids must be [batch, time], got shape {tuple(ids.shape)}")
        B, T = ids.shape
        if xl is not None and not c.xl_memory:
            raise PartitaError("an XL memory was passed to a model configured with xl_memory=False")
        if knn is not None and not c.knn_memory:
            raise PartitaError("a kNN memory was passed to a model configured with knn_memory=False")
        if cache is not None and xl is not None and len(cache) == 0:
            cache.offset = xl.next_position  # the window starts where the memory ends
        start = cache.next_position if cache is not None else (xl.next_position if xl is not None else 0)

        x = self.wte(ids)
        if self.wpe is not None:
            first = len(cache) if cache is not None else 0  # place in the current window
            if first + T > c.context:
                raise PartitaError(
                    f"{first + T} positions exceed the context ({c.context}) of a model with learned "
                    "positions: crop the cache and recompute the window"
                )
            x = x + self.wpe(torch.arange(first, first + T, device=ids.device))
        if self.bar_emb is not None:
            if bars is None or positions is None:
                raise PartitaError("this model has bar embeddings: pass bars= and positions= (token_timing)")
            x = x + self.bar_emb(bars.long() % c.max_bars)
            x = x + self.pos_emb(positions.long().clamp(0, c.positions_per_bar - 1))
        if self.training:
            x = self.drop(x)

        rope = None
        if self.rotary is not None:
            rope = self.rotary.span(start, T, device=ids.device, dtype=x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, start=start, layer=i, cache=cache, xl=xl,
                      knn=knn if i == self.knn_layer else None, window=window)
        if cache is None:  # this input was a segment: it goes into the memories now
            if xl is not None:
                xl.commit()
            if knn is not None:
                knn.commit()

        x = self.ln_f(x)
        if last_only and targets is None:
            x = x[:, -1:]
        logits = F.linear(x, self.wte.weight[: c.vocab_size])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), targets.reshape(-1).long(),
                                   ignore_index=c.ignore_index)
        return logits, loss

    def crop_cache(self, cache: KVCache, keep: int, *, xl: Optional[XLMemory] = None,
                   knn: Optional[KNNMemory] = None) -> int:
        """Slide the window: keep the last ``keep`` cached positions; returns how many were dropped.

        Dropped keys/values go into ``xl`` (every layer) and ``knn`` (the kNN layer, un-rotated)
        so that the memories keep holding exactly the positions before the window.
        """
        old = cache.offset
        dropped = cache.crop(keep)
        n = cache.offset - old
        if n == 0:
            return 0
        if xl is not None:
            if len(xl) and xl.next_position != old:
                raise PartitaError(f"the XL memory ends at position {xl.next_position} but the cache starts at {old}")
            for i, (k, v) in enumerate(dropped):
                xl.stage(i, k, v)
            xl.commit()
            xl.next_position = cache.offset
        if knn is not None:
            self.add_to_knn(knn, *dropped[self.knn_layer], old)
        return n

    def slide_window(self, cache: KVCache, *, knn: Optional[KNNMemory] = None) -> None:
        """Before each one-token step of a memory model (RoPE) past its context: the decoding
        form of ``crop_cache(cache, context - 1, xl=..., knn=...)`` with the XL memory kept *in
        the cache*.

        During decoding the XL memory holds exactly the ``xl_length`` positions before the local
        window, and every query sees all of them and all of the window: together they are the
        last ``context - 1 + xl_length`` positions. So the cache keeps that many, the position
        that just left the local window goes into ``knn`` (un-rotated), and one SDPA call reads
        memory and window with no concatenation and no mask. Same logits as the ``crop_cache``
        form (``tests/test_gpt.py``); do not pass an ``xl`` to ``forward`` alongside.
        """
        c = self.config
        if self.rotary is None:
            raise PartitaError("slide_window needs rotary positions; a model with learned positions recomputes its window")
        C = c.context
        keep = C - 1 + ((c.xl_length or C) if c.xl_memory else 0)
        n = len(cache)
        if knn is not None and n >= C:  # position next - C is no longer in the local window
            i = n - C
            k, v = cache.k[self.knn_layer][:, :, i : i + 1], cache.v[self.knn_layer][:, :, i : i + 1]
            self.add_to_knn(knn, k, v, cache.offset + i)
        if n > keep:
            cache.crop(keep)

    def add_to_knn(self, knn: KNNMemory, k: Tensor, v: Tensor, first: int) -> None:
        """Add cached keys/values of positions ``first..`` to ``knn``, un-rotated."""
        if self.rotary is not None:
            cos, sin = self.rotary.span(first, k.shape[2], device=k.device, dtype=k.dtype)
            k = apply_rotary(k, cos, -sin)
        knn.add(k, v)
