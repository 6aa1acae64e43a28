"""A chorale harmonizer: a hidden Markov model of Bach's chords with a voice-leading search.

Given a soprano, ``ChoraleHarmony`` writes alto, tenor and bass, one chord a beat. It is the
model after Allan & Williams' "Harmonising chorales by probabilistic inference" (NIPS 2004): the
hidden state is the chord of a beat (a root relative to the key and a quality: major, minor,
diminished triads and the common sevenths), the observation the soprano's pitch class, and its
tables are counted from Bach's own four-part settings (music21's chorales, ``partita train
chorale``): how a chord follows a chord, which soprano tone a chord carries, which chord tone its
bass takes, and the range of every voice. The voices are then found jointly with the chords: every
beat's states are (chord, bass, tenor, alto) voicings under the soprano in the voices' ranges,
and a beat-to-beat cost adds the classroom rules Bach followed to the chord model's
``-log`` probabilities: no parallel fifths or octaves between any two voices, no voice crossing
or overlap, small motion in the inner voices, complete chords, no doubled leading tone.
``harmonize`` samples one path of that chain by forward filtering and backward sampling
(``temperature`` scales every cost; 0 takes the best path, Viterbi's), so seeds give different
harmonizations that keep the rules.

The tables are buffers of an ``nn.Module`` so that the model is a bundle like every other
(safetensors weights, ``config.json``, ``card.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from partita.models.config import ModelConfig

__all__ = ["QUALITIES", "VOICES", "ChoraleHarmony", "HarmonyConfig", "chord_label", "voice_leading_errors"]

#: Chord qualities: intervals above the root (the fifth may be left out of a voicing).
QUALITIES = {
    "M": (0, 4, 7), "m": (0, 3, 7), "d": (0, 3, 6), "7": (0, 4, 7, 10), "m7": (0, 3, 7, 10),
    "h7": (0, 3, 6, 10), "M7": (0, 4, 7, 11), "d7": (0, 3, 6, 9),
}
VOICES = ("Soprano", "Alto", "Tenor", "Bass")
MODES = ("major", "minor")


@dataclass
class HarmonyConfig(ModelConfig):
    """The chord vocabulary (``chords``: ``[root relative to the tonic, quality]``) and the voices'
    ranges (``ranges``: ``[low, high]`` MIDI pitch for alto, tenor and bass), both counted from the
    training chorales."""

    kind = "chorale harmony"
    chords: list = field(default_factory=list)
    ranges: list = field(default_factory=lambda: [[53, 74], [47, 69], [36, 62]])
    smoothing: float = 0.5


def chord_label(pcs: set[int] | frozenset[int], bass: Optional[int] = None) -> tuple[int, str]:
    """``(root pitch class, quality)`` of the template that best covers the pitch classes ``pcs``
    (two points a tone shared, minus one a tone outside it, minus one a template tone missing,
    half for a missing fifth; a tenth for the root in the bass; ties go to the smaller chord)."""
    best = (-1e9, 0, "M")
    for root in range(12):
        for q, intervals in QUALITIES.items():
            tones = {(root + i) % 12 for i in intervals}
            missing = tones - set(pcs)
            s = 2.0 * len(tones & set(pcs)) - len(set(pcs) - tones)
            s -= sum(0.5 if (t - root) % 12 == 7 else 1.0 for t in missing)
            s += 0.1 * (bass is not None and bass % 12 == root) - 0.01 * len(intervals)
            if s > best[0] + 1e-9:
                best = (s, root, q)
    return best[1], best[2]


class ChoraleHarmony(nn.Module):
    """The tables (``log`` probabilities, per mode): ``start`` [2, C], ``trans`` [2, 2, C, C] (the
    chord after a chord, on a beat inside a bar or on one that begins a bar), ``end`` [2, C],
    ``emit`` [2, C, 24] (the soprano's pitch class relative to the tonic given the chord, plus 12
    where a note of two beats or more begins: a phrase's end), ``bass`` [2, C, 12] (the bass's)."""

    family = "harmony"
    config_class = HarmonyConfig

    def __init__(self, config: HarmonyConfig):
        super().__init__()
        self.config = config
        c = max(len(config.chords), 1)
        for name, shape in (("start", (2, c)), ("trans", (2, 2, c, c)), ("end", (2, c)), ("emit", (2, c, 24)), ("bass", (2, c, 12))):
            self.register_buffer(name, torch.zeros(shape))

    # ------------------------------------------------------------------ counting

    @classmethod
    def from_counts(cls, config: HarmonyConfig, counts: dict[str, np.ndarray]) -> "ChoraleHarmony":
        """Tables from counts (same shapes as the buffers), smoothed by ``config.smoothing``."""
        model = cls(config)
        a = float(config.smoothing)
        for name in ("start", "trans", "end", "emit", "bass"):
            x = np.asarray(counts[name], np.float64) + a
            getattr(model, name).copy_(torch.from_numpy(np.log(x / x.sum(axis=-1, keepdims=True))).float())
        return model

    def forward(self, *args: Any) -> Any:  # the tables are read by ``harmonize``
        raise TypeError("ChoraleHarmony is not called: use partita.generation.chorale.harmonize")


def voice_leading_errors(voices: np.ndarray) -> dict[str, int]:
    """Counts over a [beats, 4] array of pitches (soprano first; -1 where a voice rests) of
    parallel fifths and octaves (the same perfect interval, fifth or octave/unison, between two
    voices that both move, in the same direction, from one beat to the next), beats with a voice
    crossing (a lower voice above a higher one) and beats counted (every voice sounding)."""
    v = np.asarray(voices, np.int64)
    fifths = octaves = crossing = 0
    sounding = (v >= 0).all(axis=1)
    for k in range(len(v)):
        if not sounding[k]:
            continue
        if any(v[k, i] < v[k, i + 1] for i in range(3)):
            crossing += 1
        if k + 1 >= len(v) or not sounding[k + 1]:
            continue
        for i in range(4):
            for j in range(i + 1, 4):
                a, b = v[k, i] - v[k, j], v[k + 1, i] - v[k + 1, j]
                di, dj = v[k + 1, i] - v[k, i], v[k + 1, j] - v[k, j]
                if di == 0 or dj == 0 or np.sign(di) != np.sign(dj) or a < 0 or b < 0:
                    continue
                if a % 12 == 7 and b % 12 == 7:
                    fifths += 1
                elif a % 12 == 0 and b % 12 == 0:
                    octaves += 1
    return {"parallel_fifths": fifths, "parallel_octaves": octaves, "crossing": crossing, "beats": int(sounding.sum())}
