"""A chord tagger: the chord under each beat of a melody, learnt from POP909's annotations.

``ChordTagger`` reads a melody beat by beat (``beat_features``: per pitch class, how long it sounds
in the beat and in its first half, and whether a note of it starts on the beat; and whether the
beat is silent) with a bidirectional GRU, so every beat's chord is chosen knowing the whole
melody, before and after it, and gives a distribution over ``CHORDS``: 12 roots times the
``QUALITIES`` (major, minor, dominant, major and minor sevenths, sus2, sus4, diminished,
augmented; a rarer label is read as its nearest, ``label_class``). It is trained on every
transposition of the training songs (``partita train chords``), so it needs no key.

``decode_segments`` turns the beats' distributions into one chord a half bar: the path of
chords maximising the summed log probability of the beats of each segment less ``change`` for
every change (Viterbi). Where the file's bar lines say nothing (POP909 writes bars of one beat)
the half bars are found too: of the two ways to pair the beats, the one the tagger finds
likelier (``decode_half_bars``). On the validation songs one chord a half bar, so found, fits
the annotated chords as well as one a beat (0.677 against 0.672) without a chord that lasts a
single beat.

Why a tagger and not the GPT for harmony: the GPT fine-tuned to write POP909's piano under its
melody learnt the texture but hardly listened (the melody was worth 0.1 nats a token to it) and
chose chords below a rule's; chord labels are a far smaller target that 800 songs can teach
(docs/accompany.md has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from partita.models.config import ModelConfig

__all__ = ["FEATURES", "QUALITIES", "ChordTagger", "ChordTaggerConfig", "beat_features", "chord_tones", "decode", "decode_half_bars",
           "decode_segments", "half_bar_bounds", "label_class"]

#: Chord qualities the tagger tells apart: intervals above the root.
QUALITIES = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10),
    "sus2": (0, 2, 7), "sus4": (0, 5, 7), "dim": (0, 3, 6), "aug": (0, 4, 8),
}
#: POP909's (Harte) qualities read as the nearest of ``QUALITIES``.
_NEAREST = {"hdim7": "dim", "dim7": "dim", "maj6": "maj", "min6": "min", "minmaj7": "min", "9": "7", "maj9": "maj7",
            "min9": "min7", "11": "7", "min11": "min7", "13": "7", "maj13": "maj7", "min13": "min7", "5": "maj", "1": "maj", "": "maj"}
#: Features a beat: duration per pitch class in the beat (beats), in its first half, an onset on
#: the beat per pitch class (0/1), and a silent beat (0/1).
FEATURES = 37


@dataclass
class ChordTaggerConfig(ModelConfig):
    kind = "chord tagger"
    qualities: list = field(default_factory=lambda: list(QUALITIES))
    d_hidden: int = 128
    n_layer: int = 2
    dropout: float = 0.2
    change: float = 0.0  # decode's cost of a chord change (log probability), chosen on validation songs
    outside: float = 0.0  # weight of the share of the melody's duration outside a chord, chosen on validation songs

    @property
    def n_chords(self) -> int:
        return 12 * len(self.qualities)


def label_class(label: str, qualities: list) -> int:
    """The class (``root * len(qualities) + quality``) of a Harte label as POP909 writes it (``C:maj``,
    ``A:min7/b7``, ``D:sus4(b7)``; the bass and added tones are left out); -1 for no chord (``N``)
    or a label it cannot read."""
    from partita.data.accompany import harte_parts

    parts = harte_parts(label)
    if parts is None:
        return -1
    root, quality = parts[0], parts[1] or ""
    quality = quality if quality in qualities else _NEAREST.get(quality)
    if quality not in qualities:
        return -1
    return root * len(qualities) + qualities.index(quality)


def chord_tones(c: int, qualities: list) -> tuple[int, tuple[int, ...]]:
    """``(root pitch class, pitch classes)`` of class ``c``."""
    root, q = divmod(int(c), len(qualities))
    return root, tuple((root + i) % 12 for i in QUALITIES[qualities[q]])


def beat_features(notes: dict, tpq: int, phase: int, n_beats: Optional[int] = None) -> np.ndarray:
    """``[beats, FEATURES]`` of a melody (a symusic note dict in ticks) on the grid of beats
    ``phase + k * tpq`` (``partita.generation.accompany.beat_phase``)."""
    on = np.asarray(notes["time"], np.int64)
    off = on + np.maximum(np.asarray(notes["duration"], np.int64), 1)
    pc = np.asarray(notes["pitch"], np.int64) % 12
    if n_beats is None:
        n_beats = int((off.max() - phase - 1) // tpq) + 1 if len(on) else 0
    n_beats = max(int(n_beats), 0)
    dur = np.zeros((n_beats, 12), np.float32)
    half = np.zeros((n_beats, 12), np.float32)
    onset = np.zeros((n_beats, 12), np.float32)
    for t0, t1, p in zip(on, off, pc):
        k0, k1 = max(int((t0 - phase) // tpq), 0), min(int((t1 - 1 - phase) // tpq), n_beats - 1)
        for k in range(k0, k1 + 1):
            a = phase + k * tpq
            dur[k, p] += (min(t1, a + tpq) - max(t0, a)) / tpq
            half[k, p] += max(min(t1, a + tpq // 2) - max(t0, a), 0) / tpq
        k = int((t0 - phase) // tpq)
        if 0 <= k < n_beats and abs(t0 - (phase + k * tpq)) < tpq // 8:
            onset[k, p] = 1.0
    silent = (dur.sum(axis=1, keepdims=True) == 0).astype(np.float32)
    return np.concatenate([dur, half, onset, silent], axis=1)


class ChordTagger(nn.Module):
    """Beat features ``[B, T, FEATURES]`` -> chord logits ``[B, T, n_chords]`` (module doc)."""

    family = "chords"
    config_class = ChordTaggerConfig

    def __init__(self, config: ChordTaggerConfig):
        super().__init__()
        self.config = c = config
        self.inp = nn.Linear(FEATURES, c.d_hidden)
        self.gru = nn.GRU(c.d_hidden, c.d_hidden, num_layers=c.n_layer, batch_first=True, bidirectional=True,
                          dropout=c.dropout if c.n_layer > 1 else 0.0)
        self.out = nn.Linear(2 * c.d_hidden, c.n_chords)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(torch.relu(self.inp(x)))
        return self.out(h)

    @torch.no_grad()
    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """``[T, n_chords]`` log probabilities of every beat's chord."""
        if len(features) == 0:
            return np.zeros((0, self.config.n_chords), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(features, np.float32))[None]
        return torch.log_softmax(self(x)[0].float(), dim=-1).numpy()

    def scores(self, features: np.ndarray, outside: Optional[float] = None) -> np.ndarray:
        """``[T, n_chords]``: ``log_probs`` less ``outside`` (default the config's) times the share
        of each beat's melody duration that is not a tone of the chord: a check by the notes
        themselves on what the tagger learnt from POP909's context, which keeps it to the
        melody where that context misleads it (an arpeggio heard as its relative minor)."""
        outside = self.config.outside if outside is None else outside
        lp = self.log_probs(features)
        if not outside or len(features) == 0:
            return lp
        tones = np.zeros((self.config.n_chords, 12), np.float32)
        for c in range(self.config.n_chords):
            tones[c, list(chord_tones(c, self.config.qualities)[1])] = 1.0
        dur = np.asarray(features[:, :12], np.float32)
        share = dur @ (1.0 - tones).T / np.maximum(dur.sum(axis=1, keepdims=True), 1e-9)
        return lp - float(outside) * share


def decode_segments(log_probs: np.ndarray, bounds: np.ndarray, change: float) -> tuple[np.ndarray, float]:
    """One chord a segment (beats ``bounds[i]`` to ``bounds[i + 1]``): the path maximising the
    segments' summed log probabilities less ``change`` a change; ``(chord of every beat, the
    path's score)``."""
    bounds = np.asarray(bounds, np.int64)
    if len(bounds) < 2:
        return np.zeros(len(log_probs), np.int64), 0.0
    sums = np.stack([log_probs[a:b].sum(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    path = decode(sums, change)
    score = float(sums[np.arange(len(path)), path].sum() - change * np.count_nonzero(np.diff(path)))
    return np.repeat(path, np.diff(bounds)), score


def half_bar_bounds(n_beats: int, length: int = 2) -> list[np.ndarray]:
    """Segment bounds of ``length`` beats at every offset (0 .. length - 1) over ``n_beats`` beats:
    the candidates for a file whose bar lines say nothing (POP909's bars of one beat)."""
    out = []
    for off in range(length):
        cuts = [0] + list(range(off, n_beats, length)) + [n_beats]
        out.append(np.unique(np.asarray(cuts, np.int64)))
    return out


def decode_half_bars(log_probs: np.ndarray, change: float, length: int = 2) -> np.ndarray:
    """``decode_segments`` over ``length``-beat segments at the offset the tagger finds likeliest
    (a chord change on the half bar's first beat)."""
    best = max((decode_segments(log_probs, b, change) for b in half_bar_bounds(len(log_probs), length)), key=lambda r: r[1])
    return best[0]


def decode(log_probs: np.ndarray, change: float) -> np.ndarray:
    """The chord class of every beat: the path maximising the sum of its beats' log probabilities
    less ``change`` a change (Viterbi)."""
    T, C = log_probs.shape
    if T == 0:
        return np.zeros(0, np.int64)
    score = log_probs[0].astype(np.float64).copy()
    back = np.zeros((T, C), np.int64)
    for t in range(1, T):
        best = int(np.argmax(score))
        stay, move = score, score[best] - change
        back[t] = np.where(stay >= move, np.arange(C), best)
        score = np.maximum(stay, move) + log_probs[t]
    path = np.zeros(T, np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(T - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path
