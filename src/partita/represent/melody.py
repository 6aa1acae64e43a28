"""MusicVAE's melody representation: one event per 16th-note step, 130 classes.

A melody is a monophonic line on a grid of ``STEPS_PER_QUARTER = 4`` steps per quarter note.
Each step holds exactly one event:

    0..127   NOTE_ON of that MIDI pitch (ends whatever note was sounding)
    128      NOTE_OFF: the sounding note ends here, the line falls silent
    129      HOLD: nothing changes (a note goes on sounding, or a rest goes on)

MusicVAE (Roberts et al. 2018, after MelodyRNN) uses the same three kinds of event, with -1/-2 for
off/no-event and a pitch range cut to the piano; we keep all 128 pitches so that no melody has to
be transposed or dropped, and put the two special events after the pitches so that a class index
is a pitch whenever it is < 128.

Canonical sequences. Two spellings mean the same music when a NOTE_OFF arrives while nothing is
sounding (at the start, or after another NOTE_OFF): it ends nothing, exactly like a HOLD. The
canonical spelling is HOLD, so a rest is "NOTE_OFF, HOLD, HOLD, ..." after a note and "HOLD, ..."
at the start. ``canonicalize`` rewrites any sequence that way; everything this module produces is
canonical, and for canonical sequences events -> MIDI -> events is exact (tested). Any sequence of
ints in [0, 130) decodes without error: decoding a sequence equals decoding its canonical form.

Length. A MIDI file does not say how long the silence after its last note is, so
``events_to_score`` writes a marker named ``"end"`` at the end of the sequence and
``score_to_events`` reads the length back from it (without one: the last note-off, rounded up to
a whole 16-step bar). A note still sounding at the end of a sequence ends with the sequence.

Time signatures. Steps are 16th notes whatever the meter, counted in ticks from the start of the
file. A real bar has ``numerator * 16 / denominator`` steps (``meter_steps``), but windows, like
MusicVAE's, are counted in 16-step "bars" (four quarter notes) from tick 0. MusicVAE skips every
file whose bar is not 16 steps; we keep them by default (a 3/4 folk song still makes good
melodies) and ``strict_meter=True`` refuses them, as MusicVAE does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import numpy as np
import symusic
from symusic import Note, Score, Tempo, TextMeta, TimeSignature, Track

from partita.errors import PartitaError
from partita.io.midi import MidiError

if TYPE_CHECKING:  # corpora are read through their methods only: this layer imports no data code
    from partita.data.corpus import Corpus

NOTE_OFF = 128
HOLD = 129
NUM_CLASSES = 130
STEPS_PER_QUARTER = 4
STEPS_PER_BAR = 16  # a window "bar" is always 16 steps (4 quarter notes), as in MusicVAE
EVENT_DTYPE = np.int16  # small for storage; use .astype(np.int64) / torch .long() for embeddings
END_MARKER = "end"  # marker text that records the sequence length in the MIDI files we write
_MAX_CELLS = 1 << 22  # (pitch, segment) counts held at once by the skyline


@dataclass(eq=False)  # arrays do not compare with ==; compare .events with np.array_equal
class Melody:
    """One monophonic line taken from one track of a score.

    ``events[i]`` is the event at step ``start_step + i`` of the source score (steps count 16th
    notes from tick 0). ``start_step`` is a multiple of 16, so ``i % 16`` is the position in the
    (16-step) bar both here and in the source.
    """

    events: np.ndarray
    track: int  # index of the source track in score.tracks
    program: int  # General MIDI program of the source track
    start_step: int = 0
    name: str = ""  # the source track's name

    def __len__(self) -> int:
        return len(self.events)

    @property
    def n_notes(self) -> int:
        return int(np.count_nonzero(self.events < NOTE_OFF))

    @property
    def bars(self) -> float:
        return len(self.events) / STEPS_PER_BAR

    def to_score(self, **kwargs) -> Score:
        """Decode to a one-track score with this melody's program (see ``events_to_score``; pass
        ``frame=`` the source score and ``start_step=self.start_step`` to put it back in place)."""
        kwargs.setdefault("program", self.program)
        return events_to_score(self.events, **kwargs)


# ----------------------------------------------------------------------------- checking events


def validate(events) -> np.ndarray:
    """Return ``events`` as an ``EVENT_DTYPE`` array, or raise ValueError if it is not events.

    Events are integers in [0, NUM_CLASSES); the last axis is time (1-D: one melody, 2-D: a batch).
    """
    arr = np.asarray(events)
    if arr.ndim == 0:
        raise ValueError("events must be a sequence of integers, not a scalar")
    if arr.size == 0:
        return np.zeros(arr.shape, EVENT_DTYPE)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"events must be integers, not {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= NUM_CLASSES:
        bad = lo if lo < 0 else hi
        raise ValueError(f"event {bad} is out of range: events are 0..127 (note on), 128 (off), 129 (hold)")
    return arr.astype(EVENT_DTYPE, copy=False)


def sounding(events) -> np.ndarray:
    """The pitch sounding at each step (-1 where silent), for any sequence of events.

    The state at a step is set by the last event that is not HOLD at or before it: a note-on makes
    its pitch sound, a NOTE_OFF (or nothing yet) means silence. Vectorised along the last axis.
    """
    ev = validate(events)
    steps = np.arange(ev.shape[-1])
    last = np.maximum.accumulate(np.where(ev != HOLD, steps, -1), axis=-1)
    value = np.take_along_axis(ev, np.maximum(last, 0), axis=-1)
    return np.where((last >= 0) & (value < NOTE_OFF), value, -1).astype(np.int16)


def canonicalize(events) -> np.ndarray:
    """The canonical spelling of ``events`` (a copy): a NOTE_OFF during silence becomes HOLD."""
    ev = validate(events)
    before = np.full(ev.shape, -1, np.int16)
    before[..., 1:] = sounding(ev)[..., :-1]
    return np.where((ev == NOTE_OFF) & (before < 0), HOLD, ev).astype(EVENT_DTYPE)


def is_canonical(events) -> bool:
    ev = validate(events)
    return bool(np.array_equal(ev, canonicalize(ev)))


def meter_steps(numerator: int, denominator: int) -> float:
    """Steps (16th notes) in one real bar of the time signature numerator/denominator."""
    return numerator * 4 * STEPS_PER_QUARTER / denominator


# ----------------------------------------------------------------------------- notes <-> steps


def _quantize(ticks: np.ndarray, tpq: int) -> np.ndarray:
    """Ticks to the nearest 16th-note step, halves rounding up (as Magenta's quantizer does).

    Integer arithmetic: floor(ticks * 4 / tpq + 1/2) without float error on long files.
    """
    ticks = np.asarray(ticks, np.int64)
    return (2 * STEPS_PER_QUARTER * ticks + tpq) // (2 * tpq)


def _steps_to_ticks(steps: np.ndarray, tpq: int) -> np.ndarray:
    return np.asarray(steps, np.int64) * (tpq // STEPS_PER_QUARTER)


def _track_steps(track: Track, tpq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, pitch) of a track's notes on the step grid; every note lasts >= 1 step."""
    n = track.notes.numpy()
    time = np.maximum(n["time"].astype(np.int64), 0)
    start = _quantize(time, tpq)
    end = np.maximum(_quantize(time + np.maximum(n["duration"], 0), tpq), start + 1)
    return start, end, n["pitch"].astype(np.int64)


def _is_polyphonic(start: np.ndarray, end: np.ndarray) -> bool:
    """Whether any note starts before an earlier one has ended (on the step grid)."""
    if len(start) < 2:
        return False
    order = np.argsort(start, kind="stable")
    s, e = start[order], end[order]
    return bool(np.any(s[1:] < np.maximum.accumulate(e)[:-1]))


def _notes_to_events(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, n_steps: int) -> np.ndarray:
    """The skyline of some notes as ``n_steps`` canonical events (the highest pitch sounding wins).

    For monophonic notes this is simply their encoding. Vectorised without a loop over steps or
    notes: the state can only change where a note starts or ends, so we cut time into the K
    segments between those boundaries, count per (pitch, segment) how many notes sound (a
    difference array and a cumulative sum), take the highest pitch with a nonzero count, and write
    an event at every boundary where the top line changes or its pitch is struck again.
    When a high note ends over a lower one that is still held, the lower one enters the line as a
    new note-on there, because a monophonic line cannot resume a note it never started.
    """
    events = np.full(n_steps, HOLD, EVENT_DTYPE)
    keep = start < n_steps
    start, end, pitch = start[keep], np.minimum(end[keep], n_steps), pitch[keep]
    if len(start) == 0:
        return events
    bounds = np.unique(np.concatenate([start, end]))  # segment j is [bounds[j], bounds[j+1])
    seg_on = np.searchsorted(bounds, start)
    seg_off = np.searchsorted(bounds, end)
    # Rows are pitches from high to low, taken in blocks so the count matrix stays a few MB even
    # for a track of a million notes (one block for ordinary tracks).
    pitches, row = np.unique(-pitch, return_inverse=True)
    pitches = -pitches
    n_seg = len(bounds)
    top = np.full(n_seg, -1, np.int64)
    block = max(1, _MAX_CELLS // n_seg)
    for lo in range(0, len(pitches), block):
        sel = (row >= lo) & (row < lo + block)
        rows = min(block, len(pitches) - lo)
        cell = (row[sel] - lo) * (n_seg + 1)
        size = rows * (n_seg + 1)
        diff = np.bincount(cell + seg_on[sel], minlength=size)
        diff -= np.bincount(cell + seg_off[sel], minlength=size)
        active = np.cumsum(diff.reshape(rows, n_seg + 1), axis=1)[:, :n_seg] > 0
        fill = (top < 0) & active.any(axis=0)
        top[fill] = pitches[lo + np.argmax(active[:, fill], axis=0)]
    # A note of the top pitch starting at a boundary is a new attack even if the pitch was sounding.
    struck = np.zeros(len(bounds), bool)
    struck[seg_on[pitch == top[seg_on]]] = True
    before = np.concatenate([[-1], top[:-1]])
    note_on = (top >= 0) & ((top != before) | struck)
    note_off = (top < 0) & (before >= 0)
    inside = bounds < n_steps
    events[bounds[note_on & inside]] = top[note_on & inside]
    events[bounds[note_off & inside]] = NOTE_OFF
    return events


def _end_marker_steps(score: Score) -> int | None:
    marks = [m.time for m in score.markers if m.text.strip().lower() == END_MARKER]
    return int(_quantize(np.array(max(marks)), score.tpq)) if marks else None


def _in_ticks(score: Score) -> Score:
    return score if score.ttype == symusic.TimeUnit.tick else score.to("tick")


# ----------------------------------------------------------------------------- decode / encode


def events_to_score(
    events,
    *,
    tpq: int = 480,
    qpm: float = 120.0,
    program: int = 0,
    velocity: int = 100,
    name: str = "melody",
    frame: Optional[Score] = None,
    start_step: int = 0,
) -> Score:
    """Decode events to a one-track score in ticks (4/4, one tempo, an ``"end"`` marker).

    Works for any ints in [0, 130): a note-on starts a note that lasts until the next event that
    is not HOLD, or to the end of the sequence; a NOTE_OFF in silence does nothing.

    ``frame``: a score whose tempo map, time and key signatures the output takes instead of
    ``qpm`` and 4/4 (rescaled to ``tpq``; what a melody read from a file goes back into), and
    ``start_step``: the step of that file where ``events`` begin.
    """
    if tpq <= 0 or tpq % STEPS_PER_QUARTER:
        raise ValueError(f"tpq must be a positive multiple of 4 (a step is tpq/4 ticks), not {tpq}")
    if not 1 <= velocity <= 127:
        raise ValueError(f"velocity must be in 1..127, not {velocity}")
    ev = validate(events)
    if ev.ndim != 1:
        raise ValueError(f"events_to_score decodes one melody (1-D events), got shape {ev.shape}")
    changes = np.flatnonzero(ev != HOLD)
    ends = np.append(changes[1:], len(ev))
    is_on = ev[changes] < NOTE_OFF
    on, off = changes[is_on], ends[is_on]
    start_step = int(start_step)
    t_on, t_off = _steps_to_ticks(on + start_step, tpq), _steps_to_ticks(off + start_step, tpq)

    score = Score(tpq)
    track = Track(name, int(program), False)
    track.notes = Note.from_numpy(
        time=t_on.astype(np.int32),
        duration=(t_off - t_on).astype(np.int32),
        pitch=ev[on].astype(np.int8),
        velocity=np.full(len(on), velocity, np.int8),
    )
    score.tracks.append(track)
    if frame is not None:
        frame = _in_ticks(frame)
        scale = tpq / int(frame.ticks_per_quarter)
        for t in frame.tempos:
            score.tempos.append(Tempo(int(round(t.time * scale)), float(t.qpm)))
        for t in frame.time_signatures:
            score.time_signatures.append(TimeSignature(int(round(t.time * scale)), int(t.numerator), int(t.denominator)))
        for k in frame.key_signatures:
            score.key_signatures.append(symusic.KeySignature(int(round(k.time * scale)), int(k.key), int(k.tonality)))
    if len(score.tempos) == 0 or min(t.time for t in score.tempos) > 0:
        score.tempos.insert(0, Tempo(0, float(qpm) if frame is None else 120.0))
    if len(score.time_signatures) == 0:
        score.time_signatures.append(TimeSignature(0, 4, 4))
    score.markers.append(TextMeta(int(_steps_to_ticks(len(ev) + start_step, tpq)), END_MARKER))
    return score


def score_to_events(score: Score, *, n_steps: int | None = None, skyline: bool = False) -> np.ndarray:
    """Encode a monophonic score (all pitched tracks together, drums ignored) from tick 0.

    ``n_steps`` defaults to the score's ``"end"`` marker, else to the last note-off rounded up to
    a whole 16-step bar; notes past it are cut. Overlapping notes raise ``MidiError("polyphonic")``
    unless ``skyline`` keeps the highest. The inverse of ``events_to_score`` on canonical events.
    """
    score = _in_ticks(score)
    parts = [_track_steps(t, score.tpq) for t in score.tracks if not t.is_drum and t.note_num()]
    if parts:
        start, end, pitch = (np.concatenate(x) for x in zip(*parts))
    else:
        start = end = pitch = np.zeros(0, np.int64)
    if not skyline and _is_polyphonic(start, end):
        raise MidiError(
            "polyphonic", "the score has overlapping notes; pass skyline=True to keep the highest"
        )
    if n_steps is None:
        n_steps = _end_marker_steps(score)
    if n_steps is None:
        last = int(end.max()) if len(end) else 0
        n_steps = -(-last // STEPS_PER_BAR) * STEPS_PER_BAR
    return _notes_to_events(start, end, pitch, int(n_steps))


# ----------------------------------------------------------------------------- extraction


def extract_melodies(
    score: Score,
    *,
    min_notes: int = 4,
    skyline: bool = True,
    programs: Iterable[int] | None = None,
    strict_meter: bool = False,
) -> list[Melody]:
    """One melody per pitched (non-drum) track, on the 16th-note grid.

    Onsets and offsets snap to the nearest step (tpq/4 ticks); a note shorter than a step keeps
    one step. A track with overlapping notes gives its skyline (the highest pitch sounding at each
    step) when ``skyline`` is True and is skipped when it is False. Tracks whose line has fewer
    than ``min_notes`` note-ons, or whose program is not in ``programs`` (MusicVAE used 0-31), are
    skipped too.

    Leading silence: a melody starts at the 16-step bar that holds its first onset (rests before
    that bar are dropped, rests inside it kept as HOLD so steps keep their place in the bar;
    ``Melody.start_step`` says where), and it ends at its last note-off padded with rest to a whole
    bar, as MusicVAE's extractor pads the end. Long rests inside stay; ``windows`` filters them.

    Raises ``MidiError`` with reason ``"no_melody"`` when no track gives a melody, and
    ``"meter"`` under ``strict_meter`` when a bar is not 16 steps (what MusicVAE skips).
    Run ``partita.io.preprocess(score, sustain=True)`` first for pedalled performances.
    """
    score = _in_ticks(score)
    if strict_meter:
        for ts in score.time_signatures:
            if meter_steps(ts.numerator, ts.denominator) != STEPS_PER_BAR:
                raise MidiError(
                    "meter",
                    f"time signature {ts.numerator}/{ts.denominator} does not have 16-step bars; "
                    "pass strict_meter=False to count 16-step windows anyway",
                )
    allowed = None if programs is None else {int(p) for p in programs}
    melodies, pitched, polyphonic, sparse = [], 0, 0, 0
    for index, track in enumerate(score.tracks):
        if track.is_drum or track.note_num() == 0:
            continue
        if allowed is not None and track.program not in allowed:
            continue
        pitched += 1
        start, end, pitch = _track_steps(track, score.tpq)
        if not skyline and _is_polyphonic(start, end):
            polyphonic += 1
            continue
        first = int(start.min()) // STEPS_PER_BAR * STEPS_PER_BAR
        length = -(-(int(end.max()) - first) // STEPS_PER_BAR) * STEPS_PER_BAR
        events = _notes_to_events(start - first, end - first, pitch, length)
        if np.count_nonzero(events < NOTE_OFF) < max(min_notes, 1):
            sparse += 1
            continue
        melodies.append(Melody(events, index, int(track.program), first, track.name))
    if not melodies:
        if pitched == 0:
            why = "it has no pitched notes (only drums, or no track with a wanted program)"
        elif polyphonic == pitched:
            why = "every pitched track is polyphonic; pass skyline=True to take the top line"
        else:
            why = f"no track has {min_notes} notes on its own line"
            if polyphonic:
                why += f" ({polyphonic} polyphonic track(s) skipped; skyline=True would keep them)"
        raise MidiError("no_melody", f"no melody to extract: {why}")
    return melodies


def windows(
    melody_events,
    bars: int = 2,
    hop_bars: int = 1,
    *,
    min_notes: int = 1,
    max_rest_bars: float | None = 1.0,
    max_silence: float | None = None,
    dedupe: bool = False,
) -> np.ndarray:
    """Slide a ``bars``-bar window (16 steps a bar) over one melody: ``[n, bars * 16]`` events.

    Windows start every ``hop_bars`` bars from the start of the melody, so they stay aligned to
    bars. Each window is made self-contained: if it opens in the middle of a note, its first step
    becomes that note's note-on (MusicVAE leaves a HOLD there, which decodes as silence), and the
    result is canonicalised. A window is skipped when it has fewer than ``min_notes`` note-ons,
    a rest of ``max_rest_bars`` bars or longer (MusicVAE's ``gap_bars=1``: its melodies end at
    such a rest, so no window of its holds one), or more than ``max_silence`` of its steps silent.
    ``None`` turns a filter off. Returns an empty ``[0, bars * 16]`` array when nothing fits.
    """
    if isinstance(melody_events, Melody):
        melody_events = melody_events.events
    ev = canonicalize(melody_events)
    if ev.ndim != 1:
        raise ValueError(f"windows takes one melody (1-D events), got shape {ev.shape}")
    if bars < 1 or hop_bars < 1:
        raise ValueError("bars and hop_bars must be at least 1")
    size, hop = bars * STEPS_PER_BAR, hop_bars * STEPS_PER_BAR
    if len(ev) < size:
        return np.zeros((0, size), EVENT_DTYPE)
    view = np.lib.stride_tricks.sliding_window_view
    starts = np.arange(0, len(ev) - size + 1, hop)
    rows = view(ev, size)[::hop].copy()
    pitch_now = sounding(ev)
    carried = (rows[:, 0] == HOLD) & (pitch_now[starts] >= 0)
    rows[carried, 0] = pitch_now[starts[carried]]
    rows = canonicalize(rows)

    keep = np.count_nonzero(rows < NOTE_OFF, axis=1) >= min_notes
    silent = pitch_now < 0
    if max_rest_bars is not None:
        # Length of the rest ending at each step, clipped to the part of it inside the window.
        steps = np.arange(len(ev))
        run = steps - np.maximum.accumulate(np.where(silent, -1, steps))
        longest = np.minimum(view(run, size)[::hop], np.arange(1, size + 1)).max(axis=1)
        keep &= longest < max_rest_bars * STEPS_PER_BAR
    if max_silence is not None:
        keep &= view(silent, size)[::hop].mean(axis=1) <= max_silence
    rows = rows[keep]
    if dedupe and len(rows):
        _, first = np.unique(rows, axis=0, return_index=True)
        rows = rows[np.sort(first)]
    return rows


def extract_windows(
    score: Score,
    *,
    bars: int = 2,
    hop_bars: int = 1,
    skyline: bool = True,
    programs: Iterable[int] | None = None,
    strict_meter: bool = False,
    min_notes: int = 1,
    max_rest_bars: float | None = 1.0,
    max_silence: float | None = None,
    dedupe: bool = True,
) -> np.ndarray:
    """Every training window of a score: ``extract_melodies`` then ``windows`` on each melody.

    Windows repeated within the score are kept once (MusicVAE's ``dedupe_event_lists``).
    Raises ``MidiError``: ``"no_melody"`` (see ``extract_melodies``), ``"too_short"`` when no
    melody is ``bars`` bars long, ``"too_sparse"`` when every window fails the filters.
    """
    melodies = extract_melodies(
        score, min_notes=1, skyline=skyline, programs=programs, strict_meter=strict_meter
    )
    size = bars * STEPS_PER_BAR
    longest = max(len(m) for m in melodies)
    if longest < size:
        raise MidiError(
            "too_short",
            f"the longest melody is {longest // STEPS_PER_BAR} bar(s), too short for one {bars}-bar window",
        )
    filters = dict(min_notes=min_notes, max_rest_bars=max_rest_bars, max_silence=max_silence)
    rows = np.concatenate([windows(m.events, bars, hop_bars, **filters) for m in melodies])
    if len(rows) == 0:
        raise MidiError(
            "too_sparse",
            f"every {bars}-bar window has too few notes or too long a rest (loosen min_notes/max_rest_bars)",
        )
    if dedupe:
        _, first = np.unique(rows, axis=0, return_index=True)
        rows = rows[np.sort(first)]
    return rows


# ----------------------------------------------------------------------------- corpora


def resolve_labels(corpus: "Corpus", labels: Optional[Iterable[str]]) -> Optional[list[str]]:
    """The corpus's own spelling of each asked label (case ignored); None keeps every label."""
    if not labels:
        return None
    known = {name.lower(): name for name in corpus.labels}
    out = []
    for name in labels:
        hit = known.get(str(name).strip().lower())
        if hit is None:
            raise PartitaError(f"label {name!r} is not in {corpus.path} (labels: {', '.join(corpus.labels)})")
        out.append(hit)
    return out


def corpus_windows(
    corpus: "Corpus",
    split: str,
    bars: int,
    *,
    labels: Optional[Iterable[str]] = None,
    hop_bars: int = 1,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[np.ndarray, dict]:
    """Melody windows ``[n, bars * 16]`` (int16) of a prepared corpus's split, and what was used.

    Every line of every piece (``extract_windows``: one line per track, skyline for polyphonic
    parts, so every voice of a chorale or quartet); training and evaluation read the same windows.
    Pieces without a usable window (no melody, too short, too sparse) are skipped and counted.
    ``labels`` (case ignored; None: all) keeps only those labels' pieces.
    """
    wanted = resolve_labels(corpus, labels)
    pieces = [i for i in corpus.indices(split=split) if wanted is None or corpus.pieces[i]["label"] in wanted]
    rows, used, skipped = [], 0, {}
    for n, i in enumerate(pieces, 1):
        try:
            rows.append(extract_windows(corpus.score(i), bars=bars, hop_bars=hop_bars))
            used += 1
        except MidiError as e:
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
        if progress:
            progress(n, len(pieces))
    size = bars * STEPS_PER_BAR
    out = np.concatenate(rows).astype(EVENT_DTYPE) if rows else np.zeros((0, size), EVENT_DTYPE)
    return out, {"split": split, "pieces": used, "skipped": skipped, "windows": int(len(out)), "labels": wanted}


def drop_windows(windows: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """``windows`` without the rows equal to a row of ``held_out``, or to one of its transpositions
    (windows compared as interval-and-rhythm shapes): a tune in two collections, or in two exports
    of one collection, stays on one side of a split."""
    def shapes(w: np.ndarray) -> np.ndarray:
        w = np.asarray(w).astype(np.int64)
        is_note = w < NOTE_OFF
        lowest = np.where(is_note, w, 127).min(axis=1, keepdims=True)
        shape = np.where(is_note, w - np.where(lowest == 127, 0, lowest), w)
        return np.ascontiguousarray(shape.astype(np.int16)).view(f"V{2 * w.shape[1]}").ravel()

    if len(windows) == 0 or len(held_out) == 0:
        return windows
    return windows[~np.isin(shapes(windows), shapes(held_out))]


__all__ = [
    "END_MARKER",
    "EVENT_DTYPE",
    "HOLD",
    "NOTE_OFF",
    "NUM_CLASSES",
    "STEPS_PER_BAR",
    "STEPS_PER_QUARTER",
    "Melody",
    "canonicalize",
    "corpus_windows",
    "drop_windows",
    "events_to_score",
    "extract_melodies",
    "extract_windows",
    "is_canonical",
    "meter_steps",
    "resolve_labels",
    "score_to_events",
    "sounding",
    "validate",
    "windows",
]
