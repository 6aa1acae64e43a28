"""Causal self-attention with rotary positions, a KV cache, XL memory and kNN memory.

Everything goes through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA): the plain
causal case uses ``is_causal=True`` (flash/memory-efficient kernels where available); cached
decoding, sliding windows and memories pass an explicit boolean mask (True = may attend).

Positions. Every token has an *absolute* position in its song (0, 1, 2, ...). With rotary
embeddings (RoPE, the default) queries and keys are rotated by their absolute position once, when
they are computed, and cached keys keep that rotation. A RoPE score ``q_i . k_j`` depends only on
``i - j``, so nothing ever has to be re-rotated: when the window slides past the model's context
(``KVCache.crop``), new queries simply get positions beyond the context and still see the cached
keys at the right relative distances. Angles are computed in float64 and then cast, so a
position of 10^6 is as exact as a position of 10.

What "equal" means after a crop. Cropping the cache to the last W positions and continuing gives
exactly *sliding-window attention* (every token of every layer sees the last W keys of that
layer), i.e. the same as a full forward pass with ``window=W``. It does NOT give the same as
recomputing the W tokens from scratch: the cached keys of layers above the first were computed
when older tokens were still visible, so they still carry that older context (which is usually
what one wants, and it is free). For a one-layer model both coincide (up to float rounding) because
RoPE is translation invariant. ``tests/test_gpt.py`` checks both statements.

State objects (all plain Python objects, mutated in place, never saved with a model):

* ``KVCache``: per-layer rotated keys and values ``[B, H, T, Dh]`` of the current window and the
  absolute position ``offset`` of its first entry.
* ``XLMemory`` (Transformer-XL, MIDIGen): per-layer *detached* keys/values of the positions just
  before the current segment (at most ``length`` of them), a ``valid`` mask ``[B, M]`` so that one
  batch row can be cleared when its song ends (``reset(mask)``), and ``next_position``, the
  absolute position that follows the memory.
* ``KNNMemory`` (Memorizing Transformers): for one layer, every past key/value of the current song
  of each batch row (detached, un-rotated, at most ``max_memory`` per row, oldest dropped first),
  searched exactly for the top-k keys of each query (one batched torch product and a top-k).

Who writes the memories: a forward pass *without* a cache treats its input as one segment: it
reads the memories (which hold what came before) and then appends the segment's keys/values to
them (``stage`` during the pass, ``commit`` at the end, both called by the model). A forward pass
*with* a cache only reads them; entries enter the memories when they leave the cache
(``GPT.crop_cache``). Either way the memories hold exactly the positions before the local window.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


__all__ = [
    "CausalSelfAttention",
    "KNNMemory",
    "KVCache",
    "Rotary",
    "XLMemory",
    "apply_rotary",
    "causal_mask",
]


# --------------------------------------------------------------------------- rotary positions


class Rotary(nn.Module):
    """cos/sin tables of rotary position embeddings (RoPE, Su et al. 2021) for given positions.

    ``Rotary(head_dim)(positions)`` gives ``(cos, sin)``, each ``[T, head_dim]``, for a 1-D tensor
    of absolute positions; any position works (no table to outgrow). ``span(start, n)`` gives the
    same for positions ``start..start+n-1`` from a table kept per device and dtype (the first
    ``TABLE_POSITIONS`` positions; beyond them it computes), so that decoding one token does not
    recompute its angles in every step. The rotation pairs dimension ``i`` with
    ``i + head_dim/2`` (GPT-NeoX / Llama layout).
    """

    TABLE_POSITIONS = 8192

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        self._tables: dict[tuple[str, torch.dtype], tuple[Tensor, Tensor]] = {}

    def forward(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        # float64 angles: position * frequency loses precision in float32 for long songs.
        exact = torch.float32 if positions.device.type == "mps" else torch.float64
        half = self.head_dim // 2
        inv_freq = self.base ** (-torch.arange(half, device=positions.device, dtype=exact) / half)
        angles = positions.to(exact)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def span(self, start: int, n: int, *, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``self(torch.arange(start, start + n))``, the same values, mostly from the table."""
        device = torch.device(device or "cpu")
        end = int(start) + int(n)
        if start < 0 or end > self.TABLE_POSITIONS:
            return self(torch.arange(start, end, device=device), dtype)
        key = (str(device), dtype)
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < end:
            size = min(self.TABLE_POSITIONS, max(end, 1024, 2 * (0 if table is None else table[0].shape[0])))
            with torch.inference_mode(False):  # a table made while sampling must serve training too
                table = self._tables[key] = self(torch.arange(size, device=device), dtype)
        return table[0][start:end], table[1][start:end]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [..., T, Dh]`` by the angles of ``cos``/``sin [T, Dh]``.

    ``apply_rotary(apply_rotary(x, cos, sin), cos, -sin)`` undoes the rotation.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.addcmul(x * cos, rotated, sin)


def causal_mask(q_start: int, n_q: int, k_start: int, n_k: int, window: Optional[int] = None,
                device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[n_q, n_k]`` mask (True = may attend) for queries at absolute positions
    ``q_start..`` and keys at ``k_start..``: a key is visible when it is not in the future and,
    with ``window``, when it is one of the last ``window`` positions (the query's own included).
    """
    qp = torch.arange(q_start, q_start + n_q, device=device)[:, None]
    kp = torch.arange(k_start, k_start + n_k, device=device)[None, :]
    mask = kp <= qp
    if window is not None:
        mask &= kp > qp - window
    return mask


# --------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values of the current window, per layer, for incremental decoding.

    ``k[layer]``/``v[layer]`` are ``[B, H, T, Dh]`` (keys already rotated by their absolute
    positions) or None before the first pass. ``offset`` is the absolute position of entry 0, so
    the next token goes to ``next_position = offset + len(cache)``. All batch rows share the
    positions (generation advances them together).

    ``crop(keep)`` drops all but the last ``keep`` positions (a sliding window; see the module doc
    for what that computes) and returns what it dropped, so that the caller can move it into an
    ``XLMemory`` or ``KNNMemory`` (``GPT.crop_cache`` does). ``prepend`` puts one position back
    in front (the sampler's label token).

    Storage: ``k[i]``/``v[i]`` are views of per-layer buffers with spare room on both sides, so
    appending a token, cropping the oldest and prepending one write a single position instead of
    copying the window (``torch.cat`` per token and layer was a third of the decode time); a
    buffer is re-laid only when the window reaches its end (amortised O(1) per token). Code may
    assign ``k[i]``/``v[i]`` itself: the next write sees they are no longer views of the buffer
    and starts a new one from them. The ``(k, v)`` that ``crop`` returns are views too: use them
    before the next ``append``/``prepend``.
    """

    def __init__(self, n_layer: int, offset: int = 0):
        self.n_layer = n_layer
        self.offset = int(offset)
        self.k: list[Optional[Tensor]] = [None] * n_layer
        self.v: list[Optional[Tensor]] = [None] * n_layer
        self._buffers: list[Optional[tuple[Tensor, Tensor, int]]] = [None] * n_layer  # (k, v, start)
        self._views: list[Optional[tuple[Tensor, Tensor]]] = [None] * n_layer  # the views it made last

    def __len__(self) -> int:
        return 0 if self.k[0] is None else int(self.k[0].shape[2])

    def select(self, rows: list[int]) -> None:
        """Keep only batch rows ``rows``, in that order (a sampler dropping finished rows)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.k[0].device if self.k[0] is not None else "cpu")
        for i in range(self.n_layer):
            if self.k[i] is not None:
                self.k[i], self.v[i] = self.k[i][idx], self.v[i][idx]  # no longer views: the next write re-lays

    @property
    def next_position(self) -> int:
        """Absolute position of the next token."""
        return self.offset + len(self)

    def _own(self, layer: int, like: Tensor) -> Optional[tuple[Tensor, Tensor, int]]:
        """The layer's buffer if ``k[layer]``/``v[layer]`` are still its views at its ``start``."""
        buf, old_k, old_v = self._buffers[layer], self.k[layer], self.v[layer]
        if buf is None or old_k is None:
            return None
        views = self._views[layer]
        if views is not None and views[0] is old_k and views[1] is old_v and old_k.shape[:2] == like.shape[:2] \
                and old_k.dtype == like.dtype:
            return buf  # still the views this cache made last: the checks below, at a decoding step's price
        kb, vb, start = buf
        if old_k.shape[2] == 0 or start >= kb.shape[2]:
            return None
        if (old_k.shape[:2] != like.shape[:2] or old_k.dtype != like.dtype or old_k.stride() != kb.stride()
                or old_v.stride() != vb.stride()
                or old_k.data_ptr() != kb[:, :, start].data_ptr() or old_v.data_ptr() != vb[:, :, start].data_ptr()):
            return None
        return buf

    def _relay(self, layer: int, like: Tensor, front: int, need: int) -> tuple[Tensor, Tensor, int]:
        """A new buffer holding the current window at ``front``, with room for ``need`` after it."""
        old_k, old_v = self.k[layer], self.v[layer]
        n = 0 if old_k is None else old_k.shape[2]
        capacity = front + max(2 * (n + need), 64)
        kb = like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])
        vb = like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])
        if n:
            kb[:, :, front : front + n] = old_k
            vb[:, :, front : front + n] = old_v
        self._buffers[layer] = (kb, vb, front)
        return kb, vb, front

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new keys/values of ``layer``; returns all of that layer's keys and values."""
        n = 0 if self.k[layer] is None else self.k[layer].shape[2]
        t = k.shape[2]
        buf = self._own(layer, k)
        if buf is None or buf[2] + n + t > buf[0].shape[2]:
            buf = self._relay(layer, k, 1, t)  # one spare position in front, for prepend
        kb, vb, start = buf
        kb[:, :, start + n : start + n + t] = k
        vb[:, :, start + n : start + n + t] = v
        return self._set_views(layer, kb[:, :, start : start + n + t], vb[:, :, start : start + n + t])

    def _set_views(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k[layer], self.v[layer] = k, v
        self._views[layer] = (k, v)
        return k, v

    def prepend(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Put keys/values ``[B, H, 1, Dh]`` in front of ``layer``'s window. Call it for every
        layer, then lower ``offset`` by one."""
        buf = self._own(layer, k)
        n = 0 if self.k[layer] is None else self.k[layer].shape[2]
        if buf is None or buf[2] == 0:
            buf = self._relay(layer, k, 1, 1)
        kb, vb, start = buf
        start -= 1
        kb[:, :, start : start + 1] = k
        vb[:, :, start : start + 1] = v
        self._buffers[layer] = (kb, vb, start)
        self._set_views(layer, kb[:, :, start : start + n + 1], vb[:, :, start : start + n + 1])

    def crop(self, keep: int) -> list[tuple[Tensor, Tensor]]:
        """Keep the last ``keep`` positions; returns the dropped ``(k, v)`` of every layer.

        The dropped entries cover absolute positions ``[old offset, new offset)``.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        n = len(self)
        drop = max(n - keep, 0)
        dropped = []
        for i in range(self.n_layer):
            k, v = self.k[i], self.v[i]
            if k is None:
                continue
            dropped.append((k[:, :, :drop], v[:, :, :drop]))
            buf = self._own(i, k)
            if buf is not None:
                self._buffers[i] = (buf[0], buf[1], buf[2] + drop)
                self._set_views(i, k[:, :, drop:], v[:, :, drop:])
            else:
                self.k[i], self.v[i] = k[:, :, drop:], v[:, :, drop:]
        self.offset += drop
        return dropped

    def reset(self, offset: int = 0) -> None:
        """Empty the cache; the next token will be at ``offset``."""
        self.k = [None] * self.n_layer
        self.v = [None] * self.n_layer
        self._buffers = [None] * self.n_layer
        self._views = [None] * self.n_layer
        self.offset = int(offset)

    def __repr__(self) -> str:
        return f"KVCache({self.n_layer} layers, positions {self.offset}..{self.next_position})"


# --------------------------------------------------------------------------- XL memory


class XLMemory:
    """Transformer-XL segment memory: detached keys/values of the positions before the window.

    Per layer ``k[layer]``/``v[layer]`` are ``[B, H, M, Dh]`` (rotated keys, ``M <= length``),
    ``valid`` is a bool ``[B, M]`` (False where a row was reset), and ``next_position`` is the
    absolute position right after the memory (where the next segment starts). Memory entries are
    all in the past of every query, so no causal mask applies to them, only ``valid``.

    Training loop::

        xl = model.new_xl_memory(batch_size)
        for x, y, song_starts in segments:   # song_starts: bool [B], a new song begins in row b
            xl.reset(song_starts)            # row b forgets the previous song
            logits, loss = model(x, y, xl=xl)    # reads the memory, then appends this segment

    Gradients never flow into the memory (it is detached, as in Transformer-XL).
    """

    def __init__(self, n_layer: int, batch_size: int, length: int):
        if length < 1:
            raise ValueError(f"XL memory length must be >= 1, got {length}")
        self.n_layer = n_layer
        self.batch_size = batch_size
        self.length = int(length)
        self.k: list[Optional[Tensor]] = [None] * n_layer
        self.v: list[Optional[Tensor]] = [None] * n_layer
        self.valid: Optional[Tensor] = None
        self.next_position = 0
        self._staged: list[Optional[tuple[Tensor, Tensor]]] = [None] * n_layer

    def select(self, rows: list[int]) -> None:
        """Keep only batch rows ``rows``, in that order (a sampler dropping finished rows)."""
        for i in range(self.n_layer):
            if self.k[i] is not None:
                idx = torch.tensor(rows, dtype=torch.long, device=self.k[i].device)
                self.k[i], self.v[i] = self.k[i][idx], self.v[i][idx]
        if self.valid is not None:
            self.valid = self.valid[torch.tensor(rows, dtype=torch.long, device=self.valid.device)]
        self.batch_size = len(rows)

    def __len__(self) -> int:
        return 0 if self.valid is None else int(self.valid.shape[1])

    def get(self, layer: int) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """``(k, v, valid)`` of ``layer``, or None while the memory is empty.

        Entries of reset rows stay until pushed out, masked by ``valid`` (they get exactly zero
        attention weight, so a reset row computes what a fresh run computes).
        """
        if self.k[layer] is None:
            return None
        return self.k[layer], self.v[layer], self.valid

    def stage(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Hold ``layer``'s new keys/values ``[B, H, T, Dh]`` until ``commit`` (called by the model)."""
        if k.shape[0] != self.batch_size:
            raise ValueError(f"XL memory was made for batch size {self.batch_size}, got {k.shape[0]}")
        self._staged[layer] = (k.detach(), v.detach())

    def commit(self) -> None:
        """Append the staged keys/values of every layer, keep the last ``length``."""
        if any(s is None for s in self._staged):
            raise RuntimeError("XLMemory.commit: not every layer staged its keys/values")
        n_new = self._staged[0][0].shape[2]
        for i, (k, v) in enumerate(self._staged):
            if self.k[i] is not None:
                k = torch.cat([self.k[i], k], dim=2)
                v = torch.cat([self.v[i], v], dim=2)
            self.k[i], self.v[i] = k[:, :, -self.length:], v[:, :, -self.length:]
        device = self._staged[0][0].device
        new_valid = torch.ones(self.batch_size, n_new, dtype=torch.bool, device=device)
        valid = new_valid if self.valid is None else torch.cat([self.valid, new_valid], dim=1)
        self.valid = valid[:, -self.length:]
        self.next_position += n_new
        self._staged = [None] * self.n_layer

    def reset(self, mask: Optional[Tensor] = None) -> None:
        """Forget everything in the rows where ``mask [B]`` is True (all rows when None)."""
        if mask is None:
            self.k = [None] * self.n_layer
            self.v = [None] * self.n_layer
            self.valid = None
            self._staged = [None] * self.n_layer
            return
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (self.batch_size,):
            raise ValueError(f"reset mask must have shape ({self.batch_size},), got {tuple(mask.shape)}")
        if self.valid is None:
            return
        mask = mask.to(self.valid.device)
        self.valid = self.valid & ~mask[:, None]
        for i in range(self.n_layer):  # zero them too: nothing of the old song stays around
            self.k[i] = self.k[i].masked_fill(mask[:, None, None, None], 0)
            self.v[i] = self.v[i].masked_fill(mask[:, None, None, None], 0)

    def __repr__(self) -> str:
        return f"XLMemory({self.n_layer} layers, batch {self.batch_size}, {len(self)}/{self.length} positions)"


# --------------------------------------------------------------------------- kNN memory


#: Scores a kNN search holds at once per head (queries x keys): a prompt window's queries are
#: searched in blocks of ``SEARCH_SCORES // keys`` rows.
SEARCH_SCORES = 1 << 20


class KNNMemory:
    """Memorizing-Transformers memory of one layer: all past keys/values of each row's song.

    For each batch row ``b``, ``keys[b]``/``values[b]`` are ``[H, N_b, Dh]`` (or None when empty):
    detached float32, *un-rotated* keys (retrieval is by content, the distance in the song does not enter
    it) and their values, oldest first; at most ``max_memory`` per row (the oldest are dropped).

    ``search(q)`` finds, for every query ``q [B, H, T, Dh]`` of head h, the ``topk`` stored keys
    of the same row and head with the largest inner product ``q . k``: an exact search, one
    batched product over the heads and a top-k, in blocks of queries (``SEARCH_SCORES``). Against
    a FAISS ``IndexFlatIP`` per head on a 2-core CPU: 1.5-2.4x faster for one query with two
    threads (FAISS is a little faster on one), 1.3-2.1x for a 513-query prompt window from 5,000
    keys on (``benchmarks/RESULTS.md``); and it stays on the model's device. ``attend(q, scale)`` is the
    attention over what ``search`` finds, for inference: the search's own scores are the
    attention logits, so only the values are gathered.
    """

    def __init__(self, batch_size: int, n_head: int, head_dim: int, *, topk: int = 32, max_memory: int = 16384):
        if topk < 1 or max_memory < 1:
            raise ValueError("topk and max_memory must be >= 1")
        self.batch_size, self.n_head, self.head_dim = batch_size, n_head, head_dim
        self.topk, self.max_memory = topk, max_memory
        self.keys: list[Optional[Tensor]] = [None] * batch_size
        self.values: list[Optional[Tensor]] = [None] * batch_size
        self._buffers: list[Optional[tuple[Tensor, Tensor, int]]] = [None] * batch_size  # (keys, values, end)
        self._staged: Optional[tuple[Tensor, Tensor]] = None

    def sizes(self) -> list[int]:
        """How many keys each row holds."""
        return [0 if k is None else int(k.shape[1]) for k in self.keys]

    def add(self, k: Tensor, v: Tensor) -> None:
        """Append keys/values ``[B, H, T, Dh]`` (un-rotated) to every row, dropping the oldest."""
        if k.shape[0] != self.batch_size or k.shape[1] != self.n_head:
            raise ValueError(f"kNN memory expects [{self.batch_size}, {self.n_head}, T, Dh], got {list(k.shape)}")
        k, v = k.detach().float(), v.detach().float()  # searched in float32 (a bf16 prompt window's
        # keys converted once here, not the whole memory at every later search)
        t = k.shape[2]
        for b in range(self.batch_size):
            # Rows grow into spare room of a buffer (re-laid when full: amortised O(1) per key,
            # where concatenating copied the whole memory for every token).
            n = 0 if self.keys[b] is None else self.keys[b].shape[1]
            buf = self._buffers[b]
            if (n == 0 or buf is None or buf[2] + t > buf[0].shape[1] or buf[0].dtype != k.dtype
                    or self.keys[b].data_ptr() != buf[0][:, buf[2] - n].data_ptr()):
                keep = min(n, self.max_memory)
                kb = k.new_empty(self.n_head, max(2 * (keep + t), 64), self.head_dim)
                vb = v.new_empty(kb.shape)
                if keep:
                    kb[:, :keep] = self.keys[b][:, n - keep :]
                    vb[:, :keep] = self.values[b][:, n - keep :]
                buf = (kb, vb, keep)
                self.keys[b], self.values[b] = kb[:, :keep], vb[:, :keep]
                n = keep
            kb, vb, end = buf
            kb[:, end : end + t] = k[b]
            vb[:, end : end + t] = v[b]
            end += t
            self._buffers[b] = (kb, vb, end)
            size = min(n + t, self.max_memory)
            self.keys[b], self.values[b] = kb[:, end - size : end], vb[:, end - size : end]

    def select(self, rows: list[int]) -> None:
        """Keep only batch rows ``rows``, in that order (a sampler dropping finished rows)."""
        self.keys = [self.keys[j] for j in rows]
        self.values = [self.values[j] for j in rows]
        self._buffers = [self._buffers[j] for j in rows]
        self.batch_size = len(rows)

    def stage(self, k: Tensor, v: Tensor) -> None:
        """Hold a segment's keys/values until ``commit`` (the model calls both)."""
        self._staged = (k.detach(), v.detach())

    def commit(self) -> None:
        if self._staged is not None:
            self.add(*self._staged)
        self._staged = None

    def reset(self, mask: Optional[Tensor] = None) -> None:
        """Forget the rows where ``mask [B]`` is True (all rows when None)."""
        rows = range(self.batch_size) if mask is None else torch.as_tensor(mask).nonzero().flatten().tolist()
        for b in rows:
            self.keys[b] = self.values[b] = self._buffers[b] = None
        self._staged = None

    @torch.no_grad()
    def topk_indices(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """``(scores, idx)``, both ``[B, H, T, topk]``: the best keys of each query, best first.

        ``idx`` indexes ``keys[b][h]``; where a row holds fewer than ``topk`` keys the rest of
        ``idx`` is -1 and ``scores`` is -inf.
        """
        B, H, T, _ = q.shape
        K = self.topk
        scores = torch.full((B, H, T, K), float("-inf"), device=q.device)
        idx = torch.full((B, H, T, K), -1, dtype=torch.long, device=q.device)
        for b in range(B):
            keys = self.keys[b]
            if keys is None:
                continue
            n = keys.shape[1]
            k = min(K, n)
            keys_t = keys.transpose(1, 2)  # [H, Dh, N], float32 (add)
            rows = max(1, SEARCH_SCORES // n)
            for a in range(0, T, rows):
                top = torch.bmm(q[b, :, a : a + rows].float(), keys_t).topk(k, dim=-1)
                scores[b, :, a : a + rows, :k] = top.values
                idx[b, :, a : a + rows, :k] = top.indices
        return scores, idx

    def search(self, q: Tensor) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """Retrieved ``(k, v, valid)``: ``[B, H, T, topk, Dh]`` twice and bool ``[B, H, T, topk]``.

        None when the memory is empty in every row. Retrieved keys/values carry no gradient;
        ``q`` only chooses them here (the attention over them is where ``q`` gets gradients).
        """
        if all(k is None for k in self.keys):
            return None
        B, H, T, Dh = q.shape
        _, idx = self.topk_indices(q)
        valid = idx >= 0
        safe = idx.clamp(min=0)
        k_out = q.new_zeros(B, H, T, self.topk, Dh)
        v_out = q.new_zeros(B, H, T, self.topk, Dh)
        heads = torch.arange(H, device=q.device)[:, None, None]
        for b in range(B):
            if self.keys[b] is None:
                continue
            k_out[b] = self.keys[b][heads, safe[b]].to(q.dtype)  # [H, T, K, Dh]
            v_out[b] = self.values[b][heads, safe[b]].to(q.dtype)
        return k_out, v_out, valid

    @torch.no_grad()
    def attend(self, q: Tensor, scale: float) -> Optional[tuple[Tensor, Tensor]]:
        """Inference: ``(y [B, H, T, Dh], has [B, H, T, 1])``, attention of ``q`` over its
        ``topk`` retrieved keys, ``softmax(scale * q . k) @ v``: what SDPA over ``search``'s keys
        and values computes, from the search's scores and the gathered values alone; ``has`` is
        False (and ``y`` 0) for a query with nothing to retrieve. None when the memory is empty.
        """
        if all(k is None for k in self.keys):
            return None
        B, H, T, Dh = q.shape
        scores, idx = self.topk_indices(q)
        has = (idx[..., :1] >= 0)  # the best key exists wherever any does
        w = torch.softmax(scores * scale, dim=-1).nan_to_num_(0.0).to(q.dtype)  # [B, H, T, K]
        y = q.new_zeros(B, H, T, Dh)
        heads = torch.arange(H, device=q.device)[:, None, None]
        for b in range(B):
            if self.keys[b] is not None:
                v = self.values[b][heads, idx[b].clamp(min=0)].to(q.dtype)  # [H, T, K, Dh]
                y[b] = (w[b].unsqueeze(-2) @ v).squeeze(-2)
        return y, has

    def __repr__(self) -> str:
        return f"KNNMemory(batch {self.batch_size}, sizes {self.sizes()}, top-{self.topk}, max {self.max_memory})"


# --------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through SDPA, with optional cache and memories.

    ``knn=True`` makes this the kNN layer: besides local attention it attends over the top-k
    keys retrieved from a ``KNNMemory`` and mixes both outputs with a learned per-head gate
    ``g = sigmoid(knn_gate)``: ``y = g * y_knn + (1 - g) * y_local`` (Memorizing Transformers).
    Queries with nothing to retrieve (an empty row) use local attention alone.
    """

    def __init__(self, d_model: int, n_head: int, *, dropout: float = 0.0, attn_dropout: Optional[float] = None,
                 bias: bool = False, knn: bool = False):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        # Dropout on the attention probabilities (None: ``dropout``). On a CPU any of it sends SDPA
        # to its unfused math path, about 8x slower in training; 0 keeps the fused kernel.
        self.dropout = dropout if attn_dropout is None else attn_dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.knn_gate = nn.Parameter(torch.zeros(n_head)) if knn else None

    def forward(
        self,
        x: Tensor,
        *,
        rope: Optional[tuple[Tensor, Tensor]] = None,
        start: int = 0,
        layer: int = 0,
        cache: Optional[KVCache] = None,
        xl: Optional[XLMemory] = None,
        knn: Optional[KNNMemory] = None,
        window: Optional[int] = None,
    ) -> Tensor:
        """``x [B, T, C]`` at absolute positions ``start..start+T-1`` -> ``[B, T, C]``.

        ``rope`` is ``(cos, sin)`` for those positions (None: no rotation, e.g. learned
        positions added at the embedding). ``layer`` says which entries of ``cache``/``xl`` are
        this layer's. ``window`` limits the local keys (cache and current tokens) to the last
        ``window`` positions.
        """
        B, T, C = x.shape
        H, Dh = self.n_head, self.head_dim
        qkv = self.qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
        q_raw, k_raw, v = qkv
        q, k = q_raw, k_raw
        if rope is not None:
            q, k = apply_rotary(qkv[:2], *rope)  # q and k in one pass

        if cache is not None:
            k_start = cache.offset
            keys, values = cache.append(layer, k, v)
        else:
            k_start = start
            keys, values = k, v
        n_k = keys.shape[2]
        mem = xl.get(layer) if xl is not None else None
        p = self.dropout if self.training else 0.0

        if mem is None and window is None and n_k == T:
            y = F.scaled_dot_product_attention(q, keys, values, dropout_p=p, is_causal=True)
        elif mem is None and window is None and T == 1:
            y = F.scaled_dot_product_attention(q, keys, values, dropout_p=p)  # one query sees all the past
        else:
            mask = causal_mask(start, T, k_start, n_k, window, device=x.device)[None, None]  # [1, 1, T, Tk]
            if mem is not None:
                mk, mv, mvalid = mem
                keys = torch.cat([mk.to(keys.dtype), keys], dim=2)
                values = torch.cat([mv.to(values.dtype), values], dim=2)
                mask = torch.cat([mvalid[:, None, None, :].expand(B, 1, T, -1), mask.expand(B, 1, T, n_k)], dim=-1)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p)

        if self.knn_gate is not None and knn is not None:
            y = self.mix_knn(q_raw, y, knn, p)
            if cache is None:
                knn.stage(k_raw, v)
        if xl is not None and cache is None:
            xl.stage(layer, k, v)
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))
        return self.resid_dropout(y) if self.training else y  # (a module call less per layer when decoding)

    def mix_knn(self, q: Tensor, y_local: Tensor, knn: KNNMemory, p: float) -> Tensor:
        if not (torch.is_grad_enabled() and q.requires_grad) and p == 0.0:
            found = knn.attend(q, 1.0 / math.sqrt(self.head_dim))  # the same, without gathering keys
            if found is None:
                return y_local
            y_mem, has = found
        else:
            found = knn.search(q)
            if found is None:
                return y_local
            k_ret, v_ret, valid = found  # [B, H, T, K, Dh], [B, H, T, K]
            has = valid.any(dim=-1, keepdim=True)  # [B, H, T, 1]
            # A query with nothing retrieved gets one dummy key so SDPA stays finite; the gate
            # below then ignores its result.
            mask = (valid | ~has).unsqueeze(-2)  # [B, H, T, 1, K]
            y_mem = F.scaled_dot_product_attention(q.unsqueeze(-2), k_ret, v_ret, attn_mask=mask, dropout_p=p)
            y_mem = y_mem.squeeze(-2)
        gate = torch.sigmoid(self.knn_gate).view(1, -1, 1, 1).to(y_local.dtype) * has.to(y_local.dtype)
        return y_local + gate * (y_mem - y_local)
