"""A corpus's token streams and how they are played (no training code here: evaluation reads them too).

``partita.represent.tokens.token_streams(corpus)`` opens the tokens, ``SongData`` says which piece is in which split, and
``SongStream`` plays them as contiguous batches (MIDIGen): every batch row streams whole songs, segment after segment.

Row ``b`` of batch ``s + 1`` continues the song of row ``b`` of batch ``s``, so a model can carry
XL and kNN memories from one step to the next; ``reset[b]`` says that a new song starts in row
``b`` (its memories must be cleared first).

A segment of ``T`` inputs is the song's label token followed by ``T - 1`` song tokens::

    ids     = [label, t[o], t[o+1], ..., t[o+T-2]]
    targets = [ignore, t[o+1], ...,   t[o+T-1]]

so every token of a song except its first (BOS) is predicted exactly once, from everything
before it in the song (within the window and the memories), and the label is always in view.
The tail of a song's last segment is padding with ``ignore`` targets.

Fill-in-the-middle (``fim_rate > 0``, infilling): that fraction of full training segments is
rearranged (``fim_arrange``): the segment's song tokens ``s`` are cut at two bar starts ``a < c``
(1 to ``fim_max_bars`` bars apart) and played suffix first (FIM's "SPM" order) as ``[label,
SUFFIX, s[c:], MIDDLE, s[:a], s[a:c]]``: the music before the gap and the gap itself stay one
contiguous stretch, so the middle is a continuation of the prefix as in plain training (a model
fine-tuned from a continuation model starts from what it knows) and the music after the gap is
in view earlier in the window. Every token keeps its real bar and position-in-bar input (SUFFIX
and MIDDLE take the bar of the token they announce, position 0). Targets: SUFFIX predicts
``s[c]``, the suffix its next token (its last one nothing), MIDDLE predicts ``s[0]``, then every
token of ``s[:c]`` its next one, the last middle token predicting ``s[c]`` (the bar where the
middle must end). The choice is drawn from ``(seed, batch, row)``, so a resumed run rearranges
the same segments.

The order is deterministic: in epoch ``e`` the pieces are shuffled with ``seed + e`` and dealt to
the ``world_size * batch_size`` rows of all processes round robin (process ``rank`` owns rows
``rank*B .. rank*B+B-1``). ``skip(n)`` fast-forwards over ``n`` batches using piece lengths only,
which is how a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from partita.data.corpus import Corpus

IGNORE = -100


@dataclass
class _Row:
    epoch: int = 0
    k: int = 0  # which piece of this row's list
    offset: int = 0  # first song token of the next segment
    done: bool = False  # finite streams: the row has played all its pieces


class SongStream:
    """An iterator of batches (dicts of tensors) over songs of a token stream.

    ``tokens(i)``, ``bars(i)``, ``positions(i)`` give piece ``i``'s arrays (``TokenStreams``
    methods); ``pieces`` are the piece numbers to play, ``label_tokens[j]`` the label token id
    of ``pieces[j]``. ``loop=False`` plays every piece once (validation), ``loop=True`` forever.
    """

    def __init__(
        self,
        streams,
        pieces: list[int],
        label_tokens: list[int],
        *,
        batch_size: int,
        seq_len: int,
        pad_id: int = 0,
        seed: int = 0,
        loop: bool = True,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        fim_rate: float = 0.0,
        fim_tokens: tuple[int, int] | None = None,
        fim_max_bars: int = 8,
    ):
        if seq_len < 2:
            raise ValueError("seq_len must be at least 2 (a label token and one song token)")
        if not pieces:
            raise ValueError("no pieces to stream")
        self.streams = streams
        self.pieces = np.asarray(pieces)
        self.label_tokens = np.asarray(label_tokens)
        self.lengths = np.asarray([len(streams.piece(int(p))) for p in self.pieces])
        self.B, self.T, self.pad_id = batch_size, seq_len, pad_id
        self.seed, self.loop, self.shuffle = seed, loop, shuffle
        self.rank, self.world_size = rank, world_size
        if fim_rate > 0 and fim_tokens is None:
            raise ValueError("fim_rate > 0 needs the model's fim_tokens (suffix, middle)")
        self.fim_rate, self.fim_tokens, self.fim_max_bars = float(fim_rate), fim_tokens, int(fim_max_bars)
        self.rows = [_Row() for _ in range(batch_size)]
        self._lists: dict[tuple[int, int], np.ndarray] = {}
        self.batches = 0
        for b, row in enumerate(self.rows):  # a finite stream with fewer pieces than rows
            row.done = len(self._row_list(b, 0)) == 0

    # --- which pieces a row plays -------------------------------------------------------------

    def _row_list(self, b: int, epoch: int) -> np.ndarray:
        """Positions (into ``self.pieces``) that row ``b`` of this process plays in ``epoch``."""
        key = (b, epoch)
        if key not in self._lists:
            n_rows = self.B * self.world_size
            order = np.arange(len(self.pieces))
            if self.shuffle:
                order = np.random.default_rng(self.seed + epoch).permutation(order)
            if len(order) < n_rows and self.loop:  # training: repeat pieces so every row plays
                order = np.resize(order, n_rows)
            self._lists = {k: v for k, v in self._lists.items() if k[1] >= epoch - 1}
            self._lists[key] = order[self.rank * self.B + b :: n_rows]
        return self._lists[key]

    def _advance(self, row: _Row, b: int) -> None:
        """Move ``row`` past one segment of its current piece."""
        j = self._row_list(b, row.epoch)[row.k]
        row.offset += self.T - 1
        if row.offset + 1 >= self.lengths[j]:  # every target of the piece has been seen
            row.offset = 0
            row.k += 1
            if row.k >= len(self._row_list(b, row.epoch)):
                if self.loop:
                    row.epoch, row.k = row.epoch + 1, 0
                else:
                    row.done = True

    def skip(self, n: int) -> None:
        """Fast-forward over ``n`` batches without reading any tokens."""
        for _ in range(n):
            for b, row in enumerate(self.rows):
                if not row.done:
                    self._advance(row, b)
            self.batches += 1

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [_Row(done=len(self._row_list(b, 0)) == 0) for b in range(self.B)]
        self.batches = 0
        self.skip(int(state["batches"]))

    # --- batches ----------------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if all(row.done for row in self.rows):
            raise StopIteration
        B, T = self.B, self.T
        ids = np.full((B, T), self.pad_id, np.int64)
        targets = np.full((B, T), IGNORE, np.int64)
        bars = np.zeros((B, T), np.int64)
        positions = np.zeros((B, T), np.int64)
        reset = np.zeros(B, bool)
        label = np.full(B, -1, np.int64)
        for b, row in enumerate(self.rows):
            if row.done:
                reset[b] = True  # an idle row holds no memory
                continue
            j = self._row_list(b, row.epoch)[row.k]
            p = int(self.pieces[j])
            o = row.offset
            reset[b] = o == 0
            tok = self.streams.piece(p)[o : o + T]
            n = len(tok)
            ids[b, 0] = self.label_tokens[j]
            ids[b, 1:n] = tok[: T - 1][: n - 1] if n > 1 else []
            targets[b, 1:n] = tok[1:n]
            bar = self.streams.bars(p)[o : o + T]
            pos = self.streams.positions(p)[o : o + T]
            bars[b, 0], bars[b, 1:n] = bar[0], bar[: n - 1]
            positions[b, 1:n] = pos[: n - 1]
            if self.fim_rate > 0 and n == T:
                rng = np.random.default_rng([self.seed, self.batches, self.rank * B + b])
                cut = fim_cut(bar[: T - 3], rng, self.fim_max_bars) if rng.random() < self.fim_rate else None
                if cut is not None:
                    row_ids, row_targets, row_bars, row_pos = fim_arrange(
                        tok[: T - 3], bar[: T - 3], pos[: T - 3], cut, self.fim_tokens)
                    ids[b, 1:], targets[b, 1:], bars[b, 1:], positions[b, 1:] = row_ids, row_targets, row_bars, row_pos
                    bars[b, 0] = row_bars[0]  # the label takes the bar of the input after it (SUFFIX's)
            label[b] = j
            self._advance(row, b)
        self.batches += 1
        return {
            "ids": torch.from_numpy(ids),
            "targets": torch.from_numpy(targets),
            "bars": torch.from_numpy(bars),
            "positions": torch.from_numpy(positions),
            "reset": torch.from_numpy(reset),
            "piece": torch.from_numpy(label),  # position in ``pieces`` of each row's song, -1 idle
        }

    def batches_once(self) -> int:
        """How many batches this process's rows take to play every piece once (exact for a
        finite stream from its start: the row with the most segments sets it)."""
        seg = np.maximum(np.ceil((self.lengths - 1) / (self.T - 1)), 1).astype(np.int64)
        return int(max((seg[self._row_list(b, 0)].sum() for b in range(self.B)), default=0))

    def batches_per_epoch(self) -> int:
        """About how many batches one pass over every piece takes (for schedules and logs)."""
        segments = np.ceil((self.lengths - 1) / (self.T - 1)).sum()
        return max(1, int(np.ceil(segments / (self.B * self.world_size))))


def fim_cut(bars: np.ndarray, rng: np.random.Generator, max_bars: int = 8, *, exact: int | None = None
            ) -> tuple[int, int] | None:
    """Two bar starts ``a < c`` of a token window (indices where the bar changes; ``a >= 1``,
    ``c <= len - 1``), 1 to ``max_bars`` bar starts apart (``exact``: that many), drawn with
    ``rng``; None when the window holds too few bar starts."""
    starts = np.flatnonzero(np.diff(np.asarray(bars)) != 0) + 1
    starts = starts[starts < len(bars) - 1]
    gap = 1 if exact is None else int(exact)
    if len(starts) < gap + 1:
        return None
    i = int(rng.integers(0, len(starts) - gap))
    j = i + gap if exact is not None else int(rng.integers(i + 1, min(i + max_bars, len(starts) - 1) + 1))
    return int(starts[i]), int(starts[j])


def fim_arrange(song: np.ndarray, bars: np.ndarray, positions: np.ndarray, cut: tuple[int, int],
                fim_tokens: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, targets, bars, positions)`` of ``len(song) + 2`` inputs: ``song`` (tokens of a
    window, with their bars and positions) cut at ``cut = (a, c)`` and arranged as ``[SUFFIX,
    song[c:], MIDDLE, song[:a], song[a:c]]`` (the module doc gives the targets; the label token
    that starts a segment is not included). The middle's inputs and targets are the last
    ``c - a`` of the row."""
    a, c = cut
    s = np.asarray(song, np.int64)
    n = len(s)
    if not 0 < a < c < n:
        raise ValueError(f"a fill-in-the-middle cut needs 0 < a < c < {n}, got {cut}")
    suf, mid = fim_tokens
    order = np.concatenate([[-1], np.arange(c, n), [-2], np.arange(0, c)])
    ids = np.where(order >= 0, s[np.maximum(order, 0)], np.where(order == -1, suf, mid))
    tgt = np.full(n + 2, IGNORE, np.int64)
    tgt[0] = s[c]  # SUFFIX -> first suffix token
    tgt[1 : n - c] = s[c + 1 :]  # the suffix (its last token predicts nothing)
    m = n - c + 1  # the MIDDLE marker
    tgt[m : m + c + 1] = s[: c + 1]  # MIDDLE -> s[0], then prefix and middle their next token, up to s[c]
    b = np.asarray(bars, np.int64)
    p = np.asarray(positions, np.int64)
    at = np.where(order >= 0, order, np.where(order == -1, c, 0))
    out_bars = b[at]
    out_pos = np.where(order >= 0, p[np.maximum(order, 0)], 0)
    return ids.astype(np.int64), tgt, out_bars, out_pos


class SongData:
    """Which stream pieces are in which split, and each piece's label index (None: unlabelled)."""

    def __init__(self, corpus: Corpus, streams):
        rows = {r["id"]: r for r in corpus.pieces}
        self.labels: list[str] = corpus.labels
        index = {name: k for k, name in enumerate(self.labels)}
        self.split: dict[str, list[int]] = {}
        self.label_of: list[int | None] = []
        for i, piece_id in enumerate(streams.ids):
            row = rows.get(piece_id)
            self.label_of.append(index.get(row["label"]) if row else None)
            if row is not None and row["split"]:
                self.split.setdefault(row["split"], []).append(i)
