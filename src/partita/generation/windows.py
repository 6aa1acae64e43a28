"""How a sampler reads a prompt and slides its window: one policy class per kind of model.

Every training window starts with the label token (``[label, t_o, t_o+1, ...]``), so the model
has only ever seen windows that begin with one. What happens once a piece outgrows the context
``C`` depends on the model (``window_policy`` picks the class):

* ``SinkWindow`` (RoPE, no memory; the default): the window is ``[label, last C-1 tokens]``
  exactly as in training (a model that always saw a label first may lean on it as an attention
  sink, and it keeps the composer conditioning alive in long pieces). The label's keys/values
  are re-placed just before the window at every slide: a label is the first token of its
  window, so its states depend only on the label and its bar input; they are computed once, for
  every bar value in one batched forward, and rotated to their new position. The oldest token
  leaves the cache, nothing else is recomputed.
* ``SlidingWindow`` (RoPE, ``keep_label=False``): plain sliding window, ``crop_cache(cache,
  C - 1)`` before each token: the label leaves with the first tokens. This is exactly
  ``model(ids, window=C)`` over the whole sequence.
* ``MemorySegments`` (XL and/or kNN memory): decoding follows training's contiguous segments.
  The song is cut into segments ``[label, C-1 tokens]``; a token sees its segment so far and
  the memories, which hold the segments before it (XL: their last ``xl_length`` positions; kNN:
  every key of the kNN layer, un-rotated). When a segment is full it becomes memory and the
  next one starts with the label again. With RoPE the XL memory stays in the KV cache as its
  oldest part (one attention call over memory and segment, no copies); learned positions keep
  separate ``XLMemory``/``KNNMemory`` objects (``GPT.crop_cache``).
* ``LearnedWindow`` (learned absolute positions): positions are not translation invariant, so
  the cache cannot slide. When the window is full the model recomputes ``[label, last K-1
  tokens]`` from scratch (``K = C - C//4``: one forward of ``K`` tokens every ``C//4`` tokens)
  and continues incrementally; with memories, the tokens leaving the window go into them first.

A prompt is read as far back as the model can use (``prompt_start``): the last ``C - 1`` tokens
for plain models, ``n_layer * (C - 1)`` for a sliding window (what it reaches through the
layers), and for memory models what the memories hold (``knn_max_memory + C - 1`` with a kNN
memory, else ``n_layer * xl_length + C - 1``), at most ``SamplingConfig.prompt_read``; one
forward pass per window. The logits after a prompt equal those of feeding it token by token.

A policy works on the sampler's batch (``partita.generation.sampling``): its ``seq``,
``cache``, memories and ``forward``/``feed``/``feed_window`` calls.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from partita.nn.attention import apply_rotary

__all__ = ["LearnedWindow", "MemorySegments", "SinkWindow", "SlidingWindow", "Window", "window_policy"]


class Window:
    """A window policy: ``reset()`` for a new batch, ``read_prompt()`` (logits after the
    prompt), ``step(length)`` (logits after the newest token ``seq[:, length-1]``)."""

    def __init__(self, batch: Any):
        self.batch = batch
        mc = batch.model.config
        self.C = int(mc.context)

    def reset(self) -> None:
        self.ws = 0  # first song index of the window

    def prompt_start(self, L: int) -> int:
        """First index of ``seq`` (1 = the prompt's first token) the prompt is read from."""
        return max(1, L - (self.C - 1))

    def read_prompt(self):
        b = self.batch
        first = self.prompt_start(b.L)
        b.cache.offset = first - 1  # the label's position: what is left out is skipped, not shifted
        self.ws = first
        return b.feed_window(first, b.L)

    def step(self, length: int):
        return self.batch.feed(length - 1, length)


class SinkWindow(Window):
    def __init__(self, batch: Any):
        super().__init__(batch)
        self._label_kv: Optional[list] = None

    def _label_states(self) -> list:
        """Per layer ``(k, v)`` of the label token at position 0, ``[M, H, 1, Dh]``, one row per bar
        input value (M = max_bars with bar embeddings, else 1). Position 0 leaves keys unrotated."""
        if self._label_kv is None:
            b = self.batch
            mc = b.model.config
            M = int(mc.max_bars) if mc.bar_embeddings else 1
            ids = torch.full((M, 1), b.label_id, dtype=torch.long, device=b.device)
            tmp = b.model.new_cache()
            kw = {}
            if mc.bar_embeddings:
                kw = {"bars": torch.arange(M, device=b.device)[:, None],
                      "positions": torch.zeros(M, 1, dtype=torch.long, device=b.device)}
            b.model(ids, cache=tmp, last_only=True, **kw)
            self._label_kv = [(tmp.k[i], tmp.v[i]) for i in range(tmp.n_layer)]
        return self._label_kv

    def _slide(self) -> None:
        """Make room for one token: drop the label and the oldest tokens, put the label back
        right before the window (rotated to its new position, states for its new bar input)."""
        b = self.batch
        cache, mc = b.cache, b.model.config
        drop = len(cache) - (self.C - 1)  # tokens to drop (1 once the window is full)
        self.ws += drop
        pos = self.ws - 1
        rows = torch.zeros(b.seq.shape[0], dtype=torch.long, device=b.device)
        if mc.bar_embeddings:
            rows = b.bars_seq[:, self.ws] % int(mc.max_bars)
        cache.crop(len(cache) - 1 - drop)  # the label and the oldest tokens leave
        cos = sin = None
        for i, (lk, lv) in enumerate(self._label_states()):
            k, v = lk[rows], lv[rows]
            if cos is None:
                cos, sin = b.model.rotary.span(pos, 1, device=b.device, dtype=k.dtype)
            cache.prepend(i, apply_rotary(k, cos, sin), v)
        cache.offset = pos

    def step(self, length: int):
        if len(self.batch.cache) >= self.C:
            self._slide()
        return super().step(length)


class SlidingWindow(Window):
    def prompt_start(self, L: int) -> int:  # a token sees n_layer * (C - 1) tokens back
        return max(1, L - 1 - int(self.batch.model.config.n_layer) * (self.C - 1))

    def read_prompt(self):
        """Windowed attention over the prompt, C tokens at a time (= ``forward(window=C)``)."""
        b, C = self.batch, self.C
        first = self.prompt_start(b.L)
        b.cache.offset = first - 1
        self.ws = first
        step = b.chunk or C
        logits = b.feed_window(first, min(first + step - 1, b.L))
        for a in range(first + step - 1, b.L, step):
            b.model.crop_cache(b.cache, C - 1)
            logits = b.feed(a, min(a + step, b.L), window=C)
        return logits

    def step(self, length: int):
        b = self.batch
        if len(b.cache) >= self.C:
            b.model.crop_cache(b.cache, self.C - 1)
        return super().step(length)


class LearnedWindow(Window):
    def _keep(self) -> int:
        return max(2, self.C - max(1, self.C // 4))

    def step(self, length: int):
        b = self.batch
        if len(b.cache) < self.C:
            return super().step(length)
        # window full: recompute [label, last K-1 tokens] (the newest included) from scratch
        first = length - (self._keep() - 1)
        b.cache.reset(b.cache.offset)
        self.ws = first
        return b.feed_window(first, length)


class MemorySegments(Window):
    def __init__(self, batch: Any):
        super().__init__(batch)
        mc = batch.model.config
        self.xl_len = int(mc.xl_length or mc.context) if getattr(mc, "xl_memory", False) else 0

    def reset(self) -> None:
        super().reset()
        self.seg = 0  # inputs in the current segment, label included

    def prompt_start(self, L: int) -> int:
        mc, C = self.batch.model.config, self.C
        held = C - 1 + self.xl_len
        if getattr(mc, "knn_memory", False):
            keys = self.batch.config.memory_keys or int(mc.knn_max_memory)
            held = max(held, int(keys) + C - 1)
        elif self.xl_len:
            held = int(mc.n_layer) * self.xl_len + C - 1
        read = self.batch.config.prompt_read
        if read is not None:
            held = min(held, max(read, C - 1))
        return max(1, L - held)

    def read_prompt(self):
        b = self.batch
        first = self.prompt_start(b.L)
        b.cache.offset = first - 1
        self.seg = 0
        return self.feed_segments(first, b.L)

    def step(self, length: int):
        return self.feed_segments(length - 1, length)

    def _close_segment(self) -> None:
        """The current segment (``C`` inputs, label first) is complete: it becomes memory, as a
        training segment does. RoPE: the cache keeps the last ``xl_length`` positions (the XL
        memory lives in the cache) and the segment's keys of the kNN layer go into the kNN
        memory, un-rotated. Learned positions: ``crop_cache`` moves the segment into separate
        XL/kNN memories."""
        b = self.batch
        model, cache = b.model, b.cache
        if b.xl is not None:  # learned positions
            model.crop_cache(cache, 0, xl=b.xl, knn=b.knn)
        else:
            n = len(cache)
            if b.knn is not None:
                i, layer = n - self.seg, model.knn_layer
                model.add_to_knn(b.knn, cache.k[layer][:, :, i:], cache.v[layer][:, :, i:], cache.offset + i)
            cache.crop(self.xl_len)
        self.seg = 0

    def feed_segments(self, a: int, b: int):
        """Feed song tokens ``seq[:, a:b]`` as training's contiguous segments: ``[label, C-1
        tokens]`` each, a full segment becoming memory before the next one starts. One forward
        pass per ``chunk`` tokens (default: as many as the segment has room for); the logits do
        not depend on the chunking."""
        batch = self.batch
        logits = None
        threads = batch.prefill_threads if b - a > 1 else None
        while a < b:
            if threads is not None:
                threads.begin()
            if self.seg >= self.C:
                self._close_segment()
            room = self.C - self.seg - (1 if self.seg == 0 else 0)
            k = min(b - a, room, batch.chunk or room)
            if self.seg == 0:
                logits = batch.feed_window(a, a + k)
                self.seg = 1 + k
            else:
                logits = batch.feed(a, a + k)
                self.seg += k
            a += k
            if threads is not None:
                threads.end()
        return logits


def window_policy(model_config: Any, keep_label: bool) -> type[Window]:
    """The policy class for a model: memories, learned positions, or RoPE with or without the
    label kept as the window's first token."""
    if getattr(model_config, "xl_memory", False) or getattr(model_config, "knn_memory", False):
        return MemorySegments
    if model_config.positions == "learned":
        return LearnedWindow
    return SinkWindow if keep_label else SlidingWindow
