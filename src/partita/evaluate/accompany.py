"""Accompaniment on held-out songs (``partita eval accompany``), every figure next to baselines.

For each held-out POP909 song (``partita.data.accompany.song_split`` == "test"), the first
``bars`` bars of 4 beats of its MELODY are accompanied by each system (a song whose melody starts
later is skipped and listed), and each accompaniment is measured:

* ``chord_fit``: the share of accompaniment notes, weighted by duration (seconds), whose pitch
  class is in the annotated chord sounding at its onset (``chord_midi.txt``; notes under "N" are
  not counted);
* ``on_beat``: the share of onsets within an eighth of a beat of an annotated beat (``beat_midi.txt``;
  without it, of a quarter note of the file's ticks);
* ``notes_per_beat`` (density) and ``polyphony`` (notes sounding, on a 16th-note grid, where any
  sounds; the real piano's notes held by its sustain pedal, as the model learns them), also as
  ratios to the real accompaniment's;
* ``below_melody``: the share of 16th-note steps where both sound in which the accompaniment's
  highest note is below the melody's lowest.

Systems: ``real`` (the song's own PIANO track: the upper bound), ``rule`` (diatonic block chords
from the melody's pitch classes, ``partita.generation.accompany.rule_chords``), ``tagged`` (the
chord tagger's chords, ``pop-chords`` or ``chord_model``, played as the rule plays its own: the
tagger's harmony alone), ``pop`` (what ``partita accompany`` writes without a model: the tagger's
chords as arpeggios), ``other`` (the
next held-out song's PIANO, transposed to this song's key: the lower bound), ``unconditioned``
(a piano model that never learnt to accompany, ``gpt-piano`` by default, continuing the first two
bars of the melody: what a model writes without listening to the melody; it is scored from its
third bar on, so its figures cover two bars less) and ``model`` (a transformer trained with
``partita train gpt --accompany``, its notes moved to the tagger's chords, as ``partita
accompany --model`` writes them). Figures are means over songs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import symusic

from partita.data.accompany import read_chords, song_files, song_split
from partita.errors import PartitaError

__all__ = ["CHORALE_RANGES", "SYSTEMS", "accompaniment_metrics", "chord_fit", "chorale_metrics", "evaluate_accompany", "evaluate_chorales"]

SYSTEMS = ("real", "rule", "tagged", "pop", "other", "unconditioned", "model")
_KEYS = ("chord_fit", "on_beat", "notes_per_beat", "polyphony", "below_melody")


def _seconds(score, ticks) -> np.ndarray:
    from partita.io.timing import seconds_at

    return np.asarray(seconds_at(score, np.asarray(ticks, np.int64)), float)


def chord_fit(onsets: np.ndarray, durations: np.ndarray, pitches: np.ndarray, chords: list) -> Optional[float]:
    """Duration-weighted share of notes (onset and duration in seconds) whose pitch class is in
    the chord ``(start, end, pitch classes or None)`` sounding at their onset; None when no note
    falls under a chord."""
    if not chords:
        return None
    starts = np.array([c[0] for c in chords])
    ends = np.array([c[1] for c in chords])
    k = np.searchsorted(starts, np.asarray(onsets, float), side="right") - 1
    hit = total = 0.0
    for i, j in enumerate(k):
        if j < 0 or onsets[i] >= ends[j] or chords[j][2] is None:
            continue
        w = float(durations[i])
        total += w
        hit += w * (int(pitches[i]) % 12 in chords[j][2])
    return hit / total if total > 0 else None


def _sounding(notes: dict, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per grid step: how many notes sound, the highest and the lowest pitch (-1 / 128 when none)."""
    count = np.zeros(len(steps), np.int64)
    high = np.full(len(steps), -1, np.int64)
    low = np.full(len(steps), 128, np.int64)
    for t, d, p in zip(notes["time"], notes["duration"], notes["pitch"]):
        a, b = np.searchsorted(steps, t, side="left"), np.searchsorted(steps, t + max(int(d), 1), side="left")
        count[a:b] += 1
        high[a:b] = np.maximum(high[a:b], p)
        low[a:b] = np.minimum(low[a:b], p)
    return count, high, low


def _on_beat(seconds_on: np.ndarray, beats: np.ndarray) -> Optional[float]:
    """Share of onsets (seconds) within an eighth of the local beat length of an annotated beat."""
    if len(seconds_on) == 0 or len(beats) < 2:
        return None
    k = np.clip(np.searchsorted(beats, seconds_on), 1, len(beats) - 1)
    length = beats[k] - beats[k - 1]
    near = np.minimum(np.abs(seconds_on - beats[k - 1]), np.abs(beats[k] - seconds_on))
    return float(np.mean(near <= length / 8))


def accompaniment_metrics(score, melody: dict, notes: dict, chords: list, *, end: int,
                          beats: Optional[np.ndarray] = None) -> dict:
    """The module doc's figures of an accompaniment ``notes`` (a symusic note dict in ``score``'s
    ticks) under ``melody`` (likewise), over ticks ``[0, end)``; ``beats``: annotated beat times
    (seconds)."""
    tpq = int(score.ticks_per_quarter)
    keep = notes["time"] < end
    notes = {k: v[keep] for k, v in notes.items()}
    on, dur = notes["time"], notes["duration"]
    seconds_on = _seconds(score, on)
    seconds_dur = _seconds(score, on + dur) - seconds_on
    beats_of = on / tpq
    steps = np.arange(0, end, max(tpq // 4, 1))
    count, high, _ = _sounding(notes, steps)
    m_count, _, m_low = _sounding(melody, steps)
    both = (count > 0) & (m_count > 0)
    return {
        "chord_fit": chord_fit(seconds_on, seconds_dur, notes["pitch"], chords),
        "on_beat": (_on_beat(seconds_on, np.asarray(beats, float)) if beats is not None else
                    float(np.mean(np.abs(beats_of - np.round(beats_of)) <= 0.125)) if len(on) else None),
        "notes_per_beat": float(len(on) / max(end / tpq, 1e-9)),
        "polyphony": float(count[count > 0].mean()) if (count > 0).any() else 0.0,
        "below_melody": float(np.mean(high[both] < m_low[both])) if both.any() else None,
    }


def _key_tonic(folder: Path) -> Optional[int]:
    from partita.data.accompany import chord_pitch_classes

    path = folder / "key_audio.txt"
    if not path.exists():
        return None
    parts = path.read_text().split()
    if len(parts) < 3:
        return None
    root = parts[2].split(":")[0]
    pcs = chord_pitch_classes(f"{root}:1")
    return None if pcs is None else min(pcs)


def _notes(track) -> dict:
    return {k: np.asarray(v) for k, v in track.notes.numpy().items()}


def _track(score, name: str):
    for t in score.tracks:
        if t.name.strip().upper() == name:
            return t
    return None


def _unconditioned(bundle: Any, cut: Any, melody_track: int, end: int, seed: int) -> tuple[Optional[dict], int]:
    """The notes a piano model writes after the first two (4-beat) bars of the melody, through
    ``end``, and where they start (None when the melody leaves no room)."""
    from partita.generation import generate_samples
    from partita.generation.accompany import melody_only

    tpq = int(cut.ticks_per_quarter)
    mel = cut.tracks[melody_track].notes.numpy()
    start = (int(mel["time"].min()) // (4 * tpq) + 2) * 4 * tpq
    if start >= end:
        return None, start
    prompt = melody_only(cut, melody_track)
    prompt.tracks[0].notes = prompt.tracks[0].notes.filter(lambda n: n.time < start, inplace=False)
    bars = -(-(end - start) // (4 * tpq))
    sample = generate_samples(bundle, prompt, bars=bars, seed=seed, max_pause=None)[0]
    parts = [t.notes.numpy() for t in sample.score.tracks if not t.is_drum]
    n = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
    keep = (n["time"] >= start) & (n["time"] < end)
    return {f: v[keep] for f, v in n.items()}, start


def evaluate_accompany(model: Any, data: str | Path, *, limit: Optional[int] = 10, bars: Optional[int] = 32,
                       seed: int = 0, progress: Any = None, unconditioned: Any = None, chord_model: Any = None,
                       **options: Any) -> dict:
    """Means over the held-out songs of ``data`` (a POP909 folder) of every system's figures
    (module doc); ``model`` a bundle (None: no model row); ``unconditioned``: a piano bundle for
    that row (None: none); ``chord_model``: the chord tagger (default ``pop-chords``); ``bars``: the
    first bars of every song (None: whole songs); sampling ``options`` as ``SamplingConfig`` fields."""
    from partita.generation.accompany import accompany, load_tagger, render_plan, rule_chords, tagged_plan
    from partita.io.midi import load, sustain_pedal

    files = [f for f in song_files(data) if song_split(f.stem) == "test" and (f.parent / "chord_midi.txt").exists()]
    if limit is not None:
        files = files[: int(limit)]
    if len(files) < 2:
        raise PartitaError(f"{data}: fewer than 2 held-out songs with chord_midi.txt (test = song numbers ending in 9)")
    loaded = []
    for f in files:
        score = load(f)
        if _track(score, "MELODY") is None or _track(score, "PIANO") is None:
            continue
        loaded.append((f, score))
    bundle = None
    if model is not None:
        from partita.bundle import load as load_bundle

        bundle = load_bundle(str(model), "gpt")
    plain = None
    if unconditioned is not None:
        from partita.bundle import load as load_bundle

        plain = load_bundle(unconditioned, "gpt")
    tagger = load_tagger(chord_model)
    per: dict[str, list[dict]] = {s: [] for s in SYSTEMS if (s != "model" or bundle is not None) and (s != "unconditioned" or plain is not None)}
    skipped: list[str] = []
    scored: list[str] = []
    for i, (f, score) in enumerate(loaded):
        melody_track = next(k for k, t in enumerate(score.tracks) if t.name.strip().upper() == "MELODY")
        melody = _notes(score.tracks[melody_track])
        end = int((melody["time"] + melody["duration"]).max())
        if bars is not None:  # bars of 4 beats (POP909 files write 1/4 and 2/4 metres)
            end = min(end, int(bars) * 4 * int(score.ticks_per_quarter))
        cut = score.copy()
        for t in cut.tracks:
            t.notes = t.notes.filter(lambda n: n.time < end, inplace=False)
        melody = _notes(cut.tracks[melody_track])
        if len(melody["time"]) == 0:  # an intro longer than the bars scored
            skipped.append(f"{f.stem}: no melody in the first {bars} bars")
            continue
        chords = read_chords(f.parent / "chord_midi.txt")
        beat_file = f.parent / "beat_midi.txt"
        beats = (np.array([float(line.split()[0]) for line in beat_file.read_text().splitlines() if line.strip()])
                 if beat_file.exists() else None)
        # the real and the other song's piano with their sustain pedal in the durations, as the
        # model reads (partita.edit.prompt_view) and writes them
        systems = {"real": _notes(_track(sustain_pedal(cut), "PIANO")), "rule": _notes(rule_chords(cut, melody_track))}
        plan = tagged_plan(cut, melody_track, tagger)
        systems["tagged"] = _notes(render_plan(cut, melody_track, plan, pattern="block"))
        systems["pop"] = _notes(render_plan(cut, melody_track, plan, pattern="arpeggio"))
        of, other = loaded[(i + 1) % len(loaded)]
        o = _notes(_track(sustain_pedal(other), "PIANO"))
        o["time"] = np.round(o["time"] * score.ticks_per_quarter / other.ticks_per_quarter).astype(o["time"].dtype)
        o["duration"] = np.round(o["duration"] * score.ticks_per_quarter / other.ticks_per_quarter).astype(o["duration"].dtype)
        a, b = _key_tonic(f.parent), _key_tonic(of.parent)
        shift = 0 if a is None or b is None else ((a - b + 6) % 12) - 6
        o["pitch"] = np.clip(o["pitch"].astype(np.int64) + shift, 0, 127)
        systems["other"] = o
        if bundle is not None:
            done = accompany(cut, model=bundle, melody_track=melody_track + 1, seed=seed + i, chord_model=chord_model, **options)[0]
            systems["model"] = _notes(done.score.tracks[-1])
        starts = {}
        if plain is not None:
            notes, starts["unconditioned"] = _unconditioned(plain, cut, melody_track, end, seed + i)
            if notes is not None:
                systems["unconditioned"] = notes
        real = None
        for name, notes in systems.items():
            if name in starts:  # scored from where it starts, against the real piano there
                a = starts[name]
                part = {k: v[melody["time"] >= a] for k, v in melody.items()}
                m = accompaniment_metrics(cut, part, notes, chords, end=end, beats=beats)
                m["notes_per_beat"] = float(len(notes["time"]) / max((end - a) / int(cut.ticks_per_quarter), 1e-9))
            else:
                m = accompaniment_metrics(cut, melody, notes, chords, end=end, beats=beats)
            if name == "real":
                real = m
            for k in ("notes_per_beat", "polyphony"):
                m[f"{k}_ratio"] = m[k] / real[k] if real[k] else None
            m["song"] = f.stem
            per[name].append(m)
        scored.append(f.stem)
        if progress is not None:
            progress(i + 1, len(loaded))
    summary = {}
    for name, rows in per.items():
        summary[name] = {k: _mean([r[k] for r in rows]) for k in (*_KEYS, "notes_per_beat_ratio", "polyphony_ratio")}
    return {"songs": scored, "skipped": skipped, "bars": bars, "systems": summary, "per_song": per,
            "model": None if model is None else str(model)}


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- chorales

#: The voices' textbook ranges (alto G3-D5, tenor C3-G4, bass E2-C4), the same for every system.
CHORALE_RANGES = ((55, 74), (48, 67), (40, 60))
CHORALE_SYSTEMS = ("real", "model", "rule", "other")


def chorale_metrics(satb: np.ndarray, bach: np.ndarray, onsets: int) -> dict:
    """Figures of a harmonization on the beat grid: ``satb`` [beats, 4] (soprano first, -1 in a
    rest), ``bach`` Bach's own [beats, 4], ``onsets``: the notes its three lower voices start.
    Parallel fifths, octaves and beats with a voice crossing per 100 beats; ``out_of_range``: the
    share of lower-voice beats outside ``CHORALE_RANGES``; ``chord_fit``: the share of lower-voice
    beats whose pitch class is in Bach's chord at that beat; ``notes_per_beat``: per voice."""
    from partita.models.harmony import voice_leading_errors

    e = voice_leading_errors(satb)
    both = (satb >= 0).all(axis=1) & (bach >= 0).all(axis=1)
    fit = [int(satb[k, j]) % 12 in {int(p) % 12 for p in bach[k]} for k in np.flatnonzero(both) for j in (1, 2, 3)]
    sounding = satb[(satb >= 0).all(axis=1)]
    out = [not lo <= p <= hi for row in sounding for p, (lo, hi) in zip(row[1:], CHORALE_RANGES)]
    beats = max(e["beats"], 1)
    return {"parallel_fifths": 100 * e["parallel_fifths"] / beats, "parallel_octaves": 100 * e["parallel_octaves"] / beats,
            "parallels": 100 * (e["parallel_fifths"] + e["parallel_octaves"]) / beats, "crossing": 100 * e["crossing"] / beats,
            "out_of_range": float(np.mean(out)) if out else None, "chord_fit": float(np.mean(fit)) if fit else None,
            "notes_per_beat": onsets / (3 * beats), "beats": e["beats"]}


def evaluate_chorales(model: Any, data: str | Path = "bundled", *, limit: Optional[int] = None, seed: int = 0,
                      temperature: Optional[float] = None, progress: Any = None) -> dict:
    """Means over the held-out chorales of ``data`` (a folder of four-part chorales, or
    "bundled": music21's; held out by tune, ``partita.generation.chorale.tune_split``) of
    ``chorale_metrics`` for Bach's own lower voices (``real``), the model's (``model``: a harmony
    bundle, None for the shipped one), the naive rule's (``rule_voices``) and another held-out
    chorale's lower voices moved to this one's key (``other``, the lower bound)."""
    from partita.bundle import load as load_bundle
    from partita.generation.chorale import (beat_voices, chorale_files, chorale_voices, harmonize, rule_voices,
                                            soprano_key, sounding_at, split_chorales)
    from partita.io.midi import load
    from partita.pretrained import CHORALE_HARMONY

    bundle = load_bundle(model, "harmony", default=CHORALE_HARMONY)
    temperature = float(bundle.generation.get("temperature", 1.0) if temperature is None else temperature)
    files = split_chorales(chorale_files(data))[0]["test"]
    if limit is not None:
        files = files[: int(limit)]
    if len(files) < 2:
        raise PartitaError(f"{data}: fewer than 2 held-out four-part chorales")
    loaded = []
    for f in files:
        score = load(f)
        voices = chorale_voices(score)
        grid, satb = beat_voices(score, voices)
        loaded.append((f, score, voices, grid, satb, soprano_key(score, voices[0])))
    per: dict[str, list[dict]] = {s: [] for s in CHORALE_SYSTEMS}
    for i, (f, score, voices, grid, satb, (tonic, _)) in enumerate(loaded):
        soprano = satb[:, :1]

        def on_grid(tracks) -> tuple[np.ndarray, int]:
            cols = [sounding_at(t.notes.numpy(), grid.starts) for t in tracks]
            return np.concatenate([soprano, np.stack(cols, axis=1)], axis=1), sum(t.note_num() for t in tracks)

        _, _, _, _, o_satb, (o_tonic, _) = loaded[(i + 1) % len(loaded)]
        shift = ((tonic - o_tonic + 6) % 12) - 6
        other = np.resize(o_satb[:, 1:], (len(satb), 3))
        other = np.where(other >= 0, other + shift, -1)
        systems = {
            "real": (satb, sum(score.tracks[v].note_num() for v in voices[1:])),
            "model": on_grid(harmonize(bundle.model, score, voices[0], temperature=temperature, seed=seed + i)),
            "rule": on_grid(rule_voices(score, voices[0])),
            "other": (np.concatenate([soprano, other], axis=1), int((np.diff(np.r_[[[-2] * 3], other], axis=0) != 0).sum())),
        }
        for name, (arr, onsets) in systems.items():
            m = chorale_metrics(arr, satb, onsets)
            m["chorale"] = f.stem
            per[name].append(m)
        if progress is not None:
            progress(i + 1, len(loaded))
    keys = ("chord_fit", "parallels", "parallel_fifths", "parallel_octaves", "crossing", "out_of_range", "notes_per_beat")
    summary = {}
    for name, rows in per.items():
        beats = sum(r["beats"] for r in rows)
        summary[name] = {k: (sum(r[k] * r["beats"] for r in rows) / max(beats, 1) if k in ("parallels", "parallel_fifths", "parallel_octaves", "crossing")
                             else _mean([r[k] for r in rows])) for k in keys}
    return {"chorales": [r["chorale"] for r in per["real"]], "systems": summary, "per_chorale": per,
            "model": str(bundle.path) if bundle.path is not None else None, "temperature": temperature,
            "beats": sum(r["beats"] for r in per["real"])}
