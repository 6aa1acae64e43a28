"""Baselines a trained model must beat: a smoothed n-gram language model over token ids, and
hand-made features with a logistic regression (attribution) or a cosine (retrieval).

The feature baselines are at the end of this module (see its section comment): on ASAP they give
composer top-1 0.72 and performance -> score R@1 0.86 (``benchmarks/asap_baselines.py``).

``NGramLM`` is the honest yardstick for the music transformer: it reads the same token ids
(``partita.represent.tokens``), is fit on the train split and scored on the test split in the
same units (bits per token, bits per note). A transformer that does not beat a 4-gram with
Kneser-Ney smoothing has learned nothing an n-gram table could not.

What is predicted. ``log_prob(seq)`` gives the natural-log probability of every token after the
first, each given the up to ``order - 1`` tokens before it in the same sequence, so ``len(seq) -
1`` values: the accounting of a GPT that is fed ``seq[:-1]`` and predicts ``seq[1:]``. partita's
token streams start every piece with BOS, so the first prediction is ``P(first music token |
BOS)``. Near the start of a sequence the history is shorter than ``order - 1`` and the model
uses the longest history there is (a history that starts with BOS marks the start). ``fit``
counts exactly these events.

Smoothing (``smoothing=``):

* ``"kneser-ney"`` (default): interpolated *modified* Kneser-Ney (Chen & Goodman 1998), three
  discounts per order estimated from the counts of counts; the highest order uses raw counts,
  lower orders the number of distinct tokens seen before an n-gram (continuation counts; an
  n-gram at the very start of a sequence, which has nothing before it, keeps its raw count there,
  as KenLM does for n-grams that begin with ``<s>``); the unigram level is interpolated with the
  uniform distribution over the whole vocabulary, so a token never seen in training still gets a
  probability above zero;
* ``"witten-bell"``: interpolated Witten-Bell, raw counts at every order, down to uniform;
* ``"add-k"``: ``(c(h, w) + k) / (c(h) + k V)`` with the longest history ``h`` (no backoff; an
  unseen history gives the uniform distribution). Weak on purpose: the textbook floor.

For every context the probabilities over the full vocabulary sum to one (the tests check all
contexts of a small vocabulary).

How it is stored. The n-grams form a trie read right to left: a node of level ``L`` is the
``L`` tokens ending at some position; its key is ``parent * V + token`` where ``parent`` is the
node of the last ``L - 1`` of those tokens and ``token`` the one before them. Each level is a
sorted int64 array of keys (a node's id is its index), so fitting is one ``np.unique`` per order
and a query is one ``np.searchsorted`` per order for all positions at once: no Python loop over
tokens or over the vocabulary. Per order ``L`` the model keeps, for every level-``L`` node, the
discounted count ``alpha`` and for every level-``L - 1`` node (as a history) the denominator and
the back-off weight, giving ``P_L(w | h) = (alpha(h w) + gamma(h) P_{L-1}(w | h')) / denom(h)``.
``save``/``load`` write these arrays to one ``.npz`` file (no pickle).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from partita.errors import PartitaError
from partita.io.files import atomic_write

__all__ = [
    "NGramLM",
    "corpus_features",
    "count_notes",
    "feature_classifier",
    "grouped_attribution",
    "per_label_top1",
    "recall_at_k",
    "rendition_retrieval",
    "standardised_unit",
    "topk_accuracy",
]

_FORMAT = "partita.ngram_lm"
_VERSION = 1
_SMOOTHINGS = {
    "kneser-ney": "kneser-ney",
    "kn": "kneser-ney",
    "modified-kneser-ney": "kneser-ney",
    "mkn": "kneser-ney",
    "witten-bell": "witten-bell",
    "wb": "witten-bell",
    "add-k": "add-k",
    "addk": "add-k",
}
# Discounts when the counts of counts cannot give them (tiny data), and their bounds: D_k <= k
# keeps every discounted count >= 0; D_k > 0 keeps mass for unseen tokens.
_DEFAULT_DISCOUNTS = (0.5, 1.0, 1.5)
_MIN_DISCOUNT = 0.05

PathLike = Union[str, os.PathLike]


class _Batch:
    """Sequences concatenated: ``tokens`` (int64) and ``pos`` (index of each token in its sequence)."""

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray):
        self.tokens = tokens
        self.lengths = lengths
        starts = np.cumsum(lengths) - lengths
        self.pos = np.arange(len(tokens), dtype=np.int64) - np.repeat(starts, lengths)

    @property
    def n_predicted(self) -> int:
        return int(np.count_nonzero(self.pos >= 1))


def _as_batch(sequences: Any) -> _Batch:
    """Token sequences in any of the forms callers have: ``TokenStreams``, one 1-D array, a 2-D
    array (rows), or an iterable of arrays/lists/tensors."""
    if hasattr(sequences, "tokens") and hasattr(sequences, "offsets"):  # TokenStreams
        tokens = np.asarray(sequences.tokens, dtype=np.int64)
        lengths = np.diff(np.asarray(sequences.offsets, dtype=np.int64))
        return _Batch(tokens, lengths)
    if hasattr(sequences, "numpy") and not isinstance(sequences, np.ndarray):  # a torch tensor
        sequences = sequences.detach().cpu().numpy() if hasattr(sequences, "detach") else sequences.numpy()
    if isinstance(sequences, np.ndarray):
        if sequences.ndim == 1:
            sequences = [sequences]
        elif sequences.ndim != 2:
            raise PartitaError(f"token sequences must be 1-D or 2-D arrays, got shape {sequences.shape}")
    parts = []
    for seq in sequences:
        if hasattr(seq, "detach"):
            seq = seq.detach().cpu().numpy()
        arr = np.asarray(seq)
        if arr.size and arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise PartitaError(f"token ids must be integers, got an array of {arr.dtype}")
        parts.append(arr.astype(np.int64).ravel())
    parts = [p for p in parts if len(p)]
    if not parts:
        return _Batch(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return _Batch(np.concatenate(parts), np.array([len(p) for p in parts], np.int64))


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each ``query`` key in the sorted ``keys``, or -1."""
    if len(keys) == 0:
        return np.full(len(query), -1, np.int64)
    j = np.searchsorted(keys, query)
    j = np.minimum(j, len(keys) - 1)
    return np.where(keys[j] == query, j, -1).astype(np.int64)


def _modified_kn_discounts(u: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the counts of counts of ``u`` (clamped to (0, k])."""
    n = [int(np.count_nonzero(u == k)) for k in (1, 2, 3, 4)]
    d = list(_DEFAULT_DISCOUNTS)
    if n[0] > 0 and n[1] > 0:
        y = n[0] / (n[0] + 2 * n[1])
        d[0] = 1 - 2 * y * n[1] / n[0]
        if n[2] > 0:
            d[1] = 2 - 3 * y * n[2] / n[1]
            if n[3] > 0:
                d[2] = 3 - 4 * y * n[3] / n[2]
    return tuple(float(min(max(x, _MIN_DISCOUNT), k)) for k, x in zip((1, 2, 3), d))  # type: ignore[return-value]


class NGramLM:
    """A smoothed n-gram language model over token ids ``0 .. vocab_size - 1``.

    ``order``: n (4 = three tokens of history); ``smoothing``: ``"kneser-ney"`` (interpolated
    modified KN, default), ``"witten-bell"`` or ``"add-k"`` (with ``k``); ``vocab_size``: the
    tokenizer's ``len(tokenizer)`` (if None, ``fit`` takes the largest id seen + 1, and any larger
    id is refused later). See the module doc for what is predicted.

    >>> lm = NGramLM(order=4, vocab_size=len(tokenizer)).fit(train_sequences)
    >>> lm.bits_per_token(test_sequences)
    """

    def __init__(self, order: int = 4, smoothing: str = "kneser-ney", vocab_size: int | None = None, k: float = 0.1):
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
            raise PartitaError(f"order must be a whole number >= 1, not {order!r}")
        key = str(smoothing).lower().replace("_", "-").replace(" ", "-")
        if key not in _SMOOTHINGS:
            raise PartitaError(f"unknown smoothing {smoothing!r} (choose kneser-ney, witten-bell or add-k)")
        if vocab_size is not None and (not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1):
            raise PartitaError(f"vocab_size must be a whole number >= 1, not {vocab_size!r}")
        if not (isinstance(k, (int, float)) and k > 0 and math.isfinite(k)):
            raise PartitaError(f"k must be a positive number, not {k!r}")
        self.order = int(order)
        self.smoothing = _SMOOTHINGS[key]
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.k = float(k)
        self._fitted = False

    # ------------------------------------------------------------------ fitting

    def fit(self, sequences: Iterable[np.ndarray] | Any) -> NGramLM:
        """Count the n-grams of ``sequences`` (an iterable of id arrays, a 2-D array, one 1-D
        array or a ``TokenStreams``) and build the smoothed tables. Refits from scratch; returns
        ``self``."""
        batch = _as_batch(sequences)
        T, pos = batch.tokens, batch.pos
        if len(T) and T.min() < 0:
            raise PartitaError(f"token ids must be >= 0, found {int(T.min())}")
        V = self.vocab_size if self.vocab_size is not None else (int(T.max()) + 1 if len(T) else 1)
        if len(T) and T.max() >= V:
            raise PartitaError(f"token id {int(T.max())} is outside the vocabulary (vocab_size={V}); pass the tokenizer's len()")
        self.vocab_size = V
        n = self.order
        keys: list[np.ndarray] = [np.zeros(1, np.int64)]  # level 0: the root (empty history)
        raw: list[np.ndarray] = [np.zeros(1, np.float64)]
        start: list[np.ndarray] = [np.zeros(1, np.float64)]
        ctx: list[np.ndarray] = [np.zeros(0, np.int64)]
        S_prev = np.zeros(len(T), np.int64)  # node of the substring of length L-1 ending at each position
        for L in range(1, n + 1):
            if len(keys[L - 1]) and (len(keys[L - 1]) - 1) * V >= 2**62:
                raise PartitaError("too many n-grams for 64-bit keys; use a lower order or fewer tokens")
            idx = np.flatnonzero(pos >= L - 1)  # positions where an L-gram ends
            key = S_prev[idx] * V + T[idx - (L - 1)]
            uniq, inv = np.unique(key, return_inverse=True)
            inv = inv.astype(np.int64).ravel()
            m = len(uniq)
            event = pos[idx] >= 1  # the token at the position is predicted (not a sequence's first)
            raw.append(np.bincount(inv[event], minlength=m).astype(np.float64))
            at_start = event & (pos[idx] == L - 1)  # the n-gram starts its sequence
            start.append(np.bincount(inv[at_start], minlength=m).astype(np.float64))
            c = np.zeros(m, np.int64)  # the history node of each n-gram: its first L-1 tokens
            if L > 1:
                ev = idx[event]
                c[inv[event]] = S_prev[ev - 1]  # the L-1 tokens ending one position earlier
            ctx.append(c)
            keys.append(uniq)
            S_new = np.full(len(T), -1, np.int64)
            S_new[idx] = inv
            S_prev = S_new
        self._build(keys, raw, start, ctx)
        self.n_tokens_ = len(T)
        self.n_sequences_ = len(batch.lengths)
        self._fitted = True
        return self

    def _build(self, keys, raw, start, ctx) -> None:
        n, V = self.order, self.vocab_size
        self._keys = keys
        self._alpha: list[np.ndarray] = [np.zeros(1)]
        self._denom: list[np.ndarray] = []  # index L-1: per level-(L-1) node, as a history of order L
        self._gamma: list[np.ndarray] = []
        self.discounts_: list[tuple[float, float, float]] = []
        for L in range(1, n + 1):
            if self.smoothing == "kneser-ney" and L < n:
                # continuation counts: distinct tokens seen before the n-gram (its children in the
                # right-to-left trie), plus raw counts where it starts a sequence
                parents = keys[L + 1] // V if len(keys[L + 1]) else np.zeros(0, np.int64)
                u = np.bincount(parents, minlength=len(keys[L])).astype(np.float64) + start[L]
            else:
                u = raw[L]
            n_hist = len(keys[L - 1])
            denom = np.bincount(ctx[L], weights=u, minlength=n_hist)
            if self.smoothing == "kneser-ney":
                d = _modified_kn_discounts(u)
                self.discounts_.append(d)
                ui = u.astype(np.int64)
                dv = np.where(ui >= 3, d[2], np.where(ui == 2, d[1], np.where(ui == 1, d[0], 0.0)))
                alpha = u - dv
                gamma = np.bincount(ctx[L], weights=dv, minlength=n_hist)
            elif self.smoothing == "witten-bell":
                alpha = u
                types = np.bincount(ctx[L], weights=(u > 0).astype(np.float64), minlength=n_hist)
                denom = denom + types
                gamma = types
            else:  # add-k: denominators are raw history counts; k is added at query time
                alpha = u
                gamma = np.zeros(n_hist)
            self._alpha.append(alpha)
            self._denom.append(denom)
            self._gamma.append(gamma)

    # ------------------------------------------------------------------ scoring

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise PartitaError("the n-gram model is not fitted yet: call fit(train_sequences) or NGramLM.load(path)")

    def _check_ids(self, T: np.ndarray) -> None:
        if len(T) and (T.min() < 0 or T.max() >= self.vocab_size):
            bad = int(T.min()) if T.min() < 0 else int(T.max())
            raise PartitaError(
                f"token id {bad} is outside the vocabulary 0..{self.vocab_size - 1} this model was fit with"
            )

    def _batch_log_probs(self, batch: _Batch) -> np.ndarray:
        """Natural-log probability at every position of the batch (NaN at each sequence's first)."""
        self._check_fitted()
        T, pos = batch.tokens, batch.pos
        self._check_ids(T)
        n, V = self.order, self.vocab_size
        N = len(T)
        p = np.full(N, 1.0 / V)
        S_prev = np.zeros(N, np.int64)
        for L in range(1, n + 1):
            # node of the L tokens ending at each position (-1: never seen)
            S = np.full(N, -1, np.int64)
            idx = np.flatnonzero((pos >= L - 1) & (S_prev >= 0))
            S[idx] = _lookup(self._keys[L], S_prev[idx] * V + T[idx - (L - 1)])
            # score positions whose history of length L-1 lies inside the sequence
            act = np.flatnonzero(pos >= max(L - 1, 1))
            h = np.zeros(len(act), np.int64) if L == 1 else S_prev[act - 1]
            ok = h >= 0
            if self.smoothing == "add-k":
                p[act[~ok]] = 1.0 / V  # an unseen longest history: uniform (no backoff)
            act, h = act[ok], h[ok]
            g = S[act]
            a = np.where(g >= 0, self._alpha[L][np.maximum(g, 0)], 0.0)
            den = self._denom[L - 1][h]
            if self.smoothing == "add-k":
                # only the longest history counts: overwrite what shorter ones gave
                p[act] = (a + self.k) / (den + self.k * V)
            else:
                has = den > 0
                act, a, h, den = act[has], a[has], h[has], den[has]
                p[act] = (a + self._gamma[L - 1][h] * p[act]) / den
            S_prev = S
        out = np.log(p)
        out[pos == 0] = np.nan
        return out

    def log_prob(self, sequence: Sequence[int] | np.ndarray) -> np.ndarray:
        """Natural-log probabilities of ``sequence[1:]``, each given the tokens before it
        (at most ``order - 1`` of them): ``len(sequence) - 1`` values."""
        arr = np.asarray(sequence.detach().cpu().numpy() if hasattr(sequence, "detach") else sequence)
        batch = _as_batch([arr.ravel()])
        if len(batch.tokens) == 0:
            return np.zeros(0)
        return self._batch_log_probs(batch)[1:]

    def total_log_prob(self, sequences: Iterable[np.ndarray] | Any) -> tuple[float, int]:
        """(sum of natural-log probabilities, number of tokens predicted) over ``sequences``."""
        batch = _as_batch(sequences)
        if batch.n_predicted == 0:
            return 0.0, 0
        lp = self._batch_log_probs(batch)
        return float(np.nansum(lp)), batch.n_predicted

    def bits_per_token(self, sequences: Iterable[np.ndarray] | Any) -> float:
        """Mean negative log2 probability of the predicted tokens (every token after the first of
        each sequence). ``2 ** bits`` is the perplexity; ``log2(vocab_size)`` is the uniform guess."""
        total, count = self.total_log_prob(sequences)
        if count == 0:
            raise PartitaError("no token to score: every sequence is shorter than 2 tokens")
        return -total / count / math.log(2)

    def bits_per_note(self, sequences: Iterable[np.ndarray] | Any, notes_per_sequence: int | Iterable[int]) -> float:
        """Total bits of ``sequences`` divided by the number of notes they hold.

        ``notes_per_sequence``: one count per sequence (or one total), counted from the decoded
        music (``count_notes``). Unlike bits per token this compares tokenizations: a tokenizer
        with fewer, larger tokens is not rewarded for it.
        """
        total, count = self.total_log_prob(sequences)
        notes = np.asarray(list(notes_per_sequence) if not np.isscalar(notes_per_sequence) else [notes_per_sequence])
        n_notes = float(notes.sum())
        if not n_notes > 0:
            raise PartitaError("bits_per_note needs at least one note (notes_per_sequence sums to 0)")
        return -total / math.log(2) / n_notes

    def perplexity(self, sequences: Iterable[np.ndarray] | Any) -> float:
        """``2 ** bits_per_token``."""
        return float(2.0 ** self.bits_per_token(sequences))

    def evaluate(self, sequences: Iterable[np.ndarray] | Any, notes_per_sequence: Any = None) -> dict[str, float]:
        """Everything a report wants in one pass: tokens scored, bits per token, perplexity, the
        uniform baseline's bits per token and, with note counts, bits per note."""
        seqs = sequences if hasattr(sequences, "offsets") or isinstance(sequences, np.ndarray) else list(sequences)
        total, count = self.total_log_prob(seqs)
        if count == 0:
            raise PartitaError("no token to score: every sequence is shorter than 2 tokens")
        bits = -total / math.log(2)
        out = {
            "n_tokens": count,
            "bits_per_token": bits / count,
            "perplexity": 2.0 ** (bits / count),
            "uniform_bits_per_token": math.log2(self.vocab_size),
        }
        if notes_per_sequence is not None:
            notes = np.asarray(
                list(notes_per_sequence) if not np.isscalar(notes_per_sequence) else [notes_per_sequence]
            )
            if notes.sum() > 0:
                out["n_notes"] = int(notes.sum())
                out["bits_per_note"] = bits / float(notes.sum())
        return out

    # ------------------------------------------------------------------ distributions and sampling

    def next_token_probs(self, context: Sequence[int] | np.ndarray = ()) -> np.ndarray:
        """The distribution over the whole vocabulary of the token after ``context`` (float64,
        sums to 1). ``context`` is read as the start of a sequence, as in ``log_prob``; only its
        last ``order - 1`` tokens matter."""
        self._check_fitted()
        ctx = np.asarray(context, dtype=np.int64).ravel()
        self._check_ids(ctx)
        V = self.vocab_size
        top = min(self.order, len(ctx) + 1)
        ctx = ctx[len(ctx) - (top - 1) :] if top > 1 else ctx[:0]
        words = np.arange(V, dtype=np.int64)
        p = np.full(V, 1.0 / V)
        g = np.zeros(V, np.int64)  # node of (context[-(L-1):], w) for every w
        h = 0  # node of context[-(L-1):]
        for L in range(1, top + 1):
            if L == 1:
                g = _lookup(self._keys[1], words)
            else:
                tok = ctx[-(L - 1)]
                g = np.where(g >= 0, _lookup(self._keys[L], np.maximum(g, 0) * V + tok), -1)
                if h >= 0:
                    h = int(_lookup(self._keys[L - 1], np.array([h * V + tok]))[0])
            if h < 0:
                if self.smoothing == "add-k":
                    p = np.full(V, 1.0 / V)
                continue
            a = np.where(g >= 0, self._alpha[L][np.maximum(g, 0)], 0.0)
            den = float(self._denom[L - 1][h])
            if self.smoothing == "add-k":
                p = (a + self.k) / (den + self.k * V)
            elif den > 0:
                p = (a + self._gamma[L - 1][h] * p) / den
        return p

    def generate(
        self,
        prompt: Sequence[int] | np.ndarray,
        max_new_tokens: int,
        *,
        seed: int = 0,
        temperature: float = 1.0,
        stop_id: int | None = None,
    ) -> np.ndarray:
        """``prompt`` followed by up to ``max_new_tokens`` sampled ids (stopping after ``stop_id``,
        e.g. EOS). Same seed, same output. A baseline for generation metrics, not a rival sampler."""
        if not temperature > 0:
            raise PartitaError(f"temperature must be > 0, not {temperature!r}")
        rng = np.random.default_rng(seed)
        out = [int(t) for t in np.asarray(prompt, dtype=np.int64).ravel()]
        for _ in range(int(max_new_tokens)):
            p = self.next_token_probs(out[-(self.order - 1) :] if self.order > 1 else [])
            if temperature != 1.0:
                logits = np.log(np.maximum(p, 1e-300)) / temperature
                p = np.exp(logits - logits.max())
            p = p / p.sum()
            tok = int(rng.choice(len(p), p=p))
            out.append(tok)
            if stop_id is not None and tok == stop_id:
                break
        return np.asarray(out, np.int64)

    # ------------------------------------------------------------------ persistence

    def save(self, path: PathLike) -> Path:
        """Write the fitted model to one ``.npz`` file (numpy arrays and a JSON header; no pickle).
        The file appears whole or not at all."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "order": self.order,
            "smoothing": self.smoothing,
            "vocab_size": self.vocab_size,
            "k": self.k,
            "discounts": [list(d) for d in self.discounts_],
            "n_tokens": int(self.n_tokens_),
            "n_sequences": int(self.n_sequences_),
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
        for L in range(1, self.order + 1):
            arrays[f"keys{L}"] = self._keys[L]
            arrays[f"alpha{L}"] = self._alpha[L]
            arrays[f"denom{L}"] = self._denom[L - 1]
            arrays[f"gamma{L}"] = self._gamma[L - 1]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: PathLike) -> NGramLM:
        """Read a model written by ``save``. A missing or damaged file raises ``PartitaError``."""
        path = Path(path)
        if not path.is_file():
            raise PartitaError(f"{path}: no such n-gram model file (write one with NGramLM.save)")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {name: z[name] for name in z.files}
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        except Exception as e:  # zipfile, ValueError, KeyError, JSON errors...
            raise PartitaError(f"{path}: not a readable n-gram model file ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise PartitaError(f"{path}: not a partita n-gram model file")
        if meta.get("version", 0) > _VERSION:
            raise PartitaError(f"{path}: written by a newer partita (format version {meta['version']}); upgrade partita")
        lm = cls(order=meta["order"], smoothing=meta["smoothing"], vocab_size=meta["vocab_size"], k=meta["k"])
        try:
            lm._keys = [np.zeros(1, np.int64)] + [data[f"keys{L}"].astype(np.int64) for L in range(1, lm.order + 1)]
            lm._alpha = [np.zeros(1)] + [data[f"alpha{L}"].astype(np.float64) for L in range(1, lm.order + 1)]
            lm._denom = [data[f"denom{L}"].astype(np.float64) for L in range(1, lm.order + 1)]
            lm._gamma = [data[f"gamma{L}"].astype(np.float64) for L in range(1, lm.order + 1)]
        except KeyError as e:
            raise PartitaError(f"{path}: damaged n-gram model file (missing {e.args[0]})") from None
        lm.discounts_ = [tuple(d) for d in meta.get("discounts", [])]
        lm.n_tokens_ = meta.get("n_tokens", 0)
        lm.n_sequences_ = meta.get("n_sequences", 0)
        lm._fitted = True
        return lm

    # ------------------------------------------------------------------ misc

    @property
    def n_ngrams(self) -> list[int]:
        """Number of distinct n-grams stored per order (1 .. order)."""
        self._check_fitted()
        return [len(k) for k in self._keys[1:]]

    def __repr__(self) -> str:
        state = f", fit on {self.n_tokens_} tokens" if self._fitted else ", not fitted"
        return f"NGramLM(order={self.order}, smoothing={self.smoothing!r}, vocab_size={self.vocab_size}{state})"


def count_notes(tokenizer: Any, sequences: Iterable[np.ndarray] | Any) -> np.ndarray:
    """Number of notes in the music each id sequence decodes to (for ``bits_per_note``)."""
    from partita.represent.tokens import decode

    if hasattr(sequences, "piece") and hasattr(sequences, "offsets"):
        sequences = [sequences.piece(i) for i in range(len(sequences))]
    elif isinstance(sequences, np.ndarray) and sequences.ndim == 1:
        sequences = [sequences]
    return np.array([decode(tokenizer, np.asarray(s)).note_num() for s in sequences], np.int64)


# ====================================================================================================
# Feature baselines for embeddings: what a statistician would try first on a piece's summary numbers.
#
# ``represent.features.feature_vector`` (pitch-class, interval, duration and IOI histograms, pitch
# range, density, polyphony, velocity statistics, chord intervals), standardised (each
# dimension to mean 0, standard deviation 1 over the pieces a deployed system would hold), then
#
# * composer attribution: a logistic regression (``feature_classifier``), scored by grouped
#   k-fold cross-validation over works (``grouped_attribution``: no work on both sides) or on a
#   held-out split (``topk_accuracy``, ``per_label_top1``);
# * retrieval: the cosine of the standardised vectors (``standardised_unit``), scored as recall at
#   k (``recall_at_k``), e.g. each performance of a work asking for its score among all scores
#   (``rendition_retrieval``).
# ====================================================================================================


def corpus_features(corpus: Any, indices: Sequence[int], progress: Any = None) -> np.ndarray:
    """``feature_vector`` of each piece ``indices`` of a prepared ``Corpus`` ([n, d] float64)."""
    from partita.represent.features import FEATURE_NAMES, feature_vector

    rows = []
    for n, i in enumerate(indices, 1):
        rows.append(feature_vector(corpus.notes(i)))
        if progress is not None:
            progress(n, len(indices))
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, len(FEATURE_NAMES)))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def standardised_unit(x: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` standardised with the mean and standard deviation of ``fit`` (default: ``x``),
    then scaled to unit length, so a dot product is the cosine of the standardised features.
    A dimension constant in ``fit`` is centred and left unscaled (as ``StandardScaler`` does)."""
    x = np.asarray(x, np.float64)
    fit = x if fit is None else np.asarray(fit, np.float64)
    if x.ndim != 2 or fit.ndim != 2 or x.shape[1] != fit.shape[1] or len(fit) == 0:
        raise PartitaError(f"standardised_unit needs 2-D arrays of the same width, got {x.shape} and {fit.shape}")
    std = fit.std(axis=0)
    return _unit_rows((x - fit.mean(axis=0)) / np.where(std > 0, std, 1.0))


def feature_classifier(x: np.ndarray, y: np.ndarray, *, C: float = 1.0, seed: int = 0) -> Any:
    """A fitted ``StandardScaler`` + ``LogisticRegression`` (multinomial, L2 with strength ``C``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y)
    if len(set(y.tolist())) < 2:
        raise PartitaError("a classifier needs training pieces of at least 2 labels")
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=C, random_state=seed)).fit(x, y)


def topk_accuracy(scores: np.ndarray, classes: np.ndarray, y: np.ndarray, ks: Sequence[int] = (1, 3)) -> dict[str, float]:
    """``{"top1": .., "top3": ..}``: share of rows whose label ``y`` is among the ``k`` best-scored
    ``classes`` (``scores``: [n, n_classes], higher is better). A label the scorer does not know
    counts as a miss."""
    scores, classes, y = np.asarray(scores), np.asarray(classes), np.asarray(y)
    if len(y) == 0:
        return {f"top{k}": float("nan") for k in ks}
    ranked = classes[np.argsort(-scores, axis=1, kind="stable")]
    return {f"top{k}": float(np.mean((ranked[:, :k] == y[:, None]).any(axis=1))) for k in ks}


def per_label_top1(scores: np.ndarray, classes: np.ndarray, y: np.ndarray) -> dict[str, dict]:
    """Per true label: ``{"n": pieces, "top1": share named right, "named": most common verdict}``."""
    scores, classes, y = np.asarray(scores), np.asarray(classes), np.asarray(y)
    pred = classes[np.argmax(scores, axis=1)] if len(y) else np.zeros(0, classes.dtype)
    out = {}
    for label in sorted(set(y.tolist()), key=str):
        mine = pred[y == label]
        values, counts = np.unique(mine, return_counts=True)
        out[str(label)] = {"n": int(len(mine)), "top1": float(np.mean(mine == label)),
                           "named": str(values[np.argmax(counts)])}
    return out


def grouped_attribution(
    x: np.ndarray,
    y: Sequence,
    groups: Sequence,
    *,
    folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
    ks: Sequence[int] = (1, 3),
) -> dict:
    """Grouped k-fold cross-validated attribution by ``feature_classifier``.

    ``groups`` (a work per piece) keep every piece of a work in one fold, so the classifier never
    sees another performance of the work it is asked about. Returns top-k accuracy over all pieces
    (each predicted by the model that did not train on its fold), ``majority`` (each fold's most
    common training label, the floor), per-label top-1 and the counts.
    """
    from sklearn.model_selection import GroupKFold

    x, y, groups = np.asarray(x, np.float64), np.asarray(y), np.asarray(groups)
    if not (len(x) == len(y) == len(groups)):
        raise PartitaError(f"x, y and groups must have one row per piece ({len(x)}, {len(y)}, {len(groups)})")
    n_groups = len(set(groups.tolist()))
    if folds < 2 or n_groups < folds:
        raise PartitaError(f"{folds}-fold cross-validation needs at least {max(folds, 2)} works, got {n_groups}")
    classes = np.array(sorted(set(y.tolist()), key=str))
    column = {c: k for k, c in enumerate(classes.tolist())}
    scores = np.zeros((len(y), len(classes)))
    majority_hits = 0
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        clf = feature_classifier(x[train], y[train], C=C, seed=seed)
        cols = [column[c] for c in clf.classes_.tolist()]
        scores[np.ix_(test, cols)] = clf.predict_proba(x[test])
        values, counts = np.unique(y[train], return_counts=True)
        majority_hits += int(np.sum(y[test] == values[np.argmax(counts)]))
    return {
        **topk_accuracy(scores, classes, y, ks),
        "majority": majority_hits / len(y),
        "per_label": per_label_top1(scores, classes, y),
        "n": int(len(y)),
        "n_groups": n_groups,
        "n_labels": int(len(classes)),
        "folds": folds,
    }


def recall_at_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_keys: Sequence,
    gallery_keys: Sequence,
    ks: Sequence[int] = (1, 5),
    *,
    exclude: np.ndarray | None = None,
) -> dict:
    """Recall at k of cosine retrieval: the share of queries with a gallery item of their own key
    (the same work) among their ``k`` nearest by dot product (rows are unit vectors).

    ``exclude``: a boolean [n_queries, n_gallery] mask of items a query may not retrieve (itself,
    when queries are drawn from the gallery). Queries with no relevant item left are not scored;
    ``queries`` in the result counts the scored ones.
    """
    q, g = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    qk, gk = np.asarray(query_keys), np.asarray(gallery_keys)
    relevant = qk[:, None] == gk[None, :]
    sims = q @ g.T if len(q) and len(g) else np.zeros((len(q), len(g)))
    if exclude is not None:
        relevant = relevant & ~exclude
        sims = np.where(exclude, -np.inf, sims)
    scored = relevant.any(axis=1)
    out: dict = {"queries": int(scored.sum()), "gallery": int(len(g))}
    if not scored.any():
        return {**out, **{f"R@{k}": float("nan") for k in ks}}
    order = np.argsort(-sims[scored], axis=1, kind="stable")
    hits = np.take_along_axis(relevant[scored], order, axis=1)
    for k in ks:
        out[f"R@{k}"] = float(np.mean(hits[:, :k].any(axis=1)))
    return out


PERFORMANCE, SCORE = "performance", "score"


def rendition_retrieval(vectors: np.ndarray, groups: Sequence, kinds: Sequence, ks: Sequence[int] = (1, 5)) -> dict:
    """Retrieval across renditions of a work (unit ``vectors``, one ``group`` = work and one
    ``kind`` per piece): ``"performance -> score"`` (each performance against every score) and
    ``"performance -> performance"`` (against every other performance; a work's other
    performances are relevant). A direction the pieces cannot pose (no scores, or no work with two
    performances) is left out."""
    v = np.asarray(vectors, np.float64)
    groups, kinds = np.asarray(groups, object), np.asarray(kinds, object)
    perf, score = np.flatnonzero(kinds == PERFORMANCE), np.flatnonzero(kinds == SCORE)
    out = {}
    if len(perf) and len(score):
        r = recall_at_k(v[perf], v[score], groups[perf], groups[score], ks)
        if r["queries"]:
            out["performance -> score"] = r
    if len(perf) > 1:
        r = recall_at_k(v[perf], v[perf], groups[perf], groups[perf], ks, exclude=np.eye(len(perf), dtype=bool))
        if r["queries"]:
            out["performance -> performance"] = r
    return out
