"""One decoding step, built per sampler run: the model computes, the sampler decodes.

A decoding step on a CPU multiplies one row per sample by every weight matrix: it is bound by
reading the weights, and the ~60 module calls, shape checks and lookups of ``GPT.forward`` took
about as long as its products (``benchmarks/gpt.py``). ``DecodeStep`` holds, for one generation
call, the weights in the layout that is faster for few rows (``partita.nn.linear``: transposed,
split into column blocks by matrix size, never by thread count, so the tokens do not depend on
the thread count) and computes a step directly from them, the blocks' products in the same
order as ``GPT.forward`` (``tests/test_sampling.py`` compares the logits). It lives on the
sampler's side: nothing is set on the shared model, so two generations can run on one model at
once.

``ThreadChooser`` picks the intra-op thread count of steps by timing them.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from partita.nn.attention import KNNMemory, KVCache
from partita.nn.linear import FEW_ROWS, decode_weight, rows_linear

__all__ = ["DecodeStep", "ThreadChooser"]


_STEPS: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


class DecodeStep:
    """The fast one-token step of a RoPE ``GPT`` without biases on a CPU, for at most ``FEW_ROWS``
    rows after a filled cache. ``DecodeStep.of(model)`` is None where it does not apply (another
    device, learned positions, biases); ``applies(...)`` says whether one call can take it."""

    @classmethod
    def of(cls, model: Any) -> Optional["DecodeStep"]:
        from partita.models.gpt import GPT

        c = model.config
        if type(model).forward is not GPT.forward:  # a subclass computes something else
            return None
        if model.wte.weight.device.type != "cpu" or model.rotary is None or c.bias:
            return None
        # The decoding layout of the weights is made once per model and kept while they do not
        # change (their version counters): a run of many short samples (accompaniment windows,
        # infilling candidates) would otherwise copy every weight again for each. It holds only
        # weights, no state of a run, so runs in several threads share it.
        version = tuple(p._version for p in model.parameters())
        made = _STEPS.get(model)
        if made is None or made[0] != version:
            made = (version, cls(model))
            _STEPS[model] = made
        return made[1]

    def __init__(self, model: Any):
        self.model = model
        c = self.config = model.config
        self.head_t = decode_weight(model.wte.weight[: c.vocab_size])
        self.layers = [self._layer(block) for block in model.blocks]

    def _layer(self, block: Any) -> tuple:
        attn, mlp = block.attn, block.mlp
        if self.config.block == "parallel":
            norm, norm2 = (block.ln.weight, block.ln.eps), (None, None)
        else:
            norm, norm2 = (block.ln_1.weight, block.ln_1.eps), (block.ln_2.weight, block.ln_2.eps)
        return (*norm, decode_weight(attn.qkv.weight), decode_weight(attn.proj.weight), *norm2,
                decode_weight(mlp.fc.weight), mlp.fc.out_features, decode_weight(mlp.proj.weight),
                attn if attn.knn_gate is not None else None)

    def applies(self, ids: Tensor, cache: Optional[KVCache], xl: Any = None, window: Optional[int] = None) -> bool:
        return (ids.shape[1] == 1 and ids.shape[0] <= FEW_ROWS and cache is not None and len(cache) > 0
                and xl is None and window is None)

    def __call__(self, ids: Tensor, cache: KVCache, knn: Optional[KNNMemory] = None, bars: Optional[Tensor] = None,
                 positions: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, 1, V]`` of one new token per row (``GPT.forward`` with ``cache``)."""
        model, c = self.model, self.config
        B, C, H, Dh = ids.shape[0], c.d_model, c.n_head, c.head_dim
        x = F.embedding(ids, model.wte.weight)
        if model.bar_emb is not None:
            x = x + model.bar_emb.weight[bars.long() % c.max_bars] + model.pos_emb.weight[
                positions.long().clamp(0, c.positions_per_bar - 1)]
        cos, sin = model.rotary.span(cache.next_position, 1, device=ids.device, dtype=x.dtype)
        half = Dh // 2
        sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)  # apply_rotary's products, one roll per layer
        for i, (n1, eps1, qkv_t, proj_t, n2, eps2, fc_t, d_ff, mproj_t, knn_attn) in enumerate(self.layers):
            h = F.layer_norm(x, (C,), n1, None, eps1)
            qkv = rows_linear(h, qkv_t, 3 * C).view(B, 1, 3, H, Dh).permute(2, 0, 3, 1, 4)
            qk = qkv[:2]
            q, k = torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin)
            keys, values = cache.append(i, k, qkv[2])
            y = F.scaled_dot_product_attention(q, keys, values)
            if knn_attn is not None and knn is not None:
                y = knn_attn.mix_knn(qkv[0], y, knn, 0.0)
            y = rows_linear(y.transpose(1, 2).reshape(B, 1, C), proj_t, C)
            if n2 is None:  # parallel block
                x = x + y + rows_linear(F.gelu(rows_linear(h, fc_t, d_ff), approximate=c.gelu), mproj_t, C)
            else:
                x = x + y
                h = F.layer_norm(x, (C,), n2, None, eps2)
                x = x + rows_linear(F.gelu(rows_linear(h, fc_t, d_ff), approximate=c.gelu), mproj_t, C)
        x = F.layer_norm(x, (C,), model.ln_f.weight, None, model.ln_f.eps)
        return rows_linear(x, self.head_t, c.vocab_size)


class ThreadChooser:
    """Picks the intra-op thread count of decoding steps (or prompt windows): 1 or ``n``, by
    timing them. It starts on one thread; after ``WARM`` steps it tries ``n`` threads for up to
    ``PROBE`` steps, giving up at the first one slower than ``1.25x`` the current count's median;
    the winner stays until the next try, ``EVERY`` steps later, twice as late after each failed
    try (a failed try on a busy machine is expensive: a one-token step split over busy cores
    waits for the slowest, PyTorch's OpenMP threads spin at a barrier, and 2 threads ran 10-50x
    slower than 1 on a loaded 2-core machine). Tokens do not depend on the count
    (``partita.nn.linear``: a fixed layout)."""

    WARM = 4
    PROBE = 4
    EVERY = 256

    def __init__(self, n: int, fixed: Optional[int], probe: int = PROBE, warm: int = WARM):
        self.PROBE, self.WARM = probe, warm
        self.auto = fixed is None and n > 1
        self.n = n
        self.best = 1 if self.auto else (fixed or n)
        self.next_try, self.every = warm, self.EVERY
        self.step = 0
        self.recent: list[float] = []  # step times with ``best``
        self.trial: list[float] = []  # step times of the current try (None: not trying)
        self.trying = False
        self._t = 0.0

    @staticmethod
    def _median(x: list[float]) -> float:
        return sorted(x)[len(x) // 2]

    def begin(self) -> None:
        if self.auto and not self.trying and self.step >= self.next_try and self.recent:
            self.trying, self.trial = True, []
        k = (self.n if self.best == 1 else 1) if self.trying else self.best
        if torch.get_num_threads() != k:
            torch.set_num_threads(k)
        self._t = time.perf_counter()

    def end(self) -> None:
        dt = time.perf_counter() - self._t
        self.step += 1
        if not self.auto:
            return
        if not self.trying:
            self.recent = (self.recent + [dt])[-5:]
            return
        self.trial.append(dt)
        base = self._median(self.recent)
        if dt > 1.25 * base:  # the other count loses: keep ours, try again later
            self.trying = False
            self.every *= 2
            self.next_try = self.step + self.every
        elif len(self.trial) >= self.PROBE:
            self.trying = False
            if self._median(self.trial) < base:
                self.best = self.n if self.best == 1 else 1
                self.recent = self.trial[-5:]
            self.every = self.EVERY
            self.next_try = self.step + self.every
