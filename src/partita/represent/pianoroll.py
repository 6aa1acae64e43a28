"""Helical pianorolls: the ``[12, 6, T]`` input of the siamese ViT (after Harmonixr).

The roll covers the 72 MIDI notes F1..E7 (MIDI 29..100) as a grid of 12 pitch-class rows by
6 octave columns by ``T`` time frames. A pitch ``p`` lives at::

    i = p - 29                  # 0..71
    roll[i % 12, i // 12, t]    # pitch-class row, octave column, frame

so the pitch-class axis **starts at F**, not C: row 0 is F, row 1 is F#, ... row 11 is E (see
``PITCH_CLASS_NAMES``), and "octave" k runs from F to the E above it (octave 0 = F1..E2,
octave 5 = F6..E7). The point of this layout is the helix: reading the grid in
(octave, pitch-class) order is chromatic, so stepping one row past the last pitch class of octave
k lands on the first pitch class of octave k + 1. A 3D convolution that wraps around the
pitch-class axis (``nn/wraparound.py``) with a one-octave shift then sees a continuous pitch helix
instead of a seam. Unlike Harmonixr's code, which left the sixth octave empty, all 72 cells are
used.

Notes outside 29..100 are, by default, folded by whole octaves to the nearest in-range pitch of
the same pitch class (C0 and C1 are drawn as C2, C8 as C7), so a piece keeps its harmony;
``out_of_range="drop"`` discards them instead. Drum notes have no pitch and are always ignored.

Time is cut into frames of ``frame_seconds`` (50 ms by default); see :func:`pianoroll` for exactly
which frames a note lights and what value it writes. Everything is vectorised numpy: rendering a
piece costs a few array passes whatever its length, which matters because crops are drawn afresh
for every training step.
"""

from __future__ import annotations

import numpy as np

from partita.io.midi import pitched

#: The lowest and highest MIDI pitch the roll holds (F1 and E7).
LOWEST_PITCH = 29
HIGHEST_PITCH = 100
N_PITCH_CLASSES = 12
N_OCTAVES = 6
N_PITCHES = N_PITCH_CLASSES * N_OCTAVES  # 72

#: Names of the pitch-class rows: the axis starts at F because the range starts at F1.
PITCH_CLASS_NAMES = ("F", "F#", "G", "G#", "A", "A#", "B", "C", "C#", "D", "D#", "E")

MODES = ("binary", "velocity", "decay")
#: The fields a note array needs for a pianoroll.
_FIELDS = ("onset", "duration", "pitch", "velocity")
OUT_OF_RANGE = ("fold", "drop")

DEFAULT_FRAME_SECONDS = 0.05
#: In "decay" mode a note fades to this fraction of its velocity at its end, so that a long
#: note never becomes indistinguishable from silence.
DEFAULT_DECAY_FLOOR = 0.2

# Frame boundaries are computed from float seconds, and symusic converts ticks to seconds in
# float32: a note at 0.3 s arrives as 0.30000001, one at 0.15 s gives 0.15 / 0.05 = 2.99999...
# Times within this fraction of a frame of a boundary are snapped to it (1% of 50 ms is 0.5 ms,
# below MIDI's usual timing resolution and far above float32 error for pieces of hours).
_SNAP = 1e-2


def cell(pitch: int) -> tuple[int, int]:
    """The ``(pitch_class_row, octave)`` cell of an in-range MIDI ``pitch`` (29..100)."""
    if not LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
        raise ValueError(f"pitch {pitch} is outside the roll's range {LOWEST_PITCH}..{HIGHEST_PITCH}")
    i = pitch - LOWEST_PITCH
    return i % N_PITCH_CLASSES, i // N_PITCH_CLASSES


def chromatic(roll: np.ndarray) -> np.ndarray:
    """A ``[12, 6, T]`` roll as ``[72, T]`` with row ``j`` = MIDI pitch ``29 + j`` (for plots)."""
    return np.ascontiguousarray(roll.transpose(1, 0, 2)).reshape(N_PITCHES, roll.shape[-1])


def fold_pitches(pitch: np.ndarray) -> np.ndarray:
    """Move pitches outside 29..100 by whole octaves to the nearest in-range pitch of their class."""
    p = np.asarray(pitch, dtype=np.int64)
    below = np.maximum(LOWEST_PITCH - p, 0)
    above = np.maximum(p - HIGHEST_PITCH, 0)
    # ceil(k / 12) octaves up or down, with integer arithmetic: -(-k // 12).
    return p + 12 * (-(-below // 12)) - 12 * (-(-above // 12))


def _check(frame_seconds: float, mode: str, out_of_range: str, decay_floor: float) -> None:
    if not frame_seconds > 0:
        raise ValueError(f"frame_seconds must be positive, not {frame_seconds}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if out_of_range not in OUT_OF_RANGE:
        raise ValueError(f"out_of_range must be one of {OUT_OF_RANGE}, not {out_of_range!r}")
    if not 0.0 <= decay_floor <= 1.0:
        raise ValueError(f"decay_floor must be in [0, 1], not {decay_floor}")


def note_frames(onset: np.ndarray, end: np.ndarray, frame_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """First and last frame (inclusive) each note lights, for times measured from the roll's start.

    Frame ``t`` covers ``[t * fs, (t + 1) * fs)``. A note sounding over ``[onset, end)`` lights every
    frame it overlaps: ``first = floor(onset / fs)``, ``last = ceil(end / fs) - 1``, and at least
    one frame (``last >= first``) so that a very short or zero-length note is never lost. Times
    within 1% of a frame of a boundary count as on it (symusic's seconds are float32), i.e.
    ``first = floor(onset / fs + 0.01)`` and ``last = ceil(end / fs - 0.01) - 1``.
    """
    first = np.floor(np.asarray(onset) / frame_seconds + _SNAP).astype(np.int64)
    last = np.ceil(np.asarray(end) / frame_seconds - _SNAP).astype(np.int64) - 1
    return first, np.maximum(last, first)


def pianoroll(
    notes: np.ndarray,
    *,
    frame_seconds: float = DEFAULT_FRAME_SECONDS,
    mode: str = "binary",
    start: float = 0.0,
    duration: float | None = None,
    out_of_range: str = "fold",
    decay_floor: float = DEFAULT_DECAY_FLOOR,
) -> np.ndarray:
    """Render a note array (seconds) as a float32 ``[12, 6, T]`` helical pianoroll.

    ``notes`` is a ``NOTE_DTYPE`` array in seconds (``partita.io.midi.note_array``); drum notes are
    ignored. See the module docstring for the pitch layout (row 0 is F; cell of pitch ``p`` is
    ``((p - 29) % 12, (p - 29) // 12)``).

    Time window: frame ``t`` covers ``[start + t * fs, start + (t + 1) * fs)`` with
    ``fs = frame_seconds``; a note lights the frames it overlaps (:func:`note_frames`, at least one
    per note). With ``duration`` the roll has ``T = round(duration / fs)`` frames and only notes
    sounding inside the window are drawn, clipped to it (a note struck before ``start`` and still
    held shows from frame 0, with the value it has at that time). Without ``duration`` the roll runs
    to the frame of the last note-off (``T = 0`` for no notes). When ``start`` is a multiple of
    ``fs``, a windowed roll equals the same frames sliced out of the whole roll.

    ``mode``, where several notes land on one cell the maximum wins:

    - ``"binary"``: 1.0 where any note sounds.
    - ``"velocity"``: ``velocity / 127``.
    - ``"decay"``: the velocity fading linearly over the note, measured at frame centres::

          progress = clip((centre - onset) / duration, 0, 1)   # 0 when duration <= 0
          value    = velocity / 127 * (1 - (1 - decay_floor) * progress)

      with ``centre = start + (t + 0.5) * fs`` in absolute seconds, so a note's first frame has
      (about) its full velocity and its last ends near ``decay_floor`` times it. This mimics a
      piano's decay and tells a held note from a repeated one.

    ``out_of_range``: ``"fold"`` (default) moves pitches below 29 up and above 100 down by whole
    octaves into the range; ``"drop"`` discards them.
    """
    _check(frame_seconds, mode, out_of_range, decay_floor)
    if duration is not None and duration < 0:
        raise ValueError(f"duration must be >= 0, not {duration}")
    notes = pitched(notes, require=_FIELDS)

    pitch = notes["pitch"].astype(np.int64)
    if out_of_range == "fold":
        pitch = fold_pitches(pitch)
    keep = (pitch >= LOWEST_PITCH) & (pitch <= HIGHEST_PITCH)
    notes, pitch = notes[keep], pitch[keep]

    onset = notes["onset"].astype(np.float64)
    dur = notes["duration"].astype(np.float64)
    first, last = note_frames(onset - start, onset + dur - start, frame_seconds)

    if duration is not None:
        n_frames = int(round(duration / frame_seconds))
    else:
        n_frames = max(int(last.max()) + 1, 0) if len(last) else 0
    # Clip to the window and forget notes that fall wholly outside it.
    first, last = np.maximum(first, 0), np.minimum(last, n_frames - 1)
    inside = first <= last
    first, last, pitch, onset, dur = first[inside], last[inside], pitch[inside], onset[inside], dur[inside]
    velocity = notes["velocity"][inside].astype(np.float64)

    roll = np.zeros(N_PITCHES * n_frames, np.float32)
    if len(first) == 0 or n_frames == 0:
        return roll.reshape(N_PITCH_CLASSES, N_OCTAVES, n_frames)

    # One entry per lit (note, frame) cell, without a Python loop: cell k of the run of note j is
    # base[j] + k, so the flat indices are one repeat plus one arange. int32 halves the memory
    # traffic (72 * T stays far below 2**31 for any piece prepare accepts).
    idx = np.int32 if N_PITCHES * n_frames < 2**31 else np.int64
    counts = last - first + 1
    run_start = np.cumsum(counts) - counts
    i = pitch - LOWEST_PITCH
    row = (i % N_PITCH_CLASSES) * N_OCTAVES + i // N_PITCH_CLASSES  # (pitch class, octave), C order
    shift = (first - run_start).astype(idx)
    cells = np.arange(counts.sum(), dtype=idx)
    flat = cells + np.repeat((row * n_frames).astype(idx) + shift, counts)

    if mode == "binary":
        roll[flat] = 1.0
    else:
        value = np.repeat((velocity / 127.0).astype(np.float32), counts)
        if mode == "decay":
            frame = cells + np.repeat(shift, counts)
            centre = start + (frame + 0.5) * frame_seconds
            d = np.where(dur > 0, dur, np.inf)  # zero-length notes do not decay
            progress = np.clip((centre - np.repeat(onset, counts)) / np.repeat(d, counts), 0.0, 1.0)
            value *= (1.0 - (1.0 - decay_floor) * progress).astype(np.float32)
        # Max per cell (numpy >= 1.25 made ufunc.at fast: ~10x a sort-based max here).
        np.maximum.at(roll, flat, value)
    return roll.reshape(N_PITCH_CLASSES, N_OCTAVES, n_frames)


def _span_frames(notes: np.ndarray, frame_seconds: float, out_of_range: str) -> tuple[int, int]:
    """First frame of the first note and one past the frame of the last note-off (0, 0 if none)."""
    notes = pitched(notes, require=_FIELDS)
    if out_of_range == "drop":
        notes = notes[(notes["pitch"] >= LOWEST_PITCH) & (notes["pitch"] <= HIGHEST_PITCH)]
    if len(notes) == 0:
        return 0, 0
    onset = notes["onset"].astype(np.float64)
    first, last = note_frames(onset, onset + notes["duration"], frame_seconds)
    return int(first.min()), int(last.max()) + 1


def _crop(notes, window_seconds, pick, frame_seconds, mode, out_of_range, decay_floor, return_start):
    _check(frame_seconds, mode, out_of_range, decay_floor)
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be positive, not {window_seconds}")
    n_frames = int(round(window_seconds / frame_seconds))
    lo, hi = _span_frames(notes, frame_seconds, out_of_range)
    # Windows start on the global frame grid, between the first onset and the last start that
    # still fits the window; a piece shorter than the window starts at its first note and the
    # roll is zero-padded at the end.
    start_frame = pick(lo, max(lo, hi - n_frames))
    start = start_frame * frame_seconds
    roll = pianoroll(
        notes,
        frame_seconds=frame_seconds,
        mode=mode,
        start=start,
        duration=n_frames * frame_seconds,
        out_of_range=out_of_range,
        decay_floor=decay_floor,
    )
    return (roll, start) if return_start else roll


def random_crop(
    notes: np.ndarray,
    window_seconds: float,
    rng: np.random.Generator,
    *,
    frame_seconds: float = DEFAULT_FRAME_SECONDS,
    mode: str = "binary",
    out_of_range: str = "fold",
    decay_floor: float = DEFAULT_DECAY_FLOOR,
    return_start: bool = False,
):
    """The ``[12, 6, round(window_seconds / frame_seconds)]`` roll of a random window of the piece.

    The window starts on a frame boundary drawn uniformly (with ``rng``, a seeded
    ``np.random.Generator``, so the same seed gives the same crop) between the frame of the first
    onset and the last start at which the window still ends by the last note-off. Leading silence
    is skipped so that short windows are not wasted on it. A piece shorter than the window starts
    at its first note and is zero-padded at the end. With ``return_start`` the start time in
    seconds comes back too, as ``(roll, start)``.
    """
    def pick(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi + 1))

    return _crop(notes, window_seconds, pick, frame_seconds, mode, out_of_range, decay_floor, return_start)


def center_crop(
    notes: np.ndarray,
    window_seconds: float,
    *,
    frame_seconds: float = DEFAULT_FRAME_SECONDS,
    mode: str = "binary",
    out_of_range: str = "fold",
    decay_floor: float = DEFAULT_DECAY_FLOOR,
    return_start: bool = False,
):
    """Like :func:`random_crop`, but the window sits in the middle of the possible starts.

    Deterministic, for evaluation and embedding: the start frame is the midpoint (rounded down)
    between the first onset's frame and the last start that fits.
    """
    def pick(lo: int, hi: int) -> int:
        return (lo + hi) // 2

    return _crop(notes, window_seconds, pick, frame_seconds, mode, out_of_range, decay_floor, return_start)
