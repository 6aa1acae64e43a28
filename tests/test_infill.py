"""Infilling: the fill-in-the-middle arrangement of training segments, ``partita infill`` and its
Python function, span parsing, a tiny model trained with FIM, the shipped gpt-piano."""

from __future__ import annotations

import numpy as np
import pytest

from partita.data.streams import IGNORE, SongStream, fim_arrange, fim_cut


def test_fim_arrange_positions_tokens_and_loss_mask():
    song = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    bars = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pos = np.array([0, 5, 0, 5, 0, 5, 0, 5])
    SUF, MID = 100, 101
    ids, tgt, b, p = fim_arrange(song, bars, pos, (2, 6), (SUF, MID))
    # [prefix] SUFFIX [suffix] MIDDLE [middle]
    assert ids.tolist() == [10, 11, SUF, 16, 17, MID, 12, 13, 14, 15]
    # prefix and suffix predict their next token (the last of each nothing); the markers their
    # first token; the middle its next one, the last middle token the bar that ends the middle
    assert tgt.tolist() == [11, IGNORE, 16, 17, IGNORE, 12, 13, 14, 15, 16]
    # real bars and positions; a marker takes the bar of the token it announces
    assert b.tolist() == [0, 0, 3, 3, 3, 1, 1, 1, 2, 2]
    assert p.tolist() == [0, 5, 0, 0, 5, 0, 0, 5, 0, 5]
    with pytest.raises(ValueError):
        fim_arrange(song, bars, pos, (0, 6), (SUF, MID))


def test_fim_cut_is_bar_aligned():
    bars = np.repeat(np.arange(12), 5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, c = fim_cut(bars, rng, max_bars=3)
        assert bars[a] != bars[a - 1] and bars[c] != bars[c - 1]
        assert 1 <= bars[c] - bars[a] <= 3
    assert fim_cut(np.zeros(20, int), rng) is None


class _Streams:
    def __init__(self, lengths):
        self.data = [np.arange(n) + 1000 * i for i, n in enumerate(lengths)]

    def piece(self, i):
        return self.data[i]

    def bars(self, i):
        return np.arange(len(self.data[i])) // 4

    def positions(self, i):
        return np.arange(len(self.data[i])) % 4


def test_stream_rearranges_a_fraction_of_full_segments_deterministically():
    streams = _Streams([200, 150, 90])
    kw = dict(batch_size=2, seq_len=32, loop=True, fim_rate=0.5, fim_tokens=(9998, 9999), seed=3)
    a = [next(s) for s in [SongStream(streams, [0, 1, 2], [7, 8, 9], **kw)] for _ in range(12)]
    b = [next(s) for s in [SongStream(streams, [0, 1, 2], [7, 8, 9], **kw)] for _ in range(12)]
    assert all((x["ids"] == y["ids"]).all() for x, y in zip(a, b))
    rows = [(batch, r) for batch in a for r in range(2)]
    fim = [(batch, r) for batch, r in rows if (batch["ids"][r] == 9998).any()]
    assert 0 < len(fim) < len(rows)
    for batch, r in fim:
        ids, tgt = batch["ids"][r].numpy(), batch["targets"][r].numpy()
        i, j = int(np.flatnonzero(ids == 9998)[0]), int(np.flatnonzero(ids == 9999)[0])
        assert ids[0] in (7, 8, 9) and i < j
        song = np.concatenate([ids[1:i], ids[j + 1 :], ids[i + 1 : j]])  # prefix, middle, suffix
        assert (np.diff(song) == 1).all()  # a contiguous stretch of the song, every token once
        bars = batch["bars"][r].numpy()
        assert (bars[1:i] == song[: i - 1] % 1000 // 4).all()  # real bars of the prefix
        assert (bars[i + 1 : j] == ids[i + 1 : j] % 1000 // 4).all()  # and of the suffix
        assert tgt[j] == ids[j + 1] and tgt[-1] == ids[i + 1]  # MIDDLE -> middle[0]; the end -> suffix[0]
