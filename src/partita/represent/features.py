"""Hand-made features of a piece: the inputs of the feature baselines and of the musical metrics.

Each function takes a ``NOTE_DTYPE`` note array in seconds (``partita.io.midi.note_array``) and
returns numpy values; :func:`feature_vector` concatenates them into one fixed-length float32
vector whose dimensions ``FEATURE_NAMES`` describes. Drum notes have no pitch, so every feature
ignores them. Empty input gives zeros everywhere (never NaN), so a vector can always be built.

The features are simple on purpose: they are the "what a statistician would try first" baseline
that the learned embeddings have to beat, and they must be cheap enough to compute on a whole
corpus. Everything is vectorised numpy.

Onsets closer than ``chord_tolerance`` seconds (30 ms by default) are treated as one onset (a
chord) where the features need onsets: performed MIDI never strikes a chord's notes at exactly the
same time. Groups are chained: a new group starts where the gap to the previous onset exceeds the
tolerance.
"""

from __future__ import annotations

import numpy as np

from partita.io.midi import pitched

#: Interval histogram bins: -12..+12 semitones, larger leaps clipped to the end bins.
MAX_INTERVAL = 12
N_INTERVAL_BINS = 2 * MAX_INTERVAL + 1

#: Edges (seconds) of the duration and inter-onset-interval histograms: powers of two from 1/32 s
#: to 4 s. Bin 0 holds values below 1/32 s, bin k values in [edge[k-1], edge[k]), the last bin
#: values of 4 s and more, so there are ``len(TIME_EDGES) + 1`` = 9 bins. Log spacing because
#: durations are perceived (and written) in ratios: a 32nd at 120 qpm is 1/16 s, a whole note 2 s.
TIME_EDGES = 2.0 ** np.arange(-5, 3)
N_TIME_BINS = len(TIME_EDGES) + 1

DEFAULT_CHORD_TOLERANCE = 0.03

PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _normalise(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts, dtype=np.float64)


def onset_groups(onset: np.ndarray, tolerance: float) -> np.ndarray:
    """Group number of each onset (sorted): a new group where the gap exceeds ``tolerance``."""
    if len(onset) == 0:
        return np.zeros(0, np.int64)
    new = np.empty(len(onset), bool)
    new[0] = True
    new[1:] = np.diff(onset) > tolerance
    return np.cumsum(new) - 1


def pitch_class_histogram(notes: np.ndarray, *, by_duration: bool = False) -> np.ndarray:
    """Share of each pitch class, C..B (``pitch % 12``; index 0 is C), summing to 1.

    Counts notes, or with ``by_duration`` weighs each note by its duration in seconds (what the
    ear hears held, rather than how many times a key is struck). Note that the pianoroll's
    pitch-class axis starts at F; this one follows the usual C convention.
    """
    notes = pitched(notes, sort=True)
    weights = notes["duration"].astype(np.float64) if by_duration else None
    counts = np.bincount(notes["pitch"].astype(np.int64) % 12, weights=weights, minlength=12)
    return _normalise(counts.astype(np.float64))


def melodic_line(
    notes: np.ndarray, *, line: str = "top", chord_tolerance: float = DEFAULT_CHORD_TOLERANCE
) -> np.ndarray:
    """The pitch sequence the interval features read.

    ``"top"``: the highest pitch of each onset group (the melody of most textures: a chord
    contributes its top note, so chord tones do not count as leaps). ``"all"``: every note in order
    of onset, then pitch (a chord then reads as a rising arpeggio).
    """
    notes = pitched(notes, sort=True)
    pitch = notes["pitch"].astype(np.int64)
    if line == "all":
        return pitch
    if line != "top":
        raise ValueError(f"line must be 'top' or 'all', not {line!r}")
    if len(pitch) == 0:
        return pitch
    groups = onset_groups(notes["onset"].astype(np.float64), chord_tolerance)
    top = np.full(groups[-1] + 1, np.iinfo(np.int64).min)
    np.maximum.at(top, groups, pitch)
    return top


def interval_histogram(
    notes: np.ndarray, *, line: str = "top", chord_tolerance: float = DEFAULT_CHORD_TOLERANCE
) -> np.ndarray:
    """Share of each melodic interval -12..+12 semitones (25 bins; index 12 is the unison).

    Intervals are differences between consecutive pitches of :func:`melodic_line` (``"top"`` by
    default); leaps beyond an octave are clipped into the +-12 bins. Sums to 1 (zeros if fewer than
    two onsets).
    """
    steps = np.diff(melodic_line(notes, line=line, chord_tolerance=chord_tolerance))
    bins = np.clip(steps, -MAX_INTERVAL, MAX_INTERVAL) + MAX_INTERVAL
    counts = np.bincount(bins, minlength=N_INTERVAL_BINS)
    return _normalise(counts.astype(np.float64))


def pitch_range(notes: np.ndarray) -> np.ndarray:
    """``[lowest, highest, highest - lowest]`` MIDI pitch (zeros for no notes)."""
    pitch = pitched(notes, sort=True)["pitch"].astype(np.float64)
    if len(pitch) == 0:
        return np.zeros(3)
    lo, hi = pitch.min(), pitch.max()
    return np.array([lo, hi, hi - lo])


def note_density(notes: np.ndarray) -> float:
    """Notes per second between the first onset and the last note-off (0 for no notes).

    Leading silence is not counted, so an offset in a file does not change the density; a piece
    of zero length (only zero-duration notes at one time) has density 0.
    """
    notes = pitched(notes, sort=True)
    if len(notes) == 0:
        return 0.0
    span = float((notes["onset"] + notes["duration"]).max() - notes["onset"].min())
    return len(notes) / span if span > 0 else 0.0


def _time_histogram(values: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(TIME_EDGES, values, side="right"), minlength=N_TIME_BINS)
    return _normalise(counts.astype(np.float64))


def duration_histogram(notes: np.ndarray) -> np.ndarray:
    """Share of note durations in each of the log-spaced ``TIME_EDGES`` bins (9 bins, seconds)."""
    return _time_histogram(pitched(notes, sort=True)["duration"].astype(np.float64))


def ioi_histogram(notes: np.ndarray, *, chord_tolerance: float = DEFAULT_CHORD_TOLERANCE) -> np.ndarray:
    """Share of inter-onset intervals in each ``TIME_EDGES`` bin (9 bins, seconds).

    An IOI is the time between consecutive onset groups (a group's time is its first onset), so
    the zero gaps inside chords do not swamp the histogram.
    """
    onset = pitched(notes, sort=True)["onset"].astype(np.float64)
    groups = onset_groups(onset, chord_tolerance)
    starts = onset[np.r_[True, groups[1:] != groups[:-1]]] if len(onset) else onset
    return _time_histogram(np.diff(starts))


def polyphony(notes: np.ndarray) -> np.ndarray:
    """``[mean, max]`` number of notes sounding at once.

    Computed by an event sweep: +1 at each onset, -1 at each note-off, ends sorted before starts at
    the same time (a note released as the next one starts is not an overlap). The mean is weighted
    by time and taken over the time when at least one note sounds, so rests do not pull it down: a
    held chord of n notes gives ``[n, n]``, a melody with rests ``[1, 1]``. Zero-length notes sound
    for no time and are left out. Zeros for no notes.
    """
    notes = pitched(notes, sort=True)
    notes = notes[notes["duration"] > 0]
    if len(notes) == 0:
        return np.zeros(2)
    onset = notes["onset"].astype(np.float64)
    end = onset + notes["duration"]
    times = np.concatenate([onset, end])
    delta = np.concatenate([np.ones(len(onset), np.int64), -np.ones(len(end), np.int64)])
    order = np.lexsort((delta, times))  # at equal times, -1 (ends) before +1 (starts)
    times, delta = times[order], delta[order]
    count = np.cumsum(delta)  # notes sounding from times[k] until times[k + 1]
    span = np.diff(times)
    sounding = count[:-1] > 0
    covered = span[sounding].sum()
    mean = float((count[:-1] * span)[sounding].sum() / covered) if covered > 0 else 0.0
    return np.array([mean, float(count.max())])


def velocity_stats(notes: np.ndarray) -> np.ndarray:
    """``[mean, std, 10th, 50th, 90th percentile]`` of the note velocities (1..127; zeros for no
    notes).

    How hard keys are struck: a performance's dynamics, a composer's writing for the instrument
    (a Liszt fortissimo, a Bach fugue's even touch). A quantised score written at one velocity has
    a standard deviation of 0 and equal percentiles.
    """
    velocity = pitched(notes, sort=True)["velocity"].astype(np.float64)
    if len(velocity) == 0:
        return np.zeros(5)
    return np.r_[velocity.mean(), velocity.std(), np.percentile(velocity, [10, 50, 90])]


def harmonic_interval_histogram(notes: np.ndarray, *, chord_tolerance: float = DEFAULT_CHORD_TOLERANCE) -> np.ndarray:
    """Share of each interval class 0..6 between neighbouring notes of a chord (7 bins).

    Within each onset group (notes struck together, see the module doc), the notes are sorted by
    pitch and each pair of neighbours gives an interval class: the interval modulo 12 folded to
    0..6 (0: octave doubling, 3/4: thirds and sixths, 5: fourths and fifths, 1/6: seconds and
    tritones). The vertical counterpart of the interval histogram, it tells a harmony of stacked
    thirds from one of fourths, seconds and tritones. Sums to 1 (zeros with no chord).
    """
    notes = pitched(notes, sort=True)
    if len(notes) < 2:
        return np.zeros(7)
    groups = onset_groups(notes["onset"].astype(np.float64), chord_tolerance)
    pitch = notes["pitch"].astype(np.int64)
    order = np.lexsort((pitch, groups))
    pitch, groups = pitch[order], groups[order]
    same = groups[1:] == groups[:-1]
    step = (pitch[1:] - pitch[:-1])[same] % 12
    classes = np.minimum(step, 12 - step)
    return _normalise(np.bincount(classes, minlength=7).astype(np.float64))


def _time_bin_names(prefix: str) -> list[str]:
    edges = [f"{e:g}" for e in TIME_EDGES]
    return (
        [f"{prefix}_<{edges[0]}s"]
        + [f"{prefix}_{a}-{b}s" for a, b in zip(edges[:-1], edges[1:])]
        + [f"{prefix}_>={edges[-1]}s"]
    )


#: One name per dimension of :func:`feature_vector`, in order.
FEATURE_NAMES: tuple[str, ...] = tuple(
    [f"pc_{n}" for n in PITCH_CLASS_NAMES]
    + [f"interval_{k:+d}" for k in range(-MAX_INTERVAL, MAX_INTERVAL + 1)]
    + ["pitch_min", "pitch_max", "pitch_span", "note_density"]
    + _time_bin_names("duration")
    + _time_bin_names("ioi")
    + ["polyphony_mean", "polyphony_max"]
    + ["velocity_mean", "velocity_std", "velocity_p10", "velocity_p50", "velocity_p90"]
    + [f"harmonic_ic{k}" for k in range(7)]
)


def feature_vector(notes: np.ndarray, *, chord_tolerance: float = DEFAULT_CHORD_TOLERANCE) -> np.ndarray:
    """All features as one float32 vector of ``len(FEATURE_NAMES)`` (= 73) dimensions.

    Histograms are normalised, the rest are raw (MIDI pitch numbers, notes per second, note
    counts, velocities): models using the vector should standardise it (e.g. sklearn's
    ``StandardScaler``). The pitch-class histogram is the count-based one and intervals follow the
    top line. Velocity statistics and the chord intervals were added for real piano music: on ASAP
    they raise composer top-1 of a logistic regression from 0.65 to 0.72 (benchmarks/RESULTS.md).
    """
    parts = [
        pitch_class_histogram(notes),
        interval_histogram(notes, line="top", chord_tolerance=chord_tolerance),
        pitch_range(notes),
        [note_density(notes)],
        duration_histogram(notes),
        ioi_histogram(notes, chord_tolerance=chord_tolerance),
        polyphony(notes),
        velocity_stats(notes),
        harmonic_interval_histogram(notes, chord_tolerance=chord_tolerance),
    ]
    return np.concatenate([np.asarray(p, np.float64) for p in parts]).astype(np.float32)


# --- the descriptor of the feature embedder (partita.models.featnet) ---------------------------------

#: Krumhansl-Kessler key profiles (C major, C minor); the key of a piece is the rotation of either
#: that correlates best with its duration-weighted pitch-class histogram.
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_KEYS = np.stack([np.roll(_MAJOR, k) for k in range(12)] + [np.roll(_MINOR, k) for k in range(12)])
_KEYS = (_KEYS - _KEYS.mean(1, keepdims=True)) / _KEYS.std(1, keepdims=True)

#: Melodic steps of the top and bass lines: -13..+13 semitones, larger leaps in the end bins.
_LINE_BINS = 27
#: Register: 2-semitone bins from A0 (21) to C8 (108).
_REGISTER_BINS = 44
#: Chord sizes 1..8 (8 = eight notes or more).
_CHORD_SIZES = 8
#: log2 ratio of consecutive inter-onset intervals in half steps, -3..+3 (13 bins).
_RATIO_BINS = 13

#: One name per dimension of :func:`piano_descriptor`, in order.
DESCRIPTOR_NAMES: tuple[str, ...] = tuple(
    [f"pc_{n}" for n in PITCH_CLASS_NAMES]
    + [f"pc_time_{n}" for n in PITCH_CLASS_NAMES]
    + [f"degree_{k}" for k in range(12)]
    + [f"degree_time_{k}" for k in range(12)]
    + [f"top_step_{k:+d}" for k in range(-13, 14)]
    + [f"bass_step_{k:+d}" for k in range(-13, 14)]
    + [f"chord_size_{k}" for k in range(1, _CHORD_SIZES + 1)]
    + [f"harmonic_ic{k}" for k in range(7)]
    + [f"top_degrees_{a}_{b}" for a in range(12) for b in range(12)]
    + [f"bass_degree_{k}" for k in range(12)]
    + [f"register_{21 + 2 * k}" for k in range(_REGISTER_BINS)]
    + [f"ioi_ratio_{k / 2:+g}" for k in range(-6, 7)]
    + _time_bin_names("ioi")
    + _time_bin_names("duration")
    + ["log_notes_per_s", "log_onsets_per_s", "chord_size_mean", "velocity_mean", "velocity_std", "velocity_p10",
       "velocity_p50", "velocity_p90", "pitch_mean", "pitch_std", "top_bass_gap", "minor_key"]
)


def _hist(values: np.ndarray, bins: int, offset: int, weights: np.ndarray | None = None) -> np.ndarray:
    index = np.clip(np.asarray(values, np.int64) + offset, 0, bins - 1)
    return _normalise(np.bincount(index, weights=weights, minlength=bins).astype(np.float64))


def estimate_key(notes: np.ndarray) -> tuple[int, bool]:
    """``(tonic pitch class, minor)`` by the Krumhansl-Schmuckler method (duration-weighted,
    durations capped at 4 s so a held pedal note does not decide the key)."""
    notes = pitched(notes, sort=True)
    weights = np.minimum(notes["duration"].astype(np.float64), 4.0)
    profile = np.bincount(notes["pitch"].astype(np.int64) % 12, weights=weights, minlength=12)
    if not profile.any():
        return 0, False
    z = (profile - profile.mean()) / (profile.std() + 1e-12)
    best = int(np.argmax(_KEYS @ z))
    return best % 12, best >= 12


def piano_descriptor(notes: np.ndarray, *, chord_tolerance: float = 0.05) -> np.ndarray:
    """A 360-dimensional description of a piece or excerpt (``DESCRIPTOR_NAMES``), the input of the
    feature embedder: what it plays (pitch classes, as written and relative to its estimated key),
    how its lines move (top and bass steps, the top line's scale-degree transitions), how it is
    voiced (chord sizes, intervals within chords, register), its rhythm in tempo-free terms
    (ratios of successive inter-onset intervals) and as played (inter-onset and duration
    histograms, density, velocities).

    Histograms are square-rooted (the Hellinger map: distances between them then behave like
    Euclidean ones), scalars are on unit-like scales; a model standardises the whole vector.
    Onsets within ``chord_tolerance`` seconds form one chord (performed chords are never exact).
    Raises ``ValueError`` for fewer than 2 pitched notes.
    """
    notes = pitched(notes, sort=True)
    if len(notes) < 2:
        raise ValueError("fewer than 2 pitched notes to describe")
    onset = notes["onset"].astype(np.float64)
    duration = notes["duration"].astype(np.float64)
    pitch = notes["pitch"].astype(np.int64)
    velocity = notes["velocity"].astype(np.float64)
    tonic, minor = estimate_key(notes)

    pc = pitch % 12
    pc_count = _normalise(np.bincount(pc, minlength=12).astype(np.float64))
    pc_time = _normalise(np.bincount(pc, weights=np.minimum(duration, 4.0), minlength=12))
    degrees, degrees_time = np.roll(pc_count, -tonic), np.roll(pc_time, -tonic)

    groups = onset_groups(onset, chord_tolerance)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    top = np.maximum.reduceat(pitch, starts)
    bass = np.minimum.reduceat(pitch, starts)
    sizes = np.diff(np.r_[starts, len(pitch)])
    top_steps = _hist(np.diff(top), _LINE_BINS, 13)
    bass_steps = _hist(np.diff(bass), _LINE_BINS, 13)
    chord_sizes = _hist(sizes - 1, _CHORD_SIZES, 0)
    top_degree = (top - tonic) % 12
    transitions = _normalise(np.bincount(top_degree[:-1] * 12 + top_degree[1:], minlength=144).astype(np.float64))
    bass_degree = _normalise(np.bincount((bass - tonic) % 12, minlength=12).astype(np.float64))
    register = _hist((pitch - 21) // 2, _REGISTER_BINS, 0)

    chord_onsets = onset[starts]
    ioi = np.diff(chord_onsets)
    ioi = ioi[ioi > 0]
    ratios = _hist(np.round(2 * np.log2(ioi[1:] / ioi[:-1])), _RATIO_BINS, 6) if len(ioi) > 1 else np.zeros(_RATIO_BINS)
    span = max(onset[-1] + duration[-1] - onset[0], 1e-3)
    scalars = np.r_[
        np.log1p(len(pitch) / span), np.log1p(len(starts) / span), sizes.mean() / 4,
        velocity.mean() / 127, velocity.std() / 127, np.percentile(velocity, [10, 50, 90]) / 127,
        pitch.mean() / 127, pitch.std() / 24, (top.mean() - bass.mean()) / 24, float(minor),
    ]
    histograms = [pc_count, pc_time, degrees, degrees_time, top_steps, bass_steps, chord_sizes,
                  harmonic_interval_histogram(notes, chord_tolerance=chord_tolerance), transitions, bass_degree,
                  register, ratios, _time_histogram(ioi), _time_histogram(duration)]
    return np.concatenate([np.sqrt(h) for h in histograms] + [scalars]).astype(np.float32)


def augmented_crop(notes: np.ndarray, rng: np.random.Generator, *, crop_seconds: tuple[float, float] = (30.0, 90.0),
                   transpose: int = 0) -> np.ndarray:
    """One augmented excerpt of a note array in seconds, pitched notes only: a random stretch of
    ``crop_seconds`` (the whole piece when it has fewer than 16 notes), up to 15% of its notes
    dropped, tempo scaled by 0.8-1.25, sometimes shortened notes (no pedal), velocities scaled and
    jittered, and with ``transpose`` a shift of up to that many semitones either way. FeatNet's
    training views and the attribution readout's training crops."""
    if "is_drum" in notes.dtype.names:
        notes = notes[~notes["is_drum"]]
    notes = notes.copy()
    onset = notes["onset"].astype(np.float64)
    length = rng.uniform(*crop_seconds)
    first, last = float(onset.min()), float(onset.max())
    start = rng.uniform(first, max(first, last - length))
    keep = (onset >= start) & (onset < start + length)
    keep &= rng.random(len(notes)) >= rng.uniform(0.0, 0.15)
    if keep.sum() < 16:  # a sparse stretch: the whole piece instead
        keep = np.ones(len(notes), bool)
    crop = notes[keep]
    stretch = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    crop["onset"] = (crop["onset"] - start) * stretch
    duration = crop["duration"] * stretch
    if rng.random() < 0.3:  # no pedal: notes end early
        duration = duration * rng.uniform(0.3, 1.0)
    crop["duration"] = duration
    velocity = crop["velocity"].astype(np.float64) * rng.uniform(0.75, 1.25) + rng.normal(0.0, 5.0, len(crop))
    crop["velocity"] = np.clip(np.round(velocity), 1, 127)
    if transpose:
        shift = int(rng.integers(-transpose, transpose + 1))
        crop["pitch"] = np.clip(crop["pitch"].astype(np.int64) + shift, 0, 127)
    return crop
