"""Accompaniment: given a melody, write the tracks under it.

::

    import partita
    result = partita.accompany("melody.mid", style="folk", seed=0)[0]
    result.score  # the user's file, every note as it was, plus a new track "PIANO"

The user's tracks are kept exactly (every note, in ticks, every meta event; a copy of the
``Score`` as symusic read it) and the new notes go into a new named track. Styles:

* ``pop``: a GPT trained to write POP909's PIANO track under its MELODY (``gpt-accompany``;
  ``partita train gpt --accompany MELODY:PIANO``). The melody is read window by window
  (``partita.data.accompany``: ``[SUFFIX, melody bars, MIDDLE, piano bars]``): the first window
  writes ``WINDOW_BARS`` bars, every later one ``WINDOW_BARS - PREFIX_BARS`` new bars after the last
  ``PREFIX_BARS`` bars it wrote, so a melody of any length is accompanied; the sampler's bar stop
  (``FillPrompt.end_bar``) ends each window.
* ``folk``: block chords, one diatonic triad per half bar chosen from the melody's pitch classes
  (``rule_chords``): the rule baseline of ``partita eval accompany``, given as a style of its own
  until a folk model is trained.
* ``chorale``: alto, tenor and bass under a soprano (``partita.generation.chorale``: a chord model
  counted from Bach's chorales, ``chorale-harmony``, with a voice-leading search), three named
  tracks.

``chords="C G Am F"`` imposes a progression, one chord per bar, repeated: the rule voices it; with
the model, each new note's pitch moves to the nearest tone of its bar's chord (the model's rhythm
and texture, the user's harmony).
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

__all__ = ["STYLES", "Accompanied", "accompany", "beat_phase", "choose_melody_track", "impose_chords", "melody_only", "parse_progression",
           "read_songs", "rule_chords", "track_tokens"]

STYLES = ("pop", "folk", "chorale")
PATTERNS = ("block", "broken")  # folk: chords struck together, or broken one note a beat
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
    method: str = "model"  # "model" | "rule"
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
    if len(starts) > 1 and np.min(np.diff(starts)) < 2 * tpq:
        return np.arange(0, int(starts[-1]) + 2 * tpq, 2 * tpq, dtype=np.int64)
    out = []
    for a, b in zip(starts[:-1], starts[1:]):
        beats = (b - a) / int(score.ticks_per_quarter)
        out.append(a)
        if beats >= 4 and round(beats) % 2 == 0:
            out.append(a + (b - a) // 2)
    out.append(starts[-1])
    return np.asarray(out, np.int64)


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


def rule_chords(score: Score, melody_track: int, *, chords: Any = None, velocity: int = 70,
                pattern: str = "block", every: Optional[float] = None) -> symusic.core.TrackTick:
    """The rule accompaniment (the baseline): block chords in a new "PIANO" track, one chord per half
    bar, each a bass root and the triad below the melody. Half bars start on the melody's beats
    (``beat_phase``). The chord is the diatonic triad of the melody's key (Krumhansl-Kessler) holding most of the melody's sounding duration in that half bar
    (ties: the chord before, then the tonic, IV, V first); with ``chords`` (``"C G Am F"``), those,
    one per bar. ``pattern="broken"``: the same chords broken, one note a beat (the bass on the
    first beat of the half bar, then the chord's upper notes in turn, rising). ``every``: beats
    between strikes (block: the chord struck again; broken: the next note), default the half bar
    (block) or one beat (broken)."""
    from partita.io.timing import bar_of, bar_starts

    if pattern not in PATTERNS:
        raise PartitaError(f"--pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    beat = int(score.ticks_per_quarter)
    mel = score.tracks[melody_track].notes.numpy()
    track = symusic.core.TrackTick("PIANO", 0, False)
    if len(mel["time"]) == 0:
        return track
    end = int((mel["time"] + mel["duration"]).max())
    seg = _segments(score, end) + beat_phase(mel["time"], int(score.ticks_per_quarter))
    progression = parse_progression(chords) if chords is not None else None
    tonic, mode = estimate_key(mel["pitch"], mel["duration"])
    triads = _diatonic_triads(tonic, mode)
    prior = np.array([0.03, 0.0, 0.0, 0.02, 0.02, 0.01])
    starts = bar_starts(score, end)
    times, durs, pitches = [], [], []
    prev = 0
    m_on, m_off = mel["time"], mel["time"] + mel["duration"]
    for a, b in zip(seg[:-1], seg[1:]):
        overlap = np.clip(np.minimum(m_off, b) - np.maximum(m_on, a), 0, None).astype(float)
        if overlap.sum() == 0 and a >= end:
            break
        if progression is not None:
            root, intervals, bass = progression[int(bar_of(starts, a)) % len(progression)]
            pcs = sorted(_chord_set((root, intervals, None)))
            root = (bass if bass is not None else root) % 12
        else:
            w = np.bincount(mel["pitch"] % 12, weights=overlap, minlength=12) / max(float(overlap.sum()), 1.0)
            scores = [sum(w[p] for p in t) + prior[k] + (0.05 if k == prev else 0.0) for k, t in enumerate(triads)]
            prev = int(np.argmax(scores)) if overlap.sum() > 0 else prev
            t = triads[prev]
            root = (tonic + ([0, 2, 4, 5, 7, 9] if mode == "major" else [0, 3, 5, 7, 8, 10])[prev]) % 12
            pcs = sorted(t)
        sounding = overlap > 0
        top = int(mel["pitch"][sounding].min()) if sounding.any() else 72
        voiced = list(_voice(pcs, root, top))
        step = max(int(round((every or 1.0) * beat)), 1)
        if pattern == "broken" and b - a >= 2 * step and len(voiced) > 1:
            onsets = list(range(int(a), int(b), step))
            for j, t0 in enumerate(onsets):
                p = voiced[0] if j == 0 else voiced[1 + (j - 1) % (len(voiced) - 1)]
                times.append(t0), durs.append((onsets[j + 1] if j + 1 < len(onsets) else int(b)) - t0), pitches.append(p)
            continue
        onsets = list(range(int(a), int(b), step)) if every is not None and pattern == "block" else [int(a)]
        for j, t0 in enumerate(onsets):
            t1 = onsets[j + 1] if j + 1 < len(onsets) else int(b)
            for p in voiced:
                times.append(t0), durs.append(t1 - t0), pitches.append(p)
    if times:
        track.notes = symusic.Note.from_numpy(time=np.asarray(times, np.int32), duration=np.asarray(durs, np.int32),
                                              pitch=np.asarray(pitches, np.int8), velocity=np.full(len(times), velocity, np.int8))
    return track


def impose_chords(track, score: Score, chords: Any) -> None:
    """Move every note of ``track`` (in place) to the nearest tone of its bar's chord (``chords``,
    one per bar, repeated; ties go down)."""
    from partita.io.timing import bar_of, bar_starts

    progression = [_chord_set(c) for c in parse_progression(chords)]
    n = track.notes.numpy()
    if len(n["time"]) == 0:
        return
    bars = bar_of(bar_starts(score, int(n["time"].max())), n["time"])
    pitch = n["pitch"].astype(np.int64)
    for i in range(len(pitch)):
        pcs = progression[int(bars[i]) % len(progression)]
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


def _harmony(score: Score, melody_track: int) -> tuple[np.ndarray, list[frozenset]]:
    """The melody's harmony as the rule reads it: segment starts (ticks) and the pitch classes of
    the rule's chord in each (``rule_chords``)."""
    chords = rule_chords(score, melody_track).notes.numpy()
    if len(chords["time"]) == 0:
        return np.zeros(0, np.int64), []
    starts = np.unique(chords["time"]).astype(np.int64)
    k = np.searchsorted(starts, chords["time"])
    return starts, [frozenset(int(p) % 12 for p in chords["pitch"][k == i]) for i in range(len(starts))]


def _candidate_score(notes: dict, harmony: tuple, beats: float, density: Optional[float]) -> float:
    """How well a window's new notes (file ticks) agree with the melody's harmony (the share of
    their duration whose pitch class is in the rule's chord at their onset), less the distance of
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
                 density: Optional[float] = None) -> tuple[Any, np.ndarray, dict]:
    """The model's accompaniment of ``score``'s melody, as a "PIANO" track in the file's ticks;
    with ``candidates`` > 1, each window is sampled that many times and the candidate that
    agrees best with the melody's harmony (and is nearest ``density`` notes a beat) is kept."""
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
    harmony = _harmony(score, melody_track) if candidates > 1 else None
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
    pattern: str = "block",
    density: Optional[float] = None,
    candidates: Optional[int] = None,
    **options: Any,
) -> list[Accompanied]:
    """``n`` accompaniments of the melody of ``midi`` (a path, bytes or ``symusic.Score``).

    ``style``: ``pop`` (the model; ``model``: a bundle folder, a ``Bundle`` or a shipped name,
    default ``gpt-accompany``; the default style when a model is given or that one is installed,
    else ``folk``), ``folk`` (the rule's block chords) or ``chorale`` (alto, tenor and
    bass; ``model``: a harmony bundle, default ``chorale-harmony``).
    ``melody_track``: the melody's track, 1-based (default: chosen, ``choose_melody_track``).
    ``chords``: a progression to impose, one chord per bar. Sampling options are
    ``SamplingConfig`` fields (``temperature``, ``top_p``, ``seed``...); version ``i`` uses seed
    ``seed + i``. Key, tempo and metre are the file's. ``pattern`` (folk): ``block`` or
    ``broken`` chords. ``density``: notes a beat to aim at (folk: how often chords are struck,
    or broken notes move; pop: the candidate nearest it is kept). ``candidates`` (pop): windows
    sampled per window, the one that agrees best with the melody's harmony (and ``density``)
    kept (default 1, or 4 with a ``density``).
    """

    if style is None:
        from partita.pretrained import GPT_ACCOMPANY, ROOT

        style = "pop" if model is not None or (ROOT / GPT_ACCOMPANY / "config.json").exists() else "folk"
    if style not in STYLES:
        raise PartitaError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    if pattern not in PATTERNS:
        raise PartitaError(f"--pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    if style == "chorale" and chords is not None:
        raise PartitaError("--chords works with --style pop and folk; a chorale's chords are the model's")
    if style == "chorale" and density is not None:
        raise PartitaError("--density works with --style pop and folk; a chorale moves one chord a beat")
    if density is not None and not 0 < float(density) <= 16:
        raise PartitaError(f"--density is notes a beat, above 0 and at most 16, not {density:g}")
    if style != "pop" and candidates not in (None, 1):
        raise PartitaError("--candidates works with --style pop (the model)")
    candidates = int(candidates if candidates is not None else (4 if density is not None else 1))
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
    if style == "folk":
        new = rule_chords(score, track, chords=chords, pattern=pattern, every=_strike_every(density, pattern))
        for i in range(n):
            out.append(_result(score, track, [new.copy()], style, "rule", 0, i))
        return out
    if style == "chorale":
        return _chorale(score, track, model, n, config, options, progress)
    from partita.generation import resolve_model

    if model is None:
        from partita.pretrained import GPT_ACCOMPANY, bundle_path

        model = str(bundle_path(GPT_ACCOMPANY))
    model, tokenizer, _, bundle_config = resolve_model(model, device=device or "cpu")
    if not getattr(model.config, "fim", False):
        raise PartitaError("this model has no fill-in-the-middle markers: train it with 'partita train gpt --accompany MELODY:PIANO'")
    cfg = (config or bundle_config).replace(**options).replace(programs="0")
    cfg = cfg.checked()
    for i in range(n):
        new, ids, stops = _model_track(model, tokenizer, score, track, cfg.replace(seed=int(cfg.seed) + i), None, progress,
                                       candidates=candidates, density=None if density is None else float(density))
        if chords is not None:
            impose_chords(new, score, chords)
        out.append(_result(score, track, [new], style, "model", len(ids) - 1, i))
        out[-1].ids, out[-1].stops = ids, stops
    return out


def _strike_every(density: Optional[float], pattern: str) -> Optional[float]:
    """Beats between strikes for ``density`` notes a beat: block chords (about 4 notes each)
    struck every 2, 1 or 1/2 beats, broken chords moving every 2, 1, 1/2 or 1/4 beats, whichever
    comes nearest (None: the pattern's own)."""
    if density is None:
        return None
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
