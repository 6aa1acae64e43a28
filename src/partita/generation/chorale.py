"""Chorale harmonization: alto, tenor and bass under a soprano (``partita accompany --style chorale``).

The model is ``partita.models.harmony.ChoraleHarmony`` (a chord HMM counted from Bach's
chorales; see there). This module reads a soprano into beats, counts the tables from four-part
chorales (``count_chorales``, what ``partita train chorale`` runs), searches the voices
(``harmonize``) and writes them as three named tracks in the user's own ticks. It also holds
the naive baseline of ``partita eval accompany --style chorale`` (``rule_voices``: the first
diatonic triad that holds the soprano, in close position under it, the root in the bass).

A beat is a quarter note (a dotted quarter in 6/8, 9/8 and 12/8), on the grid of the soprano's
own onsets (``beat_phase``). The chord of a beat holds the soprano note sounding at its start;
the soprano's notes between beats are passing notes over it, as in Bach. Where the soprano rests,
the other voices rest too, and each phrase between rests is harmonized as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import symusic
from symusic import Score

from partita.errors import PartitaError
from partita.models.harmony import MODES, QUALITIES, VOICES, ChoraleHarmony, HarmonyConfig

__all__ = ["Beats", "beat_voices", "chorale_files", "chorale_voices", "count_chorales", "harmonize", "read_beats", "passing_notes", "rule_voices", "sounding_at",
           "soprano_key", "split_chorales", "train_harmony", "tune_split"]

#: The tones a chord's voicing must hold: its root, its third and (for a seventh chord) its seventh.
_REQUIRED = {q: (iv[0], iv[1]) + ((iv[3],) if len(iv) > 3 else ()) for q, iv in QUALITIES.items()}
PARALLEL_COST = 12.0  # a parallel fifth or octave between any two voices
SOPRANO_MEDIAN = 67  # about the median pitch of a Bach chorale's soprano (G4)


@dataclass
class Beats:
    """A melody on the beat grid: ``starts`` (ticks), ``pitch`` (the note sounding at each start,
    -1 in a rest), ``beat`` (ticks a beat), ``context``: 1 where a bar begins, plus 2 where a note
    of two beats or more starts (a phrase's end, in a chorale)."""

    starts: np.ndarray
    pitch: np.ndarray
    beat: int
    context: np.ndarray


def beat_length(score: Score) -> int:
    """Ticks of a beat: a quarter note, a dotted quarter in compound metres (6/8, 9/8, 12/8), an
    eighth in other x/8 metres."""
    tpq = int(score.ticks_per_quarter)
    if len(score.time_signatures) == 0:
        return tpq
    ts = score.time_signatures[0]
    if int(ts.denominator) <= 4:
        return tpq
    return 3 * tpq // 2 if int(ts.numerator) % 3 == 0 and int(ts.numerator) > 3 else tpq // 2


def sounding_at(notes: dict, ticks: np.ndarray) -> np.ndarray:
    """The pitch of the note sounding at each of ``ticks`` (the latest onset; -1 where none)."""
    out = np.full(len(ticks), -1, np.int64)
    if len(notes["time"]) == 0:
        return out
    order = np.argsort(notes["time"], kind="stable")
    on, off, pitch = notes["time"][order], (notes["time"] + notes["duration"])[order], notes["pitch"][order]
    k = np.searchsorted(on, ticks, side="right") - 1
    ok = (k >= 0) & (off[np.maximum(k, 0)] > ticks)
    out[ok] = pitch[k[ok]]
    return out


def read_beats(score: Score, track: int, *, phase_from: Optional[Iterable[int]] = None) -> Beats:
    """The melody of ``score.tracks[track]`` on its beat grid (module doc); ``phase_from``: the
    onsets that place the grid (default: the melody's own)."""
    from partita.generation.accompany import beat_phase

    from partita.io.timing import bar_starts

    notes = score.tracks[track].notes.numpy()
    beat = beat_length(score)
    if len(notes["time"]) == 0:
        return Beats(np.zeros(0, np.int64), np.zeros(0, np.int64), beat, np.zeros(0, np.int64))
    onsets = notes["time"] if phase_from is None else np.asarray(list(phase_from))
    phase = beat_phase(onsets, beat) if beat == int(score.ticks_per_quarter) else int(np.min(onsets)) % beat
    first = int(notes["time"].min())
    end = int((notes["time"] + notes["duration"]).max())
    start = phase + ((first - phase) // beat) * beat
    starts = np.arange(start, end, beat, dtype=np.int64)
    downbeat = np.isin(starts, bar_starts(score, end) + phase)
    order = np.argsort(notes["time"], kind="stable")
    on, dur = notes["time"][order], notes["duration"][order]
    k = np.minimum(np.searchsorted(on, starts), len(on) - 1)
    long = (on[k] == starts) & (dur[k] >= 2 * beat)
    return Beats(starts, sounding_at(notes, starts), beat, downbeat.astype(np.int64) + 2 * long.astype(np.int64))


# --------------------------------------------------------------------------- keys

def soprano_key(score: Score, track: int) -> tuple[int, str]:
    """``(tonic, mode)`` of a chorale from its soprano: the Krumhansl-Kessler correlation of its
    duration-weighted pitch classes, among the two keys of the file's key signature when it has
    one, with a bonus for the key whose tonic is the melody's last note (chorales end on it)."""
    from partita.generation.accompany import _KEY_MAJOR, _KEY_MINOR

    n = score.tracks[track].notes.numpy()
    hist = np.bincount(n["pitch"] % 12, weights=n["duration"].astype(float), minlength=12)
    keys = [(t, m) for t in range(12) for m in MODES]
    if len(score.key_signatures):
        major = (7 * int(score.key_signatures[0].key)) % 12
        keys = [(major, "major"), ((major + 9) % 12, "minor")]
    last = int(n["pitch"][np.argmax(n["time"])]) % 12 if len(n["time"]) else -1
    best = (-9.0, 0, "major")
    for tonic, mode in keys:
        profile = np.roll(_KEY_MAJOR if mode == "major" else _KEY_MINOR, tonic)
        r = float(np.corrcoef(hist, profile)[0, 1]) if hist.std() > 0 else 0.0
        r += 0.15 * (last == tonic)
        best = max(best, (r, tonic, mode))
    return best[1], best[2]


# --------------------------------------------------------------------------- learning

def chorale_voices(score: Score) -> Optional[list[int]]:
    """The four voices of a four-part chorale, highest (median pitch) first; None when the file
    does not have exactly four tracks with notes."""
    parts = [(float(np.median(t.notes.numpy()["pitch"])), i) for i, t in enumerate(score.tracks) if t.note_num() > 0 and not t.is_drum]
    if len(parts) != 4:
        return None
    return [i for _, i in sorted(parts, reverse=True)]


def beat_voices(score: Score, voices: list[int]) -> tuple[Beats, np.ndarray]:
    """The soprano's ``Beats`` and a [beats, 4] array of the pitches sounding at each (-1 in a rest)."""
    onsets = np.concatenate([score.tracks[i].notes.numpy()["time"] for i in voices])
    grid = read_beats(score, voices[0], phase_from=onsets)
    cols = [grid.pitch] + [sounding_at(score.tracks[i].notes.numpy(), grid.starts) for i in voices[1:]]
    return grid, np.stack(cols, axis=1)


def _label(pcs: set, bass: int, tonic: int, options: list[tuple[int, str]]) -> int:
    """Index into ``options`` (``(root relative to the tonic, quality)``) of the chord that best
    covers ``pcs`` (``partita.models.harmony.chord_label``'s score)."""
    best, arg = -1e9, 0
    for k, (rel, q) in enumerate(options):
        root = (tonic + rel) % 12
        tones = {(root + i) % 12 for i in QUALITIES[q]}
        missing = tones - pcs
        s = 2.0 * len(tones & pcs) - len(pcs - tones) - sum(0.5 if (t - root) % 12 == 7 else 1.0 for t in missing)
        s += 0.1 * (bass % 12 == root) - 0.01 * len(QUALITIES[q])
        if s > best + 1e-9:
            best, arg = s, k
    return arg


def tune_split(score: Score, voices: list[int], *, test: float = 0.15) -> str:
    """``"test"`` or ``"train"`` for a chorale, by its tune: the first 12 intervals of its soprano
    (repeated notes left out), so that Bach's several settings of one tune fall on one side."""
    import hashlib

    n = score.tracks[voices[0]].notes.numpy()
    p = n["pitch"][np.argsort(n["time"], kind="stable")].astype(np.int64)
    p = p[np.r_[True, p[1:] != p[:-1]]]
    key = " ".join(str(int(x)) for x in np.diff(p)[:12])
    return "test" if int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64 < test else "train"


def count_chorales(files: Iterable[str | Path], *, min_share: float = 0.002, progress: Any = None) -> tuple[HarmonyConfig, dict, dict]:
    """Count the tables of ``ChoraleHarmony`` from four-part chorale MIDI files: ``(config, counts,
    report)``; the chord vocabulary is every chord of at least ``min_share`` of the beats."""
    from partita.generation.accompany import estimate_key

    files = list(files)
    pieces, skipped = [], []
    for k, (f, score, voices) in enumerate(four_part(files, skipped)):
        grid, satb = beat_voices(score, voices)
        notes = [score.tracks[i].notes.numpy() for i in voices]
        tonic, mode = estimate_key(np.concatenate([n["pitch"] for n in notes]),
                                   np.concatenate([n["duration"] for n in notes]).astype(float))
        pieces.append((satb, grid.context, tonic, MODES.index(mode)))
        if progress is not None:
            progress(k + 1 + len(skipped), len(files))
    if not pieces:
        raise PartitaError("no four-part chorale among the files (four tracks with notes, one a voice)")
    every = [(rel, q) for rel in range(12) for q in QUALITIES]
    tally = np.zeros(len(every))
    for satb, _, tonic, _ in pieces:
        for row in satb[(satb >= 0).all(axis=1)]:
            tally[_label(set(int(p) % 12 for p in row), int(row[3]), tonic, every)] += 1
    keep = [every[k] for k in np.argsort(-tally, kind="stable") if tally[k] >= min_share * tally.sum()]
    c = len(keep)
    counts = {"start": np.zeros((2, c)), "trans": np.zeros((2, 2, c, c)), "end": np.zeros((2, c)),
              "emit": np.zeros((2, c, 24)), "bass": np.zeros((2, c, 12))}
    pitches: list[list[int]] = [[], [], []]
    beats = 0
    for satb, context, tonic, m in pieces:
        prev = None
        for k, row in enumerate(satb):
            if (row < 0).any():
                if prev is not None:
                    counts["end"][m, prev] += 1
                prev = None
                continue
            j = _label(set(int(p) % 12 for p in row), int(row[3]), tonic, keep)
            counts["emit"][m, j, (int(row[0]) - tonic) % 12 + 12 * (context[k] >= 2)] += 1
            counts["bass"][m, j, (int(row[3]) - tonic) % 12] += 1
            if prev is None:
                counts["start"][m, j] += 1
            else:
                counts["trans"][m, context[k] % 2, prev, j] += 1
            prev = j
            beats += 1
            for v in range(3):
                pitches[v].append(int(row[v + 1]))
        if prev is not None:
            counts["end"][m, prev] += 1
    ranges = [[int(np.percentile(p, 0.5)), int(np.percentile(p, 99.5))] for p in pitches]
    config = HarmonyConfig(chords=[[int(r), q] for r, q in keep], ranges=ranges)
    report = {"chorales": len(pieces), "skipped": skipped, "beats": beats, "chords": c,
              "modes": {mode: int(sum(1 for *_, m in pieces if m == i)) for i, mode in enumerate(MODES)}}
    return config, counts, report


def train_harmony(files: Iterable[str | Path], *, progress: Any = None) -> tuple[ChoraleHarmony, dict]:
    """``ChoraleHarmony`` counted from ``files`` and the report of ``count_chorales``."""
    config, counts, report = count_chorales(files, progress=progress)
    return ChoraleHarmony.from_counts(config, counts).eval(), report


# --------------------------------------------------------------------------- the search

def _states(model: ChoraleHarmony, s: int, context: int, tonic: int, m: int, move: int = 0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every voicing of a beat whose soprano is ``s``: ``(chord index [n], voices [n, 4] soprano
    first, static cost [n])``; ``move``: semitones the voices' ranges move (for a melody note
    too high or too low for them)."""
    emit, bass_lp = model.emit[m].numpy(), model.bass[m].numpy()
    (alo, ahi), (tlo, thi), (blo, bhi) = (np.asarray(model.config.ranges) + int(move)).tolist()
    lt = (tonic + 11) % 12
    chords, voicings, costs = [], [], []
    options = list(enumerate(model.config.chords))
    fits = [(j, rel, q) for j, (rel, q) in options if (s - tonic - rel) % 12 in {i % 12 for i in QUALITIES[q]}]
    for j, rel, q in fits or [(j, rel, q) for j, (rel, q) in options]:
        root = (tonic + rel) % 12
        pcs = {(root + i) % 12 for i in QUALITIES[q]}
        need = {(root + i) % 12 for i in _REQUIRED[q]}
        fifth = (root + 7) % 12 if 7 in QUALITIES[q] else None
        third = (root + QUALITIES[q][1]) % 12
        base = -float(emit[j, (s - tonic) % 12 + 12 * (context >= 2)])
        for b in range(blo, bhi + 1):
            if b % 12 not in pcs or b >= s:
                continue
            for t in range(max(tlo, b), min(thi, s) + 1):
                if t % 12 not in pcs or t - b > 19:
                    continue
                for a in range(max(alo, t), min(ahi, s) + 1):
                    if a % 12 not in pcs or s - a > 12 or a - t > 12:
                        continue
                    held = [s % 12, a % 12, t % 12, b % 12]
                    if not need <= set(held) or held.count(lt) > 1:
                        continue
                    cost = base - float(bass_lp[j, (b - tonic) % 12])
                    cost += 1.5 * ((a == s) + (t == a)) + 0.3 * (t - b > 12)
                    cost += 0.7 * (fifth is not None and fifth not in held)
                    cost += 0.5 * (q == "M" and held.count(third) > 1)
                    chords.append(j), voicings.append((s, a, t, b)), costs.append(cost)
    return np.asarray(chords, np.int64), np.asarray(voicings, np.int64).reshape(-1, 4), np.asarray(costs, float)


def _transition(model: ChoraleHarmony, m: int, downbeat: int, c1, v1, c2, v2) -> np.ndarray:
    """Cost [n1, n2] of going from the voicings ``v1`` (chords ``c1``) to ``v2`` (``c2``) on a
    beat that begins a bar (``downbeat`` 1) or not."""
    cost = -model.trans[m, downbeat].numpy()[c1[:, None], c2[None, :]]
    d = v2[None, :, :] - v1[:, None, :]  # [n1, n2, 4]
    ad = np.abs(d)
    cost = cost + 0.15 * (ad[..., 1] + ad[..., 2]) + 0.08 * ad[..., 3]
    cost = cost + 0.5 * (np.clip(ad[..., 1] - 5, 0, None) + np.clip(ad[..., 2] - 5, 0, None))
    cost = cost + 3.0 * (ad[..., 3] > 12) + 1.0 * (ad[..., 1:] == 6).sum(axis=-1)
    for i in range(4):
        for j in range(i + 1, 4):
            a = (v1[:, i] - v1[:, j])[:, None]
            b = (v2[:, i] - v2[:, j])[None, :]
            same = (np.sign(d[..., i]) == np.sign(d[..., j])) & (d[..., i] != 0) & (d[..., j] != 0)
            perfect = ((a % 12 == 7) & (b % 12 == 7)) | ((a % 12 == 0) & (b % 12 == 0))
            cost = cost + PARALLEL_COST * (same & perfect)
            if j == i + 1:  # overlap: a voice moves past where its neighbour was
                cost = cost + 1.0 * ((v2[None, :, j] > v1[:, None, i]) | (v2[None, :, i] < v1[:, None, j]))
    outer = (v2[:, 0] - v2[:, 3])[None, :] % 12
    similar = (np.sign(d[..., 0]) == np.sign(d[..., 3])) & (d[..., 0] != 0)
    cost = cost + 1.5 * (similar & np.isin(outer, (0, 7)) & (ad[..., 0] > 2))
    return cost


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def _phrase(model: ChoraleHarmony, pitches: np.ndarray, context: np.ndarray, tonic: int, m: int, temperature: float,
            rng: np.random.Generator, first: bool, last: bool) -> np.ndarray:
    """A [beats, 4] voicing of one phrase (soprano first): forward filtering, backward sampling
    (``temperature`` 0: the best path)."""
    states = []
    for s, x in zip(pitches, context):
        # a note above or below every voicing of the voices' ranges moves them an octave (two);
        # a note further out (a stray C-1) is voiced as if it were octaves nearer
        tries = [(0, t) for t in (0, -12, 12, -24, 24)] + [(t, 0) for t in (12, -12, 24, -24, 36, -36, 48, -48, 60, -60)]
        for lift, move in tries:
            made = _states(model, int(s) + lift, int(x), tonic, m, move=move)
            if len(made[0]):
                break
        if len(made[0]) == 0:
            raise PartitaError(f"no voicing fits a melody note of pitch {int(s)}")
        states.append(made)
    tau = max(float(temperature), 1e-9)
    greedy = float(temperature) <= 0
    c0, _, s0 = states[0]
    score = -(s0 - (model.start[m].numpy()[c0] if first else 0.0))
    alphas, steps = [score], []
    for k in range(1, len(states)):
        (c1, v1, _), (c2, v2, s2) = states[k - 1], states[k]
        t = -_transition(model, m, int(context[k]) % 2, c1, v1, c2, v2)
        steps.append(t)
        x = alphas[-1][:, None] + t
        alphas.append((np.max(x, axis=0) if greedy else _logsumexp(x / tau, axis=0) * tau) - s2)
    final = alphas[-1] + (model.end[m].numpy()[states[-1][0]] if last else 0.0)

    def pick(x: np.ndarray) -> int:
        if greedy:
            return int(np.argmax(x))
        p = np.exp((x - x.max()) / tau)
        return int(rng.choice(len(x), p=p / p.sum()))

    path = [pick(final)]
    for k in range(len(states) - 1, 0, -1):
        path.append(pick(alphas[k - 1] + steps[k - 1][:, path[-1]]))
    path.reverse()
    return np.stack([states[k][1][j] for k, j in enumerate(path)])


def harmonize(model: ChoraleHarmony, score: Score, track: int, *, temperature: float = 1.0, seed: int = 0) -> list:
    """Alto, tenor and bass under the soprano ``score.tracks[track]``: three named tracks
    (``symusic`` TrackTick, program 0 like the chorales' MIDI, in the score's ticks)."""
    beats = read_beats(score, track)
    tonic, mode = soprano_key(score, track)
    rng = np.random.default_rng(int(seed))
    # A melody that lies far higher or lower than a chorale's soprano (whose median is about G4)
    # is harmonized octaves away, and the voices are moved back under it.
    sung = beats.pitch[beats.pitch >= 0]
    median = float(np.median(sung)) if len(sung) else SOPRANO_MEDIAN
    shift = 0 if abs(median - SOPRANO_MEDIAN) <= 9 else 12 * int(np.round((SOPRANO_MEDIAN - median) / 12))
    moved = Beats(beats.starts, np.where(beats.pitch >= 0, beats.pitch + shift, -1), beats.beat, beats.context)
    voices = _voice_beats(moved, lambda p, x, first, last: _phrase(model, p, x, tonic, MODES.index(mode), temperature, rng, first, last))()
    half = sounding_at(score.tracks[track].notes.numpy(), beats.starts + beats.beat // 2)
    passing = passing_notes(voices, np.where(half >= 0, half + shift, -1), tonic, mode)
    voices = np.where(voices >= 0, voices - shift, -1)
    return _tracks(beats, voices, score, passing={k: p - shift for k, p in passing.items()})


#: Scale steps above the tonic a passing note may take (minor: the melodic minor, up and down).
_SCALES = {"major": ((0, 2, 4, 5, 7, 9, 11),) * 2, "minor": ((0, 2, 3, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10))}


def passing_notes(voices: np.ndarray, soprano_half: np.ndarray, tonic: int, mode: str) -> dict[tuple[int, int], int]:
    """Passing notes on the half beat, as Bach fills a third in eighths: ``{(beat, voice): pitch}``.
    Where a lower voice moves by a third from one beat to the next, the scale step between takes
    the second half of the beat (the bass first, then tenor, alto, each given the ones before),
    only where it makes no parallel fifth or octave with any voice (``soprano_half``: the soprano
    sounding at each half beat) and crosses none."""
    out: dict[tuple[int, int], int] = {}
    for k in range(len(voices) - 1):
        a, b = voices[k], voices[k + 1]
        if (a < 0).any() or (b < 0).any():
            continue
        at_half = a.copy()
        if soprano_half[k] >= 0:
            at_half[0] = soprano_half[k]
        for v in (3, 2, 1):
            d = int(b[v] - a[v])
            if abs(d) not in (3, 4):
                continue
            scale = _SCALES[mode][0 if d > 0 else 1]
            step = [p for p in range(min(a[v], b[v]) + 1, max(a[v], b[v])) if (p - tonic) % 12 in scale]
            if len(step) != 1:
                continue
            mid = at_half.copy()
            mid[v] = step[0]
            if not all(mid[i] >= mid[i + 1] for i in range(3)):
                continue
            if _parallel(a, mid) or _parallel(mid, b):
                continue
            out[(k, v)] = step[0]
            at_half = mid
    return out


def _parallel(x: np.ndarray, y: np.ndarray) -> bool:
    """A parallel fifth or octave between any two voices from ``x`` to ``y`` (soprano first)."""
    for i in range(4):
        for j in range(i + 1, 4):
            di, dj = y[i] - x[i], y[j] - x[j]
            if di == 0 or dj == 0 or np.sign(di) != np.sign(dj):
                continue
            a, b = (x[i] - x[j]) % 12, (y[i] - y[j]) % 12
            if a == b and a in (0, 7):
                return True
    return False


def _voice_beats(beats: Beats, phrase):
    """A callable that voices every phrase (a run of sounding beats) of ``beats`` with
    ``phrase(pitches, context, first, last)``: a [beats, 4] array, -1 in rests."""
    def run() -> np.ndarray:
        out = np.full((len(beats.pitch), 4), -1, np.int64)
        sounding = beats.pitch >= 0
        edges = np.flatnonzero(np.diff(np.r_[0, sounding.astype(np.int8), 0]))
        runs = list(zip(edges[::2], edges[1::2]))
        for n, (a, b) in enumerate(runs):
            out[a:b] = phrase(beats.pitch[a:b], beats.context[a:b], n == 0, n == len(runs) - 1)
        return out

    return run


def _tracks(beats: Beats, voices: np.ndarray, score: Score, passing: Optional[dict] = None) -> list:
    """Alto, tenor and bass tracks from a [beats, 4] array: a voice that keeps its pitch across
    beats holds one note; ``passing`` (``passing_notes``) splits a beat, the passing note second."""
    passing = passing or {}
    half = beats.beat // 2
    out = []
    for v, name in zip((1, 2, 3), VOICES[1:]):
        track = symusic.core.TrackTick(name, 0, False)
        times, durs, pitches = [], [], []
        for k, p in enumerate(voices[:, v]):
            if p < 0:
                continue
            start = int(beats.starts[k])
            if pitches and pitches[-1] == p and times[-1] + durs[-1] == start:
                durs[-1] += beats.beat
            else:
                times.append(start), durs.append(beats.beat), pitches.append(int(p))
            if (k, v) in passing:
                durs[-1] -= beats.beat - half
                times.append(start + half), durs.append(beats.beat - half), pitches.append(int(passing[(k, v)]))
        if times:
            track.notes = symusic.Note.from_numpy(time=np.asarray(times, np.int32), duration=np.asarray(durs, np.int32),
                                                  pitch=np.asarray(pitches, np.int8), velocity=np.full(len(times), 70, np.int8))
        out.append(track)
    return out


# --------------------------------------------------------------------------- the baseline

def rule_voices(score: Score, track: int) -> list:
    """The naive baseline: each beat, the first diatonic triad of the key (the chord before, then
    I, IV, V, vi, ii, iii) that holds the soprano note; its other two tones in close position right
    under the soprano (alto, tenor), its root in the bass (E2-D4, nearest the bass before)."""
    from partita.generation.accompany import _diatonic_triads

    beats = read_beats(score, track)
    tonic, mode = soprano_key(score, track)
    triads = _diatonic_triads(tonic, mode)
    roots = [(tonic + d) % 12 for d in ([0, 2, 4, 5, 7, 9] if mode == "major" else [0, 3, 5, 7, 8, 10])]
    order = [0, 3, 4, 5, 1, 2]
    state = {"prev": 0, "bass": 48}

    def phrase(pitches, context, first, last):
        rows = []
        for s in pitches:
            s = int(s)
            k = next((k for k in [state["prev"], *order] if s % 12 in triads[k]), state["prev"])
            state["prev"] = k
            others = [pc for pc in sorted(triads[k], key=lambda pc: (s - pc) % 12) if pc != s % 12][:2]
            below = []
            top = s
            for pc in others:
                top = top - ((top - pc) % 12 or 12)
                below.append(top)
            bass = min((p for p in range(40, 63) if p % 12 == roots[k]), key=lambda p: abs(p - state["bass"]))
            state["bass"] = bass
            rows.append((s, below[0], below[1], min(bass, below[1])))
        return np.asarray(rows, np.int64)

    return _tracks(beats, _voice_beats(beats, phrase)(), score)


# --------------------------------------------------------------------------- data

def chorale_files(data: str | Path, *, progress: Any = None) -> list[Path]:
    """The MIDI files of ``data``: a folder (searched recursively), or ``"bundled"``: music21's
    chorales, every one, exported once (``partita.data.sources.bundled``)."""
    if str(data) == "bundled":
        from partita.data.sources.bundled import export_bundled

        export = export_bundled(labels=["Bach"], full=True, progress=progress)
        return sorted(Path(p.path) for p in export.pieces)
    folder = Path(data)
    if not folder.is_dir():
        raise PartitaError(f"{data}: not a folder of chorales (or 'bundled' for music21's)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise PartitaError(f"{data}: no MIDI files")
    return files


def split_chorales(files: Iterable[str | Path]) -> tuple[dict[str, list[Path]], list[str]]:
    """``({"train": [...], "test": [...]}, skipped)``: the four-part chorales among ``files``
    by ``tune_split``; the others skipped with why."""
    out: dict[str, list[Path]] = {"train": [], "test": []}
    skipped: list[str] = []
    for f, score, voices in four_part(files, skipped):
        out[tune_split(score, voices)].append(Path(f))
    return out, skipped


def four_part(files: Iterable[str | Path], skipped: list[str]) -> Iterator[tuple[Path, Score, list[int]]]:
    """``(file, score, voices)`` of every four-part chorale among ``files`` (``chorale_voices``);
    a file that cannot be read or is not in four voices is added to ``skipped`` with why."""
    from partita.io.midi import load

    for f in files:
        try:
            score = load(f)
        except PartitaError as e:
            skipped.append(f"{f}: {e}")
            continue
        voices = chorale_voices(score)
        if voices is None:
            skipped.append(f"{f}: not four voices")
            continue
        yield Path(f), score, voices
