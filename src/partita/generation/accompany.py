"""Accompaniment: given a melody, write the tracks under it.

::

    import partita
    result = partita.accompany("melody.mid", style="folk", seed=0)[0]
    result.score  # the user's file, every note as it was, plus a new track "PIANO"

The user's tracks are kept exactly (every note, in ticks, every meta event; a copy of the
``Score`` as symusic read it) and the new notes go into a new named track. Every style but the
chorale first makes a chord *plan* (``(start, end, bass, pitch classes)`` a chord) and then plays
it. Styles:

* ``pop`` (the default): the chords ``pop-chords`` hears in the melody (``tagged_plan``: a chord
  tagger trained on POP909's annotations, ``partita.models.chords``), played as arpeggios over a
  bass (``render_plan``; ``pattern`` block or broken too). With ``model``, a GPT trained to write
  POP909's PIANO track under its MELODY (``partita train gpt --accompany MELODY:PIANO``) writes
  the texture instead and its notes are moved to the plan's chords (``snap_to_plan``). The
  melody is read window by window (``partita.data.accompany``: ``[SUFFIX, melody bars, MIDDLE,
  piano bars]``): the first window writes ``WINDOW_BARS`` bars, every later one ``WINDOW_BARS -
  PREFIX_BARS`` new bars after the last ``PREFIX_BARS`` bars it wrote, so a melody of any length
  is accompanied; the sampler's bar stop (``FillPrompt.end_bar``) ends each window.
* ``folk``: one diatonic triad per half bar chosen from the melody's pitch classes
  (``rule_plan``), block chords by default: the rule baseline of ``partita eval accompany``.
* ``chorale``: alto, tenor and bass under a soprano (``partita.generation.chorale``: a chord model
  counted from Bach's chorales, ``chorale-harmony``, with a voice-leading search), three named
  tracks.

``chords="C G Am F"`` imposes a progression, one chord per bar, repeated, in place of the plan
(pop and folk).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import symusic
from symusic import Score

from partita.data.accompany import PREFIX_BARS, WINDOW_BARS, SongTracks, song_files, song_split, window_layout
from partita.errors import PartitaError

__all__ = ["PATTERNS", "STYLES", "Accompanied", "accompany", "beat_phase", "choose_melody_track", "default_pattern", "load_tagger",
           "melody_only",
           "parse_progression", "read_songs", "render_plan", "rule_choice", "rule_chords", "rule_plan", "snap_to_plan", "tagged_plan", "track_tokens"]

STYLES = ("pop", "folk", "chorale")
PATTERNS = ("block", "broken", "arpeggio")  # chords struck together, broken one note a beat, or in eighths over a bass
#: At most this many tokens a bar per window (POP909's piano has about 22; 4x that is a model
#: that does not end its bars, cut short).
TOKENS_PER_BAR = 96
#: Track names read as the melody when a file names one.
MELODY_NAMES = ("MELODY", "MELODIE", "VOCAL", "VOCALS", "VOICE", "LEAD", "SOPRANO", "TUNE", "SINGER")


@dataclass
class Accompanied:
    """One accompaniment: ``score`` (the user's file plus the new tracks) and what was done."""

    score: Score
    melody_track: int  # index (0-based) of the track read as the melody
    melody_name: str
    added: dict = field(default_factory=dict)  # new track name -> notes in it
    style: str = "pop"
    method: str = "model"  # "model" (a transformer's notes), "chords" (the chord tagger's chords played) or "rule"
    pattern: Optional[str] = None  # how the chords were played, without a model
    bars: int = 0  # bars accompanied
    tokens: int = 0  # tokens the model wrote
    ids: Any = None  # the tokens the model wrote (BOS first), None for the rule
    stops: dict = field(default_factory=dict)  # why the windows ended ("bars": at the window's end bar) -> how many
    index: int = 0


# --------------------------------------------------------------------------- tracks as tokens


def _tracks_named(score: Score, name: str) -> list:
    return [t for t in score.tracks if t.name.strip().upper() == name.upper() and t.note_num() > 0]


def track_tokens(tokenizer: Any, score: symusic.Score, tracks: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, bars, positions)`` of ``tracks`` of ``score`` tokenised alone (no BOS/EOS): what
    the model reads of them (``partita.edit.prompt_view``), with the file's tempo and metre."""
    from partita.edit import prompt_view
    from partita.represent.tokens import encode, token_timing

    one = symusic.Score(int(score.ticks_per_quarter))
    for t in tracks:
        one.tracks.append(t.copy())
    one.tempos, one.time_signatures, one.key_signatures = score.tempos, score.time_signatures, score.key_signatures
    view = prompt_view(one)
    ids = encode(tokenizer, view, bos_eos=True)
    bars, positions = token_timing(tokenizer, ids)
    return ids[1:-1].astype(np.int64), bars[1:-1].astype(np.int64), positions[1:-1].astype(np.int64)


def read_songs(folder: str | Path, tokenizer: Any, tracks: tuple[str, str], *, splits: Iterable[str] = ("train", "valid"),
               limit: Optional[int] = None) -> tuple[dict[str, list[SongTracks]], list[str]]:
    """Songs of ``folder`` by split (``song_split``), each with its given and written tracks
    tokenised; and the files skipped (unreadable, or without either track), one line each."""
    from partita.io.midi import load

    given, written = tracks
    out: dict[str, list[SongTracks]] = {s: [] for s in splits}
    skipped: list[str] = []
    for path in song_files(folder):
        split = song_split(path.stem)
        if split not in out or (limit is not None and len(out[split]) >= limit):
            continue
        try:
            score = load(path)
            g, w = _tracks_named(score, given), _tracks_named(score, written)
            if not g or not w:
                skipped.append(f"{path.name}: no {given if not g else written} track")
                continue
            out[split].append(SongTracks(path.stem, track_tokens(tokenizer, score, g), track_tokens(tokenizer, score, w)))
        except PartitaError as e:
            skipped.append(f"{path.name}: {e}")
    return out, skipped


# --------------------------------------------------------------------------- the melody track


def _mostly_single(track) -> bool:
    """At most 2 in 5 of a track's notes start before the note before them ends: a line (a fiddle
    tune's double stops included: 0.3-0.36 in the demo's folk tunes), not a piano texture (0.55 or
    more in every piano performance of the test fixtures); a note held on, as a tie read too long,
    overlaps only the note after it."""
    n = track.notes.numpy()
    if len(n["time"]) < 2:
        return True
    order = np.argsort(n["time"], kind="stable")
    t, end = n["time"][order], (n["time"] + n["duration"])[order]
    return float(np.mean(t[1:] < end[:-1] - 1)) <= 0.4


def choose_melody_track(score: Score, index: Optional[int] = None, *, name: str = "the file") -> int:
    """The 0-based index of the melody track: ``index`` (1-based, as ``--melody-track N``), else a
    track named MELODY (VOCAL, LEAD, SOPRANO...), else the highest (median pitch) track of single
    notes that is not drums; a one-line error listing the tracks when there is none."""
    tracks = list(score.tracks)
    listing = ", ".join(f"{i + 1} {t.name or '(unnamed)'} ({t.note_num()} notes)" for i, t in enumerate(tracks)) or "none"
    if index is not None:
        if not 1 <= int(index) <= len(tracks):
            raise PartitaError(f"{name}: --melody-track {index}: the file has {len(tracks)} tracks ({listing})")
        if tracks[int(index) - 1].note_num() == 0:
            raise PartitaError(f"{name}: track {index} has no notes ({listing})")
        return int(index) - 1
    for i, t in enumerate(tracks):
        if t.name.strip().upper() in MELODY_NAMES and t.note_num() > 0 and not t.is_drum:
            return i
    lines = [(float(np.median(t.notes.numpy()["pitch"])), i) for i, t in enumerate(tracks)
             if not t.is_drum and t.note_num() >= 8 and _mostly_single(t)]
    if not lines:
        raise PartitaError(f"{name}: no melody-like track (a track of single notes, not drums; tracks: {listing}): "
                           "choose one with --melody-track N")
    return max(lines)[1]


def melody_only(score: Score, track: int) -> Score:
    """A score of ``score.tracks[track]`` alone, with the score's tempo, metre and key."""
    one = Score(int(score.ticks_per_quarter))
    one.tracks.append(score.tracks[track].copy())
    one.tempos, one.time_signatures, one.key_signatures = score.tempos, score.time_signatures, score.key_signatures
    return one


# --------------------------------------------------------------------------- chords


def parse_progression(text: Any) -> list[tuple[int, tuple[int, ...], Optional[int]]]:
    """``"C G Am F"`` -> ``[(bass pitch class, intervals above it, None), ...]`` (``partita.io.prompts``'
    chord symbols: the bass is the root, or the slash bass)."""
    from partita.io.prompts import chord_pitches

    symbols = str(text).replace(",", " ").replace("|", " ").split() if isinstance(text, str) else list(text)
    if not symbols:
        raise PartitaError("--chords takes chord symbols, like \"C G Am F\"")
    out = []
    for s in symbols:
        pitches = chord_pitches(s.strip(), bass=True)  # the bass (root or slash bass) first, then the tones
        out.append((pitches[0] % 12, tuple(sorted({(p - pitches[0]) % 12 for p in pitches[1:]})), None))
    return out


def _chord_set(chord) -> frozenset[int]:
    root, intervals, bass = chord
    pcs = {(root + i) % 12 for i in intervals}
    if bass is not None:
        pcs.add(bass % 12)
    return frozenset(pcs)


_KEY_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KEY_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(pitches: np.ndarray, weights: np.ndarray) -> tuple[int, str]:
    """``(tonic pitch class, "major"|"minor")`` by the Krumhansl-Kessler profiles of the
    duration-weighted pitch classes."""
    hist = np.bincount(np.asarray(pitches) % 12, weights=np.asarray(weights, float), minlength=12)
    best = (-2.0, 0, "major")
    for tonic in range(12):
        for mode, profile in (("major", _KEY_MAJOR), ("minor", _KEY_MINOR)):
            r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1]) if hist.std() > 0 else 0.0
            best = max(best, (r, tonic, mode))
    return best[1], best[2]


def _diatonic_triads(tonic: int, mode: str) -> list[frozenset[int]]:
    degrees = ([(0, "M"), (2, "m"), (4, "m"), (5, "M"), (7, "M"), (9, "m")] if mode == "major" else
               [(0, "m"), (3, "M"), (5, "m"), (7, "M"), (8, "M"), (10, "M")])
    return [frozenset((tonic + d + i) % 12 for i in ((0, 4, 7) if q == "M" else (0, 3, 7))) for d, q in degrees]


def _segments(score: Score, end: int) -> np.ndarray:
    """Tick starts of half bars (bars of an even numerator >= 4 beats are halved; bars shorter than
    2 beats, such as POP909's 1/4, give way to 2-beat segments), through ``end``."""
    from partita.io.timing import bar_starts

    starts = bar_starts(score, end)
    tpq = int(score.ticks_per_quarter)
    if _short_bars(score, end):
        return np.arange(0, int(starts[-1]) + 2 * tpq, 2 * tpq, dtype=np.int64)
    out = []
    for a, b in zip(starts[:-1], starts[1:]):
        beats = (b - a) / int(score.ticks_per_quarter)
        out.append(a)
        if beats >= 4 and round(beats) % 2 == 0:
            out.append(a + (b - a) // 2)
    out.append(starts[-1])
    return np.asarray(out, np.int64)


def _short_bars(score: Score, end: int) -> bool:
    """Whether the file has bars shorter than 2 beats through ``end`` (POP909's 1/4): its bar
    lines say nothing of its harmony's rhythm."""
    from partita.io.timing import bar_starts

    starts = bar_starts(score, end)
    return bool(len(starts) > 1 and np.min(np.diff(starts)) < 2 * int(score.ticks_per_quarter))


def beat_phase(onsets: np.ndarray, tpq: int) -> int:
    """The tick offset (in eighths of a beat, 0 on ties) at which most of ``onsets`` fall on a beat:
    files whose beats do not start at tick 0 (POP909's sit about 0.7 of a quarter late)."""
    onsets = np.asarray(onsets, np.int64)
    if len(onsets) == 0:
        return 0
    best, phase = -1.0, 0
    for o in range(0, tpq, max(tpq // 8, 1)):
        r = (onsets - o) % tpq
        share = float(np.mean((r < tpq // 16) | (r > tpq - tpq // 16)))
        if share > best + 1e-9:
            best, phase = share, o
    return phase


def _voice(pcs: list[int], root: int, top: int) -> list[int]:
    """A bass note (the root, in 36-47) and the chord's tones in close position under ``top``."""
    bass = 36 + (root - 36) % 12
    notes = [bass]
    for pc in pcs:
        p = 48 + (pc - 48) % 12
        while p >= top and p - 12 > bass:
            p -= 12
        notes.append(p)
    return sorted(set(notes))


#: A chord plan: ``(start tick, end tick, bass pitch class, pitch classes)`` a chord, in order.
Plan = list


def rule_choice(weights: np.ndarray, tonic: int, mode: str) -> list[tuple[int, frozenset]]:
    """The rule's chord of every segment: ``weights`` [segments, 12] (the melody's duration per pitch
    class there) -> ``(root, pitch classes)`` of the diatonic triad holding most of it (ties: the
    chord before, then the tonic, IV, V first); a silent segment keeps the chord before."""
    triads = _diatonic_triads(tonic, mode)
    roots = [(tonic + d) % 12 for d in ([0, 2, 4, 5, 7, 9] if mode == "major" else [0, 3, 5, 7, 8, 10])]
    prior = np.array([0.03, 0.0, 0.0, 0.02, 0.02, 0.01])
    prev, out = 0, []
    for w in np.asarray(weights, float):
        total = float(w.sum())
        if total > 0:
            w = w / total
            prev = int(np.argmax([sum(w[p] for p in t) + prior[k] + (0.05 if k == prev else 0.0) for k, t in enumerate(triads)]))
        out.append((roots[prev], triads[prev]))
    return out


def _melody_span(score: Score, melody_track: int) -> tuple[dict, int, np.ndarray]:
    """The melody's notes, its end tick and the segment starts (half bars from its beat phase)."""
    mel = score.tracks[melody_track].notes.numpy()
    end = int((mel["time"] + mel["duration"]).max()) if len(mel["time"]) else 0
    seg = _segments(score, end) + beat_phase(mel["time"], int(score.ticks_per_quarter)) if end else np.zeros(1, np.int64)
    return mel, end, seg


def _overlaps(mel: dict, a: int, b: int) -> np.ndarray:
    return np.clip(np.minimum(mel["time"] + mel["duration"], b) - np.maximum(mel["time"], a), 0, None).astype(float)


def rule_plan(score: Score, melody_track: int, *, chords: Any = None) -> Plan:
    """The rule's chords: one per half bar (``_segments``, from the melody's beats), the diatonic
    triad of the melody's key (Krumhansl-Kessler) holding most of its sounding duration there
    (``rule_choice``); with ``chords`` (``"C G Am F"``), those, one per bar, repeated."""
    from partita.io.timing import bar_of, bar_starts

    mel, end, seg = _melody_span(score, melody_track)
    if not end:
        return []
    spans = []
    for a, b in zip(seg[:-1], seg[1:]):
        if a >= end:
            break
        spans.append((int(a), int(b)))
    if chords is not None:
        progression = parse_progression(chords)
        starts = bar_starts(score, end)
        plan = []
        for a, b in spans:
            root, intervals, bass = progression[int(bar_of(starts, a)) % len(progression)]
            plan.append((a, b, (bass if bass is not None else root) % 12, _chord_set((root, intervals, None))))
        return plan
    weights = np.stack([np.bincount(mel["pitch"] % 12, weights=_overlaps(mel, a, b), minlength=12) for a, b in spans])
    tonic, mode = estimate_key(mel["pitch"], mel["duration"])
    return [(a, b, root, pcs) for (a, b), (root, pcs) in zip(spans, rule_choice(weights, tonic, mode))]


def tagged_plan(score: Score, melody_track: int, tagger: Any) -> Plan:
    """The chord tagger's chords (``partita.models.chords``), one a half bar: every beat from the
    first (the melody's beat phase) to the melody's last tagged, then one chord chosen for each
    half bar of the file (``_segments``; where its bars are shorter than 2 beats, the pairing of
    beats the tagger finds likelier, ``decode_half_bars``) with the tagger's change cost; a chord
    lasts until the next. As the rule does, a silent opening gets chords too."""
    from partita.models.chords import beat_features, chord_tones, decode_half_bars, decode_segments

    mel, end, seg = _melody_span(score, melody_track)
    if not end:
        return []
    tpq = int(score.ticks_per_quarter)
    phase = beat_phase(mel["time"], tpq)
    x = beat_features(mel, tpq, phase)
    last = int(np.flatnonzero(x[:, 36] == 0)[-1]) + 1
    lp = tagger.scores(x)[:last]
    change = float(tagger.config.change)
    if _short_bars(score, end):
        path = decode_half_bars(lp, change)
    else:
        cuts = np.clip(np.round((seg - phase) / tpq).astype(np.int64), 0, last)
        path, _ = decode_segments(lp, np.unique(np.concatenate([[0], cuts, [last]])), change)
    plan: Plan = []
    for k in range(last):
        if k and path[k] == path[k - 1]:
            a, _, root, pcs = plan[-1]
            plan[-1] = (a, phase + (k + 1) * tpq, root, pcs)
            continue
        root, pcs = chord_tones(int(path[k]), tagger.config.qualities)
        plan.append((max(phase + k * tpq, 0), phase + (k + 1) * tpq, root, frozenset(pcs)))
    return plan


def render_plan(score: Score, melody_track: int, plan: Plan, *, pattern: str = "block", every: Optional[float] = None,
                velocity: int = 70) -> symusic.core.TrackTick:
    """A "PIANO" track playing ``plan`` under the melody, every chord struck again at each half bar
    (``_segments``) it crosses: ``block``: a bass root (36-47) and the chord in close position below
    the melody, struck every ``every`` beats (default once a half bar); ``broken``: one note every
    ``every`` beats (default 1), the bass first, then the upper notes in turn, rising;
    ``arpeggio``: the bass held through the half bar and the upper notes in eighths (every
    ``every`` beats), 1, 2, 3, 2 of the notes above the bass, each held on as a sustain pedal
    holds it (to the half bar's end, or to the same note's next onset), softer than the bass."""
    if pattern not in PATTERNS:
        raise PartitaError(f"--pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    beat = int(score.ticks_per_quarter)
    mel, end, seg = _melody_span(score, melody_track)
    track = symusic.core.TrackTick("PIANO", 0, False)
    times, durs, pitches, louds = [], [], [], []
    for a0, b0, root, chord in plan:
        cuts = [int(a0)] + [int(t) for t in seg if a0 < t < b0] + [int(b0)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            sounding = _overlaps(mel, a, b) > 0
            top = int(mel["pitch"][sounding].min()) if sounding.any() else 72
            voiced = list(_voice(sorted(chord), root, top))
            if pattern == "arpeggio":
                step = max(int(round((every or 0.5) * beat)), 1)
                upper = voiced[1:] or voiced
                order = [0, 1, 2, 1] if len(upper) >= 3 else [0, 1] if len(upper) == 2 else [0]
                times.append(a), durs.append(b - a), pitches.append(voiced[0]), louds.append(velocity)
                onsets = list(range(a, b, step))
                notes = [upper[order[j % len(order)]] for j in range(len(onsets))]
                for j, (t0, p) in enumerate(zip(onsets, notes)):
                    again = next((t for t, q in zip(onsets[j + 1:], notes[j + 1:]) if q == p), b)
                    times.append(t0), durs.append(again - t0), pitches.append(p), louds.append(velocity - 10)
                continue
            step = max(int(round((every or 1.0) * beat)), 1)
            if pattern == "broken" and b - a >= 2 * step and len(voiced) > 1:
                onsets = list(range(a, b, step))
                for j, t0 in enumerate(onsets):
                    p = voiced[0] if j == 0 else voiced[1 + (j - 1) % (len(voiced) - 1)]
                    times.append(t0), durs.append((onsets[j + 1] if j + 1 < len(onsets) else b) - t0), pitches.append(p)
                    louds.append(velocity)
                continue
            onsets = list(range(a, b, step)) if every is not None and pattern == "block" else [a]
            for j, t0 in enumerate(onsets):
                t1 = onsets[j + 1] if j + 1 < len(onsets) else b
                for p in voiced:
                    times.append(t0), durs.append(t1 - t0), pitches.append(p), louds.append(velocity)
    if times:
        order = np.argsort(np.asarray(times), kind="stable")
        track.notes = symusic.Note.from_numpy(time=np.asarray(times, np.int32)[order], duration=np.asarray(durs, np.int32)[order],
                                              pitch=np.asarray(pitches, np.int8)[order],
                                              velocity=np.clip(np.asarray(louds), 1, 127).astype(np.int8)[order])
    return track


def rule_chords(score: Score, melody_track: int, *, chords: Any = None, velocity: int = 70,
                pattern: str = "block", every: Optional[float] = None) -> symusic.core.TrackTick:
    """The rule accompaniment (the baseline): ``rule_plan``'s chords (one diatonic triad per half
    bar, or ``chords``) played by ``render_plan`` in a new "PIANO" track."""
    return render_plan(score, melody_track, rule_plan(score, melody_track, chords=chords), pattern=pattern, every=every,
                       velocity=velocity)


def snap_to_plan(track, plan: Plan) -> None:
    """Move every note of ``track`` (in place) to the nearest tone of the chord of ``plan`` at its
    onset (ties go down; notes outside the plan stay)."""
    n = track.notes.numpy()
    if len(n["time"]) == 0 or not plan:
        return
    starts = np.array([c[0] for c in plan], np.int64)
    k = np.searchsorted(starts, n["time"], side="right") - 1
    pitch = n["pitch"].astype(np.int64)
    for i in range(len(pitch)):
        if k[i] < 0 or n["time"][i] >= plan[k[i]][1]:
            continue
        pcs = plan[k[i]][3]
        for d in (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6):
            if (pitch[i] + d) % 12 in pcs and 0 <= pitch[i] + d <= 127:
                pitch[i] += d
                break
    n["pitch"] = pitch.astype(n["pitch"].dtype)
    track.notes = symusic.Note.from_numpy(**n)


# --------------------------------------------------------------------------- the model


def _windows(n_bars: int) -> list[tuple[int, int, int]]:
    """``(first bar shown, first bar written, end bar)`` of every window over ``n_bars`` bars."""
    out = [(0, 0, min(WINDOW_BARS, n_bars))]
    step = WINDOW_BARS - PREFIX_BARS
    a = out[0][2]
    while a < n_bars:
        out.append((a - PREFIX_BARS, a, min(a + step, n_bars)))
        a += step
    return out


def _harmony(plan: Plan) -> tuple[np.ndarray, list[frozenset]]:
    """A plan's chord starts (ticks) and pitch classes, as ``_candidate_score`` reads them."""
    return np.array([c[0] for c in plan], np.int64), [frozenset(c[3]) for c in plan]


def _candidate_score(notes: dict, harmony: tuple, beats: float, density: Optional[float]) -> float:
    """How well a window's new notes (file ticks) agree with the melody's harmony (the share of
    their duration whose pitch class is in the plan's chord at their onset), less the distance of
    their notes per beat from ``density`` (log ratio, half weight), when one is asked for."""
    starts, chords = harmony
    if len(notes["time"]) == 0:
        return -1.0
    fit = 0.5
    if len(starts):
        k = np.clip(np.searchsorted(starts, notes["time"], side="right") - 1, 0, len(starts) - 1)
        hit = np.array([int(p) % 12 in chords[j] for p, j in zip(notes["pitch"], k)], float)
        w = np.maximum(notes["duration"].astype(float), 1.0)
        fit = float((hit * w).sum() / w.sum())
    if density is None:
        return fit
    rate = len(notes["time"]) / max(beats, 1e-9)
    return fit - 0.5 * abs(float(np.log((rate + 0.05) / (density + 0.05))))


def _file_notes(tokenizer, written: np.ndarray, new: np.ndarray, tpq: int) -> dict:
    """The notes ``new`` adds after ``written``, in a file of ``tpq`` ticks a quarter."""
    from partita.edit import new_notes, to_ticks

    added = new_notes(tokenizer, np.concatenate([written, new]), len(written))
    mtpq = int(added.ticks_per_quarter)
    parts = [t.notes.numpy() for t in added.tracks if not t.is_drum]
    if not parts:
        return {f: np.zeros(0, np.int64) for f in ("time", "duration", "pitch", "velocity")}
    n = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
    order = np.argsort(n["time"], kind="stable")
    n = {f: v[order] for f, v in n.items()}
    n["time"] = to_ticks(n["time"], mtpq, tpq).astype(n["time"].dtype)
    n["duration"] = np.maximum(to_ticks(n["duration"], mtpq, tpq), 1).astype(n["duration"].dtype)
    return n


def _model_track(model, tokenizer, score: Score, melody_track: int, cfg, label, progress, *, candidates: int = 1,
                 density: Optional[float] = None, plan: Plan) -> tuple[Any, np.ndarray, dict]:
    """The model's accompaniment of ``score``'s melody, as a "PIANO" track in the file's ticks;
    with ``candidates`` > 1, each window is sampled that many times and the candidate that
    agrees best with ``plan``'s chords (and is nearest ``density`` notes a beat) is kept."""
    from partita.generation.sampling import FillPrompt, sample
    from partita.generation.filters import held_metres
    from partita.io.timing import metres
    from partita.represent.token_tables import token_tables
    from partita.represent.tokens import special_id, token_timing

    mel = track_tokens(tokenizer, score, [score.tracks[melody_track]])
    music = ~_special(tokenizer)[mel[0]]
    if not music.any():
        raise PartitaError("the melody track has no notes the tokenizer keeps")
    n_bars = int(mel[1][music].max()) + 1
    fill = (model.fill_token("suffix"), model.fill_token("middle"))
    bos, eos = special_id(tokenizer, "BOS"), special_id(tokenizer, "EOS")
    written = np.array([bos], np.int64)
    if cfg.time_signatures is None:
        cfg = cfg.replace(time_signatures=held_metres(token_tables(tokenizer), metres(melody_only(score, melody_track))))
    windows = _windows(n_bars)
    stops: dict = {}
    harmony = _harmony(plan) if candidates > 1 else None
    tpq = int(score.ticks_per_quarter)
    for k, (shown, first, end) in enumerate(windows):
        wb, wp = token_timing(tokenizer, written)
        so_far = (written[1:], wb[1:].astype(np.int64), wp[1:].astype(np.int64))
        ids, _, bars, positions = window_layout(mel, so_far, shown, end, fill, written_end=first)
        g0, g1 = np.searchsorted(mel[1], shown), np.searchsorted(mel[1], end)
        prompt = FillPrompt(ids=ids, bars=bars, positions=positions, prefix=written,
                            song=np.concatenate([written, mel[0][g0:g1]]), end_bar=int(end), suffix=mel[0][g0:g1])
        wcfg = cfg.replace(bars=end - first, seconds=None, prompt_read=None, allow_early_end=False,
                           seed=int(cfg.seed) * 100003 + k,
                           max_new_tokens=cfg.max_new_tokens or TOKENS_PER_BAR * (end - first))
        rows = sample(model, tokenizer, prompts=[prompt], n=candidates, config=wcfg, label=label, return_details=True)
        if candidates > 1:
            beats = 4.0 * (end - first)  # the tokenizer's bars are of 4 beats
            rows = [max(rows, key=lambda r: _candidate_score(_file_notes(tokenizer, written, r.new_ids[r.new_ids != eos], tpq),
                                                             harmony, beats, density))]
        r = rows[0]
        new = r.new_ids[r.new_ids != eos]
        stops[r.stop] = stops.get(r.stop, 0) + 1
        written = np.concatenate([written, new])
        if progress is not None:
            progress(k + 1, len(windows))
    track = symusic.core.TrackTick("PIANO", 0, False)
    n = _file_notes(tokenizer, written[:1], written[1:], tpq)
    if len(n["time"]):
        track.notes = symusic.Note.from_numpy(**n)
    return track, written, stops


def _special(tokenizer: Any) -> np.ndarray:
    from partita.represent.token_tables import token_tables

    return token_tables(tokenizer).special


def _read(midi: Any) -> tuple[Score, str]:
    from partita.io.midi import load

    if isinstance(midi, (str, os.PathLike)):
        return load(midi), os.fspath(midi)
    if isinstance(midi, (bytes, bytearray)):
        return load(midi), "the file"
    if isinstance(midi, (symusic.core.ScoreTick, symusic.core.ScoreQuarter, symusic.core.ScoreSecond)):
        return (midi if isinstance(midi, symusic.core.ScoreTick) else midi.to("tick")), "the score"
    raise PartitaError(f"accompany takes a MIDI file or a symusic Score, not {type(midi).__name__}")


def accompany(
    midi: Any,
    *,
    style: Optional[str] = None,
    model: Any = None,
    melody_track: Optional[int] = None,
    chords: Any = None,
    n: int = 1,
    config: Any = None,
    device: Any = None,
    progress: Any = None,
    pattern: Optional[str] = None,
    density: Optional[float] = None,
    candidates: Optional[int] = None,
    chord_model: Any = None,
    **options: Any,
) -> list[Accompanied]:
    """``n`` accompaniments of the melody of ``midi`` (a path, bytes or ``symusic.Score``).

    ``style``: ``pop`` (the default: the chords of ``chord_model``, a chord tagger bundle, default
    ``pop-chords``, played by ``pattern``; with ``model``, a GPT accompaniment bundle, its notes
    on those chords), ``folk`` (the rule's chords) or ``chorale`` (alto, tenor and bass;
    ``model``: a harmony bundle, default ``chorale-harmony``).
    ``melody_track``: the melody's track, 1-based (default: chosen, ``choose_melody_track``).
    ``chords``: a progression to impose, one chord per bar. Sampling options are
    ``SamplingConfig`` fields (``temperature``, ``top_p``, ``seed``...); version ``i`` uses seed
    ``seed + i``. Key, tempo and metre are the file's. ``pattern`` (without a model):
    ``arpeggio`` (pop's default), ``block`` (folk's) or ``broken``. ``density``: notes a beat to
    aim at (how often chords are struck or move; with a model, the candidate nearest it is
    kept). ``candidates`` (with a model): windows sampled per window, the one that agrees best
    with the chords (and ``density``) kept (default 1, or 4 with a ``density``).
    """

    style = style or "pop"
    if style not in STYLES:
        raise PartitaError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    if pattern is not None and pattern not in PATTERNS:
        raise PartitaError(f"--pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    if style == "chorale" and chords is not None:
        raise PartitaError("--chords works with --style pop and folk; a chorale's chords are the model's")
    if style == "chorale" and density is not None:
        raise PartitaError("--density works with --style pop and folk; a chorale moves one chord a beat")
    if style == "chorale" and chord_model is not None:
        raise PartitaError("--chord-model works with --style pop; a chorale's chords are chorale-harmony's")
    if density is not None and not 0 < float(density) <= 16:
        raise PartitaError(f"--density is notes a beat, above 0 and at most 16, not {density:g}")
    if (style != "pop" or model is None) and candidates not in (None, 1):
        raise PartitaError("--candidates works with --style pop and a --model (a transformer)")
    if style == "pop" and model is not None and pattern is not None:
        raise PartitaError("--pattern plays the chords without a model; with --model the texture is the model's")
    candidates = int(candidates if candidates is not None else (4 if density is not None and model is not None else 1))
    if not 1 <= candidates <= 16:
        raise PartitaError(f"--candidates must be 1 to 16, not {candidates}")
    score, name = _read(midi)
    track = choose_melody_track(score, melody_track, name=name)
    if chords is not None:
        parse_progression(chords)  # a bad symbol is an error before any work
    n = int(n)
    if n < 1:
        raise PartitaError(f"-n must be >= 1, got {n}")
    out = []
    if style == "chorale":
        return _chorale(score, track, model, n, config, options, progress)
    if style == "folk" or chords is not None:
        plan, method = rule_plan(score, track, chords=chords), "rule"
    else:
        plan, method = tagged_plan(score, track, load_tagger(chord_model)), "chords"
    if style == "folk" or model is None:
        pattern = pattern or default_pattern(style)
        new = render_plan(score, track, plan, pattern=pattern, every=_strike_every(density, pattern))
        for i in range(n):
            out.append(_result(score, track, [new.copy()], style, method, 0, i))
            out[-1].pattern = pattern
        return out
    from partita.generation import resolve_model

    model, tokenizer, _, bundle_config = resolve_model(model, device=device or "cpu")
    if not getattr(model.config, "fim", False):
        raise PartitaError("this model has no fill-in-the-middle markers: train it with 'partita train gpt --accompany MELODY:PIANO'")
    cfg = (config or bundle_config).replace(**options).replace(programs="0")
    cfg = cfg.checked()
    for i in range(n):
        new, ids, stops = _model_track(model, tokenizer, score, track, cfg.replace(seed=int(cfg.seed) + i), None, progress,
                                       candidates=candidates, density=None if density is None else float(density), plan=plan)
        snap_to_plan(new, plan)
        out.append(_result(score, track, [new], style, "model", len(ids) - 1, i))
        out[-1].ids, out[-1].stops = ids, stops
    return out


def default_pattern(style: str) -> str:
    """How a style plays its chords when no pattern is asked for: folk in block chords, pop in arpeggios."""
    return "block" if style == "folk" else "arpeggio"


def load_tagger(chord_model: Any = None) -> Any:
    """The chord tagger of a bundle (a folder, a ``Bundle`` or a shipped name; default ``pop-chords``)."""
    from partita.bundle import load as load_bundle
    from partita.pretrained import POP_CHORDS

    return load_bundle(chord_model, "chords", default=POP_CHORDS).model


def _strike_every(density: Optional[float], pattern: str) -> Optional[float]:
    """Beats between strikes for ``density`` notes a beat: block chords (about 4 notes each)
    struck every 2, 1 or 1/2 beats, broken chords moving every 2, 1, 1/2 or 1/4 beats, whichever
    comes nearest (None: the pattern's own)."""
    if density is None:
        return None
    if pattern == "arpeggio":  # a bass every half bar (1/2 a beat) and upper notes every e beats
        return min((1.0, 0.5, 0.25), key=lambda e: abs(np.log((0.5 + 1 / e) / float(density))))
    per = 4.0 if pattern == "block" else 1.0
    choices = (2.0, 1.0, 0.5) if pattern == "block" else (2.0, 1.0, 0.5, 0.25)
    return min(choices, key=lambda e: abs(np.log(per / e / float(density))))


def _chorale(score: Score, track: int, model: Any, n: int, config: Any, options: dict, progress: Any) -> list[Accompanied]:
    """``n`` harmonizations (alto, tenor, bass) of the soprano ``score.tracks[track]``."""
    from partita.bundle import load as load_bundle
    from partita.generation.chorale import harmonize
    from partita.generation.sampling import SamplingConfig
    from partita.pretrained import CHORALE_HARMONY

    bundle = load_bundle(model, "harmony", default=CHORALE_HARMONY)
    cfg = (config or SamplingConfig.of_bundle(bundle)).replace(**options).checked()
    out = []
    for i in range(n):
        voices = harmonize(bundle.model, score, track, temperature=cfg.temperature, seed=int(cfg.seed) + i)
        out.append(_result(score, track, voices, "chorale", "model", 0, i))
        if progress is not None:
            progress(i + 1, n)
    return out


def _result(score: Score, track: int, new: list, style: str, method: str, tokens: int, index: int) -> Accompanied:
    from partita.io.timing import bar_of, bar_starts

    out = score.copy()
    names = {t.name for t in out.tracks}
    for t in new:
        if t.name in names:  # the file has a PIANO (Alto...) track already: the new one is told apart
            t.name = f"{t.name} (accompaniment)"
        out.tracks.append(t)
    mel = score.tracks[track].notes.numpy()
    end = int((mel["time"] + mel["duration"]).max()) if len(mel["time"]) else 0
    bars = int(bar_of(bar_starts(score, end), max(end - 1, 0))) + 1
    return Accompanied(score=out, melody_track=track, melody_name=score.tracks[track].name or f"track {track + 1}",
                       added={t.name: int(t.note_num()) for t in new}, style=style, method=method, bars=bars, tokens=tokens,
                       index=index)
