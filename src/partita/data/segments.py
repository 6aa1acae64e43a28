"""Labelled token segments of a corpus: the label set, label-balanced random windows on bar
lines, and fixed evenly spread windows per piece. Shared by the composer classifier, the
composer-conditioned VAE (training) and their evaluation (``partita.evaluate.conditioned``).

* the label set is chosen once (``choose_labels``): the labels given, or every label with at
  least ``min_pieces`` pieces, so that each class has enough pieces to learn from and to test on;
* a batch is drawn label-balanced (a label uniformly, then one of its pieces uniformly, then a
  window starting on a bar line), so that the big collections do not drown the small ones and a
  piece's length does not set its weight.
"""

from __future__ import annotations

import numpy as np

from partita.data.corpus import Corpus
from partita.errors import PartitaError

__all__ = ["LabelledSegments", "choose_labels", "segment_windows"]


def segment_windows(n: int, segment: int, max_segments: int) -> list[tuple[int, int]]:
    """``(start, end)`` of at most ``max_segments`` windows of ``segment`` tokens spread evenly over
    ``n`` tokens (first and last window at the ends); one window ``(0, n)`` when ``n <= segment``."""
    if n <= segment:
        return [(0, n)]
    k = min(max_segments, int(np.ceil(n / segment)) * 2 - 1)  # overlap by half at most
    starts = np.unique(np.linspace(0, n - segment, max(k, 1)).round().astype(int))
    return [(int(s), int(s) + segment) for s in starts]


def choose_labels(corpus: Corpus, labels: list[str] | None = None, min_pieces: int = 40) -> list[str]:
    """The label set: ``labels`` (checked against the corpus, matched ignoring case) or every
    label with at least ``min_pieces`` good pieces, in the corpus's (sorted) order."""
    counts: dict[str, int] = {}
    for r in corpus.pieces:
        if r["label"] is not None:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    if labels:
        by_lower = {k.lower(): k for k in counts}
        out = []
        for name in labels:
            key = by_lower.get(str(name).strip().lower())
            if key is None:
                raise PartitaError(f"label {name!r} is not in the corpus; its labels: {', '.join(sorted(counts))}")
            if key not in out:
                out.append(key)
    else:
        out = [k for k in sorted(counts) if counts[k] >= min_pieces]
    if len(out) < 2:
        raise PartitaError(
            f"need at least 2 labels with >= {min_pieces} pieces, the corpus has {len(out)}: "
            "lower --min-pieces or name them with --labels"
        )
    return out


class LabelledSegments:
    """Token segments of the pieces of a label set, by split (module doc).

    ``labels``: the label names (index = class). Pieces with another label, no label or no
    tokens are left out. ``keep_eos=False`` (classifier): the music tokens only (BOS and EOS
    dropped); ``keep_eos=True`` (VAE): BOS dropped but EOS kept, so a model learns where pieces end.
    """

    def __init__(self, corpus: Corpus, streams, labels: list[str], *, pad_id: int = 0, keep_eos: bool = False):
        self.streams, self.labels, self.pad_id, self.keep_eos = streams, list(labels), pad_id, keep_eos
        index = {name: k for k, name in enumerate(self.labels)}
        rows = {r["id"]: r for r in corpus.pieces}
        self.label_of: dict[int, int] = {}
        self.by_split: dict[str, dict[int, list[int]]] = {}
        for i, pid in enumerate(streams.ids):
            row = rows.get(pid)
            if row is None or row["label"] not in index or not row["split"] or streams.lengths[i] < 3:
                continue
            k = index[row["label"]]
            self.label_of[i] = k
            self.by_split.setdefault(row["split"], {}).setdefault(k, []).append(i)
        self._bar_starts: dict[int, np.ndarray] = {}

    def pieces(self, split: str) -> list[int]:
        """Stream indices of ``split``'s pieces, in stream order."""
        return sorted(i for ps in self.by_split.get(split, {}).values() for i in ps)

    def counts(self, split: str) -> dict[str, int]:
        got = self.by_split.get(split, {})
        return {name: len(got.get(k, [])) for k, name in enumerate(self.labels)}

    def tokens(self, i: int) -> np.ndarray:
        """Piece ``i``'s tokens without BOS (and without EOS unless ``keep_eos``)."""
        t = self.streams.piece(i)
        return np.asarray(t[1:] if self.keep_eos else t[1:-1], dtype=np.int64)

    def bar_starts(self, i: int) -> np.ndarray:
        """Offsets (into ``tokens(i)``) of the first token of every bar."""
        if i not in self._bar_starts:
            bars = np.asarray(self.streams.bars(i)[1:], dtype=np.int64)
            starts = np.flatnonzero(np.diff(bars) != 0) + 1
            self._bar_starts[i] = np.concatenate([[0], starts]).astype(np.int64)
        return self._bar_starts[i]

    def check(self, split: str, what: str) -> None:
        missing = [name for name, n in self.counts(split).items() if n == 0]
        if not self.by_split.get(split) or missing:
            raise PartitaError(
                f"the corpus has no {split} pieces with tokens for label(s) {', '.join(missing or self.labels)}: "
                f"{what} needs every label in the {split} split"
            )

    def sample(self, split: str, batch_size: int, seq_len: int, rng: np.random.Generator, *,
               min_len: int | None = None, crop_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, seq_len] padded, labels [B])``: label-balanced random windows on bar lines;
        with probability ``crop_prob`` a window is cut to a random length in ``[min_len, seq_len]``."""
        groups = self.by_split.get(split, {})
        keys = sorted(groups)
        ids = np.full((batch_size, seq_len), self.pad_id, np.int64)
        labels = np.zeros(batch_size, np.int64)
        for b in range(batch_size):
            k = keys[int(rng.integers(len(keys)))]
            i = groups[k][int(rng.integers(len(groups[k])))]
            toks = self.tokens(i)
            starts = self.bar_starts(i)
            fits = starts[starts <= max(len(toks) - seq_len, 0)]
            s = int(fits[int(rng.integers(len(fits)))]) if len(fits) else 0
            n = min(seq_len, len(toks) - s)
            if crop_prob and min_len and rng.random() < crop_prob and n > min_len:
                n = int(rng.integers(min_len, n + 1))
            ids[b, :n] = toks[s : s + n]
            labels[b] = k
        return ids, labels

    def fixed_windows(self, split: str, seq_len: int, per_piece: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids [N, seq_len], labels [N], piece [N])``: up to ``per_piece`` evenly spread windows
        of every piece of ``split`` (deterministic: the same windows every time)."""
        rows, labels, piece = [], [], []
        for i in self.pieces(split):
            toks = self.tokens(i)
            for s, e in segment_windows(len(toks), seq_len, per_piece):
                row = np.full(seq_len, self.pad_id, np.int64)
                row[: e - s] = toks[s:e]
                rows.append(row)
                labels.append(self.label_of[i])
                piece.append(i)
        if not rows:
            return np.zeros((0, seq_len), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.stack(rows), np.asarray(labels), np.asarray(piece)
