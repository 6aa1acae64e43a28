"""Musical metrics: per-piece statistics, and MGEval's comparison of two sets of pieces.

Per piece (:func:`piece_metrics`), over a ``NOTE_DTYPE`` note array **in beats** (quarter notes:
``partita.io.note_array(score, unit="beat")`` or ``Corpus.notes(i, unit="beat")``). Beats rather
than seconds because generated pieces and real ones seldom share a tempo, and the rhythm metrics
(groove, empty beats) are defined on the beat grid. The definitions follow muspy's metrics
(Dong et al., ISMIR 2020 late-breaking demo; ``muspy.metrics``) and MGEval's features (Yang &
Lerch, "On the evaluation of generative models in music", Neural Computing and Applications 2018),
written here over partita's note arrays; each function says where it differs. Drum notes have no
pitch: pitch metrics ignore them, rhythm metrics (groove consistency, empty beats) count them, as
in muspy. A piece without the notes a metric needs gives NaN for that metric (never an error).

Between two sets (:func:`compare_sets`), MGEval's procedure, per feature: the Euclidean
distances between every pair of pieces inside the reference set (intra-set), inside the generated
set (intra-set), and between every reference piece and every generated piece (inter-set); a
Gaussian KDE (Scott's bandwidth, as ``scipy.stats.gaussian_kde``) of each of the three
distributions; then the KL divergence and the overlap area between each intra-set distribution
and the inter-set one. A generated set that resembles the reference has an inter-set distribution
like the reference's own intra-set one: KL near 0 and overlap near 1.

``partita eval metrics GENERATED_DIR --reference CORPUS`` runs this on MIDI files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from partita.errors import PartitaError
from partita.io.midi import pitched
from partita.represent.features import (
    duration_histogram,
    ioi_histogram,
    note_density,
    onset_groups,
    pitch_class_histogram,
    pitch_range,
    polyphony,
)

#: Onset grid of the rhythm metrics: 12 steps per beat hold sixteenths (3) and eighth triplets (4).
STEPS_PER_BEAT = 12
#: Onsets closer than this (in beats) form one chord where a metric reads onset groups.
CHORD_TOLERANCE = 0.03

MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)  # C D E F G A B
MINOR = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], bool)  # C D Eb F G Ab Bb (natural minor)

#: Features of :func:`piece_metrics`: name -> shape (() for a number).
FEATURES: dict[str, tuple] = {
    "pitch_range": (),
    "n_pitches_used": (),
    "n_pitch_classes_used": (),
    "pitch_entropy": (),
    "pitch_class_entropy": (),
    "scale_consistency": (),
    "polyphony": (),
    "polyphony_rate": (),
    "note_density": (),
    "avg_ioi": (),
    "avg_pitch_shift": (),
    "groove_consistency": (),
    "empty_beat_rate": (),
    "pitch_class_histogram": (12,),
    "ioi_histogram": (9,),
    "duration_histogram": (9,),
    "pitch_class_transition_matrix": (12, 12),
}


# --------------------------------------------------------------------------- per-piece metrics


def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: -0.0 -> 0.0 for a single value


def pitch_entropy(notes: np.ndarray) -> float:
    """Shannon entropy (bits) of the histogram of the 128 MIDI pitches (muspy ``pitch_entropy``).

    0 for one repeated pitch, ``log2 k`` for k pitches used equally often; NaN without notes.
    """
    pitch = pitched(notes, sort=True)["pitch"].astype(np.int64)
    return _entropy_bits(np.bincount(pitch, minlength=128).astype(np.float64))


def pitch_class_entropy(notes: np.ndarray) -> float:
    """Shannon entropy (bits) of the pitch-class histogram, counting notes (muspy
    ``pitch_class_entropy``): 0 for one repeated note, ``log2 12`` = 3.585 for all twelve equally."""
    pitch = pitched(notes, sort=True)["pitch"].astype(np.int64)
    return _entropy_bits(np.bincount(pitch % 12, minlength=12).astype(np.float64))


def pitch_in_scale_rate(notes: np.ndarray, root: int, mode: str = "major") -> float:
    """Share of notes whose pitch class is in the ``root`` ``mode`` scale (muspy ``pitch_in_scale_rate``).

    ``root`` 0 is C; ``mode`` ``"major"`` or ``"minor"`` (natural minor). NaN without notes.
    """
    scale = {"major": MAJOR, "minor": MINOR}.get(mode)
    if scale is None:
        raise ValueError(f"mode must be 'major' or 'minor', not {mode!r}")
    pc = pitched(notes, sort=True)["pitch"].astype(np.int64) % 12
    if len(pc) == 0:
        return float("nan")
    return float(np.roll(scale, root)[pc].mean())


def scale_consistency(notes: np.ndarray) -> float:
    """The largest :func:`pitch_in_scale_rate` over the 24 major and minor scales (muspy
    ``scale_consistency``, after Mogren's C-RNN-GAN): 1.0 for any diatonic melody."""
    pc_counts = np.bincount(pitched(notes, sort=True)["pitch"].astype(np.int64) % 12, minlength=12).astype(np.float64)
    total = pc_counts.sum()
    if total == 0:
        return float("nan")
    # All 24 scales at once: row r of the circulant holds the scale rolled to root r.
    scales = np.stack([np.roll(s, r) for s in (MAJOR, MINOR) for r in range(12)]).astype(np.float64)
    return float((scales @ pc_counts).max() / total)


def _sweep(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(span lengths, notes sounding in each span) between consecutive note events of pitched notes."""
    notes = pitched(notes, sort=True)
    notes = notes[notes["duration"] > 0]
    if len(notes) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    onset = notes["onset"].astype(np.float64)
    times = np.concatenate([onset, onset + notes["duration"]])
    delta = np.concatenate([np.ones(len(onset), np.int64), -np.ones(len(onset), np.int64)])
    order = np.lexsort((delta, times))  # ends before starts at equal times, as features.polyphony
    times, delta = times[order], delta[order]
    return np.diff(times), np.cumsum(delta)[:-1]


def polyphony_rate(notes: np.ndarray, threshold: int = 2) -> float:
    """Share of the sounding time during which at least ``threshold`` pitched notes sound (muspy
    ``polyphony_rate``, measured in continuous time instead of on a time-step grid, and over the
    time when something sounds, so rests do not count). 0 for a melody, 1 for block chords."""
    span, count = _sweep(notes)
    sounding = span[count > 0].sum()
    if sounding <= 0:
        return float("nan")
    return float(span[count >= threshold].sum() / sounding)


def _group_starts(notes: np.ndarray) -> np.ndarray:
    onset = pitched(notes, sort=True)["onset"].astype(np.float64)
    if len(onset) == 0:
        return onset
    groups = onset_groups(onset, CHORD_TOLERANCE)
    return onset[np.r_[True, groups[1:] != groups[:-1]]]


def avg_ioi(notes: np.ndarray) -> float:
    """Mean inter-onset interval in beats (MGEval ``avg_IOI``; chords count as one onset, as in
    ``features.ioi_histogram``). NaN with fewer than two onsets."""
    starts = _group_starts(notes)
    return float(np.diff(starts).mean()) if len(starts) > 1 else float("nan")


def avg_pitch_shift(notes: np.ndarray) -> float:
    """Mean absolute interval in semitones between consecutive notes in onset-then-pitch order
    (MGEval ``avg_pitch_shift``). NaN with fewer than two notes."""
    pitch = pitched(notes, sort=True)["pitch"].astype(np.float64)
    return float(np.abs(np.diff(pitch)).mean()) if len(pitch) > 1 else float("nan")


def pitch_class_transition_matrix(notes: np.ndarray) -> np.ndarray:
    """12x12 share of pitch-class transitions, summing to 1 (MGEval's PCTM normalised by the whole
    matrix): entry ``[a, b]`` counts moves from a note of class ``a`` to one of class ``b`` in the
    next onset group of the same track (every note of a chord to every note of the next).

    MGEval takes pretty_midi's matrix, which links notes whose end is within 50 ms of another's
    start; onset groups per track do not depend on articulation or tempo. Zeros without transitions.
    """
    notes = pitched(notes, sort=True)
    out = np.zeros((12, 12))
    if len(notes) < 2:
        return out
    track = notes["track"].astype(np.int64) if "track" in notes.dtype.names else np.zeros(len(notes), np.int64)
    for t in np.unique(track):
        sel = notes[track == t]
        if len(sel) < 2:
            continue
        groups = onset_groups(sel["onset"].astype(np.float64), CHORD_TOLERANCE)
        pcs = sel["pitch"].astype(np.int64) % 12
        # Every (note in group g, note in group g + 1) pair: join the groups through their index.
        g_of = groups
        nxt_start = np.searchsorted(g_of, g_of + 1, side="left")
        nxt_end = np.searchsorted(g_of, g_of + 1, side="right")
        counts = nxt_end - nxt_start
        if counts.sum() == 0:
            continue
        src = np.repeat(pcs, counts)
        dst_idx = np.concatenate([np.arange(a, b) for a, b in zip(nxt_start, nxt_end) if b > a])
        np.add.at(out, (src, pcs[dst_idx]), 1.0)
    total = out.sum()
    return out / total if total > 0 else out


def groove_consistency(notes: np.ndarray, beats_per_bar: float = 4.0, *, steps_per_beat: int = STEPS_PER_BEAT) -> float:
    """1 minus the mean Hamming distance between the onset patterns of neighbouring bars, as a share
    of the bar's grid (muspy ``groove_consistency``, Wu & Yang's Jazz Transformer paper).

    Each bar's pattern is a binary vector of ``beats_per_bar * steps_per_beat`` grid positions with
    a 1 where any note (drums included) starts; onsets are rounded to the grid. 1.0 when every bar
    repeats the same rhythm. Assumes one time signature, like muspy. NaN with fewer than two bars.
    """
    notes = np.asarray(notes)
    bar = int(round(beats_per_bar * steps_per_beat))
    if len(notes) == 0 or bar <= 0:
        return float("nan")
    steps = np.round(notes["onset"].astype(np.float64) * steps_per_beat).astype(np.int64)
    steps = steps[steps >= 0]
    n_bars = int(steps.max() // bar) + 1 if len(steps) else 0
    if n_bars < 2:
        return float("nan")
    patterns = np.zeros((n_bars, bar), bool)
    patterns[steps // bar, steps % bar] = True
    hamming = np.count_nonzero(patterns[1:] != patterns[:-1], axis=1)
    return float(1.0 - hamming.mean() / bar)


def empty_beat_rate(notes: np.ndarray) -> float:
    """Share of beats in which no note sounds (muspy ``empty_beat_rate``; drums count).

    Beats run from 0 to the last note-off (rounded up). A beat ``[b, b+1)`` is filled by a note
    that overlaps it for some time (a note ending exactly at ``b`` does not fill it; a zero-length
    note fills the beat it starts in). NaN without notes.
    """
    notes = np.asarray(notes)
    if len(notes) == 0:
        return float("nan")
    on = notes["onset"].astype(np.float64)
    end = np.maximum(on + notes["duration"].astype(np.float64), on)
    n_beats = max(int(np.ceil(end.max() - 1e-9)), 1)
    first = np.clip(np.floor(on + 1e-9).astype(np.int64), 0, n_beats - 1)
    last = np.clip(np.ceil(end - 1e-9).astype(np.int64) - 1, 0, n_beats - 1)
    last = np.maximum(last, first)
    # Mark the covered beat ranges with a difference array: +1 at first, -1 after last.
    cover = np.zeros(n_beats + 1, np.int64)
    np.add.at(cover, first, 1)
    np.add.at(cover, last + 1, -1)
    filled = np.cumsum(cover)[:-1] > 0
    return float(1.0 - filled.mean())


def piece_metrics(notes: np.ndarray, *, beats_per_bar: float = 4.0) -> dict[str, Any]:
    """Every metric of one piece (``FEATURES``), from a note array in beats.

    Numbers are floats (NaN where undefined); histograms and the transition matrix are arrays.
    ``note_density`` is notes per beat (``features.note_density`` in beats); the IOI and duration
    histograms are ``features.ioi_histogram``/``duration_histogram`` read in beats, so their 9 bins
    are note values: under a 1/32 beat, [1/32, 1/16), ... [2, 4), 4 beats and more (a quarter note
    falls in [1, 2), a dotted quarter too).
    """
    kept = pitched(notes, sort=True)  # PartitaError for anything but a note array
    has = len(kept) > 0
    nan = float("nan")
    pitch = kept["pitch"].astype(np.int64)
    return {
        "pitch_range": float(pitch_range(notes)[2]) if has else nan,
        "n_pitches_used": float(len(np.unique(pitch))) if has else nan,
        "n_pitch_classes_used": float(len(np.unique(pitch % 12))) if has else nan,
        "pitch_entropy": pitch_entropy(notes),
        "pitch_class_entropy": pitch_class_entropy(notes),
        "scale_consistency": scale_consistency(notes),
        "polyphony": float(polyphony(notes)[0]) if has else nan,
        "polyphony_rate": polyphony_rate(notes),
        "note_density": float(note_density(notes)) if has else nan,
        "avg_ioi": avg_ioi(notes),
        "avg_pitch_shift": avg_pitch_shift(notes),
        "groove_consistency": groove_consistency(notes, beats_per_bar),
        "empty_beat_rate": empty_beat_rate(notes),
        "pitch_class_histogram": pitch_class_histogram(notes),
        "ioi_histogram": ioi_histogram(notes, chord_tolerance=CHORD_TOLERANCE),
        "duration_histogram": duration_histogram(notes),
        "pitch_class_transition_matrix": pitch_class_transition_matrix(notes),
    }


def beats_per_bar(score) -> float:
    """Quarter notes per bar of the score's first time signature (4.0 when it has none)."""
    ts = score.time_signatures
    if len(ts) == 0:
        return 4.0
    first = min(ts, key=lambda t: t.time)
    return float(first.numerator) * 4.0 / max(int(first.denominator), 1)


def score_metrics(x: Any) -> dict[str, Any]:
    """:func:`piece_metrics` of a MIDI path, a symusic Score or a generated sample (``.score``)."""
    from partita.io.audio import to_score
    from partita.io.midi import note_array

    score = to_score(x)
    return piece_metrics(note_array(score, unit="beat"), beats_per_bar=beats_per_bar(score))


# --------------------------------------------------------------------------- sets of pieces


@dataclass
class PieceSet:
    """Metrics of a set of pieces: ``names[i]`` has ``metrics[i]``; ``skipped`` lists (name, reason)."""

    source: str
    names: list[str] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.metrics)

    def values(self, feature: str) -> np.ndarray:
        """``[n_pieces, dims]`` float array of one feature (rows with NaN are kept)."""
        return np.stack([np.ravel(np.asarray(m[feature], np.float64)) for m in self.metrics]) if self.metrics else np.zeros((0, 1))


def _midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".mid", ".midi") and not p.name.startswith("."))


def check_source(path: str | os.PathLike) -> Path:
    """Raise the one-line error :func:`load_set` would give for a missing path or a folder with no
    MIDI file, before any work starts (so a command checks both of its sets first)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PartitaError(f"{path}: no such file or folder")
    if path.is_dir() and not (path / "corpus.json").exists() and not _midi_files(path):
        raise PartitaError(f"{path}: no MIDI files (.mid, .midi) here and not a prepared corpus (no corpus.json)")
    return path


def load_set(
    path: str | os.PathLike,
    *,
    split: str | None = "test",
    max_pieces: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> PieceSet:
    """Metrics of every piece in a prepared corpus (its ``split``; ``None`` or ``"all"``: every
    split) or in a folder of MIDI files (at any depth; ``split`` is ignored). Unusable files are
    skipped and listed, never fatal. ``max_pieces``: a seeded random subset of that size.
    """
    from partita.io.midi import MidiError, load, note_array

    path = Path(path).expanduser()
    if not path.exists():
        raise PartitaError(f"{path}: no such file or folder")
    out = PieceSet(str(path))
    rng = np.random.default_rng(seed)
    if (path / "corpus.json").exists():
        from partita.data.corpus import Corpus

        corpus = Corpus(path)
        idx = corpus.indices(split=None if split in (None, "all") else split)
        if not idx:
            splits = sorted({r["split"] for r in corpus.pieces if r["split"]})
            raise PartitaError(f"{path}: no pieces in split {split!r}; the corpus has {', '.join(splits)} (or use all)")
        if max_pieces is not None and len(idx) > max_pieces:
            idx = sorted(rng.choice(idx, max_pieces, replace=False).tolist())
        for k, i in enumerate(idx):
            score = corpus.score(i)
            out.names.append(str(corpus.pieces[i]["id"]))
            out.metrics.append(piece_metrics(note_array(score, unit="beat"), beats_per_bar=beats_per_bar(score)))
            if progress:
                progress(k + 1, len(idx))
        return out
    if path.is_file():
        files = [path]
    else:
        files = _midi_files(path)
        if not files:
            raise PartitaError(f"{path}: no MIDI files (.mid, .midi) here and not a prepared corpus (no corpus.json)")
    if max_pieces is not None and len(files) > max_pieces:
        files = [files[j] for j in sorted(rng.choice(len(files), max_pieces, replace=False))]
    for k, f in enumerate(files):
        name = str(f.relative_to(path)) if f != path else f.name
        try:
            score = load(f)
        except MidiError as e:
            out.skipped.append((name, e.reason))
        else:
            out.names.append(name)
            out.metrics.append(piece_metrics(note_array(score, unit="beat"), beats_per_bar=beats_per_bar(score)))
        if progress:
            progress(k + 1, len(files))
    return out


def _pairwise(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances: every unordered pair within ``a`` (intra), or every (a, b) pair (inter).

    Through the Gram matrix (``|x|^2 + |y|^2 - 2 x.y``), so 1000 pieces with a 144-dimensional
    feature need a 1000 x 1000 matrix, not a 1000 x 1000 x 144 difference tensor.
    """
    other = a if b is None else b
    sq = (a * a).sum(1)[:, None] + (other * other).sum(1)[None, :] - 2.0 * (a @ other.T)
    d = np.sqrt(np.maximum(sq, 0.0))
    if b is None:
        return d[np.triu_indices(len(a), k=1)]
    return d.ravel()


def bandwidth(samples: np.ndarray) -> float:
    """Scott's rule for one dimension, ``std * n ** (-1/5)`` (``scipy.stats.gaussian_kde``'s default).

    Samples that are all equal get 1e-3 of their value (or 1e-6), so a set of identical pieces is
    a narrow peak instead of a division by zero.
    """
    x = np.asarray(samples, np.float64)
    h = float(x.std(ddof=1)) * len(x) ** (-0.2) if len(x) > 1 else 0.0
    if not h > 0:
        h = max(abs(float(x.mean())) * 1e-3, 1e-6) if len(x) else 1e-6
    return h


def kde_on_grid(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE (:func:`bandwidth`) of ``samples`` at the points of a uniform ``grid``.

    Computed by linear binning onto the grid and one convolution with the sampled kernel (the
    "binned KDE"): O(n + grid * kernel) instead of O(n * grid), so the 100k inter-set distances of
    two sets of a few hundred pieces cost milliseconds. The kernel is normalised on the grid, so
    each sample carries mass 1/n even when the bandwidth is narrower than the grid step. Samples
    outside the grid are clipped to its ends.
    """
    x = np.asarray(samples, np.float64)
    g = len(grid)
    dx = float(grid[1] - grid[0])
    pos = np.clip((x - grid[0]) / dx, 0.0, g - 1.0)
    i = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    f = pos - i
    w = np.bincount(i, 1.0 - f, minlength=g) + np.bincount(i + 1, f, minlength=g)
    h = bandwidth(x)
    half = g - 1  # the whole kernel: cutting its tails would make KL infinite for far-apart sets
    k = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / h) ** 2)
    k /= k.sum() * dx * len(x)
    return np.convolve(w, k)[half : half + g]


def _grid(a: np.ndarray, b: np.ndarray, points: int) -> np.ndarray | None:
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    return np.linspace(lo, hi, points) if hi > lo else None


def kl_divergence(a: np.ndarray, b: np.ndarray, *, points: int = 1000) -> float:
    """KL(P_a || P_b) of the KDEs of two samples, on ``points`` grid points from the smallest to the
    largest value of both (MGEval ``utils.kl_dist``: ``scipy.stats.entropy`` of the two KDEs on
    that grid, each normalised to sum 1). 0 when all values are equal."""
    grid = _grid(a, b, points)
    if grid is None:
        return 0.0
    p, q = kde_on_grid(a, grid), kde_on_grid(b, grid)
    p, q = p / p.sum(), q / q.sum()
    q = np.maximum(q, 1e-300)  # where q vanishes the divergence is huge but finite, as scipy's tails give
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def overlap_area(a: np.ndarray, b: np.ndarray, *, points: int = 1000) -> float:
    """Area under ``min(P_a, P_b)`` of the two KDEs between the smallest and the largest value of
    both (MGEval ``utils.overlap_area``, integrated with the trapezoid rule on ``points`` points
    instead of ``scipy.integrate.quad``). 1 for identical distributions, 0 for disjoint ones."""
    grid = _grid(a, b, points)
    if grid is None:
        return 1.0
    y = np.minimum(kde_on_grid(a, grid), kde_on_grid(b, grid))
    dx = grid[1] - grid[0]
    return float(np.clip((y.sum() - 0.5 * (y[0] + y[-1])) * dx, 0.0, 1.0))


def _subsample(d: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return d if len(d) <= limit else d[np.sort(rng.choice(len(d), limit, replace=False))]


def compare_sets(
    reference: PieceSet | Sequence[dict],
    generated: PieceSet | Sequence[dict],
    *,
    features: Iterable[str] | None = None,
    max_distances: int = 1_000_000,
    seed: int = 0,
) -> dict:
    """MGEval's comparison of ``generated`` against ``reference`` (sets of :func:`piece_metrics`).

    Per feature: mean and std of the feature in each set (numbers only), of the intra-set distances
    of each set and of the inter-set distances, and ``kl_ref``/``oa_ref`` (KL divergence and overlap
    area of the reference's intra-set distances against the inter-set ones) and ``kl_gen``/``oa_gen``
    (the same for the generated set). Pieces where a feature is NaN are left out of that feature.
    Distance lists longer than ``max_distances`` are subsampled (seeded) before the KDEs.
    """
    ref = reference if isinstance(reference, PieceSet) else PieceSet("reference", metrics=list(reference))
    gen = generated if isinstance(generated, PieceSet) else PieceSet("generated", metrics=list(generated))
    if len(ref) < 2 or len(gen) < 2:
        raise PartitaError(f"need at least 2 pieces in each set to compare them (reference {len(ref)}, generated {len(gen)})")
    rng = np.random.default_rng(seed)
    out: dict = {"n_reference": len(ref), "n_generated": len(gen), "features": {}}
    for name in features or FEATURES:
        if name not in FEATURES:
            raise PartitaError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
        a, b = ref.values(name), gen.values(name)
        a, b = a[~np.isnan(a).any(1)], b[~np.isnan(b).any(1)]
        row: dict[str, Any] = {"kind": "number" if FEATURES[name] == () else "vector", "n_reference": len(a), "n_generated": len(b)}
        if FEATURES[name] == ():
            for tag, v in (("reference", a), ("generated", b)):
                row[f"{tag}_mean"] = float(v.mean()) if len(v) else None
                row[f"{tag}_std"] = float(v.std()) if len(v) else None
        if len(a) < 2 or len(b) < 2:
            row.update(kl_ref=None, oa_ref=None, kl_gen=None, oa_gen=None)
            out["features"][name] = row
            continue
        intra_a = _subsample(_pairwise(a), max_distances, rng)
        intra_b = _subsample(_pairwise(b), max_distances, rng)
        inter = _subsample(_pairwise(a, b), max_distances, rng)
        for tag, d in (("intra_reference", intra_a), ("intra_generated", intra_b), ("inter", inter)):
            row[f"{tag}_mean"], row[f"{tag}_std"] = float(d.mean()), float(d.std())
        row["kl_ref"], row["oa_ref"] = kl_divergence(intra_a, inter), overlap_area(intra_a, inter)
        row["kl_gen"], row["oa_gen"] = kl_divergence(intra_b, inter), overlap_area(intra_b, inter)
        out["features"][name] = row
    return out


def summarize_set(pieces: PieceSet) -> dict:
    """Mean and std of every numeric feature over a set (NaN pieces left out)."""
    out = {}
    for name, shape in FEATURES.items():
        if shape == ():
            v = pieces.values(name)[:, 0]
            v = v[~np.isnan(v)]
            out[name] = {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None, "n": int(len(v))}
    return out
