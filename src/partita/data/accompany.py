"""Accompaniment data: a given track (the melody) and the tracks written under it, by windows of bars.

One layout serves training, evaluation and generation (``partita train gpt --accompany
MELODY:PIANO``, ``partita accompany``). Each track is tokenised on its own with the model's
tokenizer (``partita.generation.accompany.track_tokens``: the track alone, as
``partita.edit.prompt_view`` sees it), so every token
keeps its real bar and position in bar. A window of bars ``[a, b)`` is laid out with the
fill-in-the-middle markers of ``GPT.fill_token``::

    [label, SUFFIX, given[a:b], MIDDLE, written[a:b]]

The given track's bars come first, whole, so every written token sees the melody it sounds
under, before and after it in the window (what a pianist reads on the page); the written part
after MIDDLE is a plain continuation, so a model that continues piano music (``--init
gpt-piano``) starts from what it knows, and its last token predicts the first token of bar ``b``
(the bar line that ends the window: the sampler's bar stop). Only the written tokens are
targets; the melody is given, never predicted. Why this and not anticipation-style interleaving
or MMM-style track infilling: it needs no new tokens (the FIM markers exist), the sampler's
``FillPrompt`` and bar stop run it unchanged, and a melody of any length is accompanied window by
window, the written bars of the previous window kept as the start of the next one (``PREFIX_BARS``).

POP909 songs are split by song number (``song_split``): about 10% test, 5% validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from partita.data.streams import IGNORE
from partita.errors import PartitaError

__all__ = [
    "PREFIX_BARS",
    "WINDOW_BARS",
    "AccompanyStream",
    "SongTracks",
    "chord_pitch_classes",
    "parse_tracks",
    "read_chords",
    "song_split",
    "song_files",
    "window_layout",
]

#: Bars of a training window; generation writes ``WINDOW_BARS - PREFIX_BARS`` new bars a window.
WINDOW_BARS = 8
#: Written bars of the previous window kept at the start of the next (the accompaniment's memory).
PREFIX_BARS = 4


def parse_tracks(text: str) -> tuple[str, str]:
    """``"MELODY:PIANO"`` -> ``("MELODY", "PIANO")``: the given track and the written one, by name."""
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 2 or not all(parts):
        raise PartitaError(f"--accompany takes GIVEN:WRITTEN track names, like MELODY:PIANO, not {text!r}")
    return parts[0], parts[1]


def song_split(song: str) -> str:
    """The split of a song by its number (POP909 folders ``001``...): ``test`` when it ends in 9
    (about 10%), ``valid`` when it is 4 mod 20 (5%), else ``train``; songs without a number by a
    stable hash of the name."""
    m = re.search(r"(\d+)", Path(song).name)
    n = int(m.group(1)) if m else int.from_bytes(Path(song).name.encode()[:8].ljust(8, b"\0"), "little") % 1000
    if n % 10 == 9:
        return "test"
    if n % 20 == 4:
        return "valid"
    return "train"


def song_files(folder: str | Path) -> list[Path]:
    """The MIDI files of a corpus folder (POP909: ``NNN/NNN.mid``; any ``*.mid`` below it), sorted."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PartitaError(f"{folder}: not a folder of MIDI files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    if not files:
        raise PartitaError(f"{folder}: no .mid files")
    return files


@dataclass
class SongTracks:
    """One song's given and written tracks as tokens (each ``(ids, bars, positions)``)."""

    song: str
    given: tuple[np.ndarray, np.ndarray, np.ndarray]
    written: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def n_bars(self) -> int:
        return int(max(self.given[1].max(initial=0), self.written[1].max(initial=0))) + 1


def _span(bars: np.ndarray, a: int, b: int) -> tuple[int, int]:
    return int(np.searchsorted(bars, a, side="left")), int(np.searchsorted(bars, b, side="left"))


def window_layout(given, written, a: int, b: int, fill_tokens: tuple[int, int], *, written_end: Optional[int] = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, targets, bars, positions)`` of bars ``[a, b)`` laid out as the module doc says
    (without the label). ``written`` tokens are shown up to bar ``written_end`` (default ``b``:
    the whole window, for training; generation shows the bars already written). A written token's
    target is the next written token, the last one's the first token of bar ``b`` (if any)."""
    gi, gb, gp = given
    wi, wb, wp = written
    g0, g1 = _span(gb, a, b)
    w0, w1 = _span(wb, a, b if written_end is None else written_end)
    suf, mid = fill_tokens
    ids = np.concatenate([[suf], gi[g0:g1], [mid], wi[w0:w1]]).astype(np.int64)
    bar_of_written = int(wb[w0]) if w0 < len(wb) else a
    bars = np.concatenate([[int(gb[g0]) if g0 < g1 else a], gb[g0:g1], [bar_of_written if w0 < w1 else a], wb[w0:w1]])
    positions = np.concatenate([[0], gp[g0:g1], [0], wp[w0:w1]])
    targets = np.full(len(ids), IGNORE, np.int64)
    m = 1 + (g1 - g0)  # the MIDDLE marker
    nxt = wi[w0 : w1 + 1]
    targets[m : m + len(nxt)] = nxt  # MIDDLE -> written[w0], ..., the last one -> written[w1] (bar b's first token)
    return ids, targets, bars.astype(np.int64), positions.astype(np.int64)


class AccompanyStream:
    """Batches (``ids``, ``targets``, ``bars``, ``positions``, ``reset``) of accompaniment windows,
    as ``SongStream`` gives them to ``GPTModule`` (``reset`` is all True: a window is a whole
    example, no memory carries over). Training (``loop``): windows of ``WINDOW_BARS`` bars at a
    random start bar of a random song, drawn from ``(seed, batch)``, so ``skip(n)`` resumes exactly;
    a window too long for ``seq_len`` loses bars from its end. Validation: every song's windows at
    bars 0, 8, 16, ... once, in order."""

    def __init__(self, songs: list[SongTracks], *, batch_size: int, seq_len: int, label_id: int, pad_id: int,
                 fill_tokens: tuple[int, int], seed: int = 0, loop: bool = True, bars: int = WINDOW_BARS,
                 max_windows: Optional[int] = None):
        if not songs:
            raise PartitaError("no songs with both tracks for this split")
        self.songs, self.B, self.T = songs, int(batch_size), int(seq_len)
        self.label_id, self.pad_id, self.fill = int(label_id), int(pad_id), fill_tokens
        self.seed, self.loop, self.bars = int(seed), loop, int(bars)
        self.batches = 0
        self.fixed = None
        if not loop:
            self.fixed = [(i, a) for i, s in enumerate(songs) for a in range(0, s.n_bars, self.bars)]
            if max_windows is not None:
                step = max(1, len(self.fixed) // int(max_windows))
                self.fixed = self.fixed[::step][: int(max_windows)]

    def skip(self, n: int) -> None:
        self.batches += int(n)

    def __iter__(self):
        return self

    def _row(self, i: int, a: int):
        song = self.songs[i]
        for b in range(a + self.bars, a, -1):
            row = window_layout(song.given, song.written, a, b, self.fill)
            if len(row[0]) <= self.T - 1:
                return row
        return None

    def __next__(self) -> dict:
        B, T = self.B, self.T
        if self.loop:
            rng = np.random.default_rng([self.seed, self.batches])
            picks = []
            while len(picks) < B:
                i = int(rng.integers(len(self.songs)))
                a = int(rng.integers(max(1, self.songs[i].n_bars - self.bars // 2)))
                picks.append((i, a))
        else:
            start = self.batches * B
            if start >= len(self.fixed):
                raise StopIteration
            picks = self.fixed[start : start + B]
        ids = np.full((B, T), self.pad_id, np.int64)
        targets = np.full((B, T), IGNORE, np.int64)
        bars = np.zeros((B, T), np.int64)
        positions = np.zeros((B, T), np.int64)
        used = 1
        for r, (i, a) in enumerate(picks):
            row = self._row(i, a)
            if row is None:
                continue
            n = len(row[0])
            used = max(used, 1 + n)
            ids[r, 0] = self.label_id
            ids[r, 1 : 1 + n], targets[r, 1 : 1 + n] = row[0], row[1]
            bars[r, 0], bars[r, 1 : 1 + n], positions[r, 1 : 1 + n] = row[2][0], row[2], row[3]
        self.batches += 1
        return {
            "ids": torch.from_numpy(ids[:, :used].copy()),
            "targets": torch.from_numpy(targets[:, :used].copy()),
            "bars": torch.from_numpy(bars[:, :used].copy()),
            "positions": torch.from_numpy(positions[:, :used].copy()),
            "reset": torch.ones(B, dtype=torch.bool),
        }


# --------------------------------------------------------------------------- chord annotations

_DEGREES = {"1": 0, "2": 2, "3": 4, "4": 5, "5": 7, "6": 9, "7": 11, "9": 2, "11": 5, "13": 9}
_HARTE = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8), "sus2": (0, 2, 7), "sus4": (0, 5, 7),
    "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10), "minmaj7": (0, 3, 7, 11), "dim7": (0, 3, 6, 9),
    "hdim7": (0, 3, 6, 10), "maj6": (0, 4, 7, 9), "min6": (0, 3, 7, 9), "9": (0, 4, 7, 10, 2), "maj9": (0, 4, 7, 11, 2),
    "min9": (0, 3, 7, 10, 2), "11": (0, 4, 7, 10, 2, 5), "min11": (0, 3, 7, 10, 2, 5), "13": (0, 4, 7, 10, 2, 9),
    "maj13": (0, 4, 7, 11, 2, 9), "min13": (0, 3, 7, 10, 2, 9), "5": (0, 7), "1": (0,), "": (0, 4, 7),
}
_ROOTS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _degree(text: str) -> Optional[int]:
    m = re.fullmatch(r"([b#]*)(\d+)", text.strip())
    if not m or m.group(2) not in _DEGREES:
        return None
    return _DEGREES[m.group(2)] + m.group(1).count("#") - m.group(1).count("b")


def harte_parts(label: str) -> Optional[tuple[int, Optional[str], Optional[str], Optional[str]]]:
    """``(root pitch class, quality, added or left-out degrees, bass degree)`` of a Harte label as
    POP909 writes it (``Bb:maj/5`` -> ``(10, "maj", None, "5")``; the quality is None without a
    colon, as in ``C`` or ``C(1)``); None for no chord (``N``, ``X``) or a label it cannot read."""
    m = re.fullmatch(r"([A-G])([b#]*)(?::([^/(]*))?(?:\(([^)]*)\))?(?:/(.+))?", label.strip())
    if not m:
        return None
    return (_ROOTS[m.group(1)] + m.group(2).count("#") - m.group(2).count("b")) % 12, m.group(3), m.group(4), m.group(5)


def chord_pitch_classes(label: str) -> Optional[frozenset[int]]:
    """Pitch classes of a Harte chord label as POP909 writes them (``C:maj``, ``A:min7``,
    ``Bb:maj/5``, ``D:sus4(b7)``, ``G:7(*5)``); None for no chord (``N``, ``X``) or a label it
    cannot read."""
    parts = harte_parts(label)
    if parts is None:
        return None
    root, quality, added, bass = parts
    if (quality or "") not in _HARTE:
        return None
    pcs = set(_HARTE[quality or ""]) if quality is not None or not added else {0}
    for ext in (added or "").split(","):
        ext = ext.strip()
        if not ext:
            continue
        d = _degree(ext.lstrip("*"))
        if d is None:
            return None
        (pcs.discard if ext.startswith("*") else pcs.add)(d % 12)
    if bass:
        d = _degree(bass)
        if d is not None:
            pcs.add(d % 12)
    return frozenset((root + p) % 12 for p in pcs)


def read_chords(path: str | Path) -> list[tuple[float, float, Optional[frozenset[int]]]]:
    """``(start s, end s, pitch classes or None)`` of a POP909 ``chord_midi.txt``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows.append((float(parts[0]), float(parts[1]), chord_pitch_classes(parts[2])))
    return rows
