"""Shared test helpers: where the real MIDI fixtures live, and small scores the tests write."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from symusic import Note, Score, Tempo, TimeSignature, Track

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "midi"


def labelled_folder(root: Path, files_by_label: dict[str, list[Path]]) -> Path:
    """Copy real files into ``root/LABEL/`` folders (a plain labelled corpus); returns ``root``."""
    for label, files in files_by_label.items():
        (root / label).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / label / f.name)
    return root


def tokenize(corpus_dir: Path) -> Path:
    """Write a prepared corpus's token streams with plain REMI (what ``partita data tokenize`` does
    without a trained tokenizer); returns the corpus folder."""
    from partita.data.corpus import Corpus
    from partita.represent.tokens import make_tokenizer, write_token_streams

    corpus = Corpus(corpus_dir)
    write_token_streams(((r["id"], corpus.score(i)) for i, r in enumerate(corpus.pieces)), make_tokenizer(),
                        corpus.path / "tokens")
    return Path(corpus_dir)


def make_score(
    notes: list[tuple[int, int, int, int]],
    *,
    tpq: int = 480,
    qpm: float = 120.0,
    time_signature: tuple[int, int] = (4, 4),
    program: int = 0,
    is_drum: bool = False,
) -> Score:
    """A one-track score from (onset_tick, duration_tick, pitch, velocity) tuples."""
    score = Score(tpq)
    arr = np.array(notes, dtype=np.int64).reshape(-1, 4)
    track = Track("part", program, is_drum)
    track.notes = Note.from_numpy(
        time=arr[:, 0].astype(np.int32),
        duration=arr[:, 1].astype(np.int32),
        pitch=arr[:, 2].astype(np.int8),
        velocity=arr[:, 3].astype(np.int8),
    )
    score.tracks.append(track)
    score.tempos.append(Tempo(0, qpm))
    score.time_signatures.append(TimeSignature(0, *time_signature))
    return score


@pytest.fixture
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"the MIDI fixtures are missing: expected them at {FIXTURES}")
    return FIXTURES


class FakeStreams:
    """Token streams of pieces with the given lengths: 4 tokens a bar, piece i's tokens 1000*i + k."""

    def __init__(self, lengths):
        self.data = [np.arange(n) + 1000 * i for i, n in enumerate(lengths)]

    def piece(self, i):
        return self.data[i]

    def bars(self, i):
        return np.arange(len(self.data[i])) // 4

    def positions(self, i):
        return np.arange(len(self.data[i])) % 4
