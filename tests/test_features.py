"""Hand-made features: known values on small scores, and a finite vector for every real file."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES, make_score
from partita.io.midi import NOTE_DTYPE, MidiError, load, note_array
from partita.represent.features import (
    FEATURE_NAMES,
    N_TIME_BINS,
    TIME_EDGES,
    duration_histogram,
    feature_vector,
    harmonic_interval_histogram,
    interval_histogram,
    ioi_histogram,
    melodic_line,
    note_density,
    pitch_class_histogram,
    pitch_range,
    polyphony,
    velocity_stats,
)

Q = 480  # a quarter note in ticks; make_score's 120 qpm makes it 0.5 s


def notes_of(rows, *, drum=False):
    """A NOTE_DTYPE array from (onset_s, duration_s, pitch, velocity) rows."""
    a = np.zeros(len(rows), NOTE_DTYPE)
    for k, (onset, dur, pitch, vel) in enumerate(rows):
        a[k] = (onset, dur, pitch, vel, 0, drum, 0)
    return a


def c_major_scale():
    return note_array(make_score([(k * Q, Q, p, 80) for k, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]))


def test_c_major_scale_pitch_classes():
    hist = pitch_class_histogram(c_major_scale())
    expected = np.zeros(12)
    expected[[0, 2, 4, 5, 7, 9, 11]] = 1 / 8
    expected[0] = 2 / 8  # C at both ends
    np.testing.assert_allclose(hist, expected)
    np.testing.assert_allclose(pitch_class_histogram(c_major_scale(), by_duration=True), expected)


def test_pitch_classes_weighted_by_duration():
    notes = note_array(make_score([(0, 3 * Q, 60, 80), (3 * Q, Q, 67, 80)]))  # long C, short G
    np.testing.assert_allclose(pitch_class_histogram(notes)[[0, 7]], [0.5, 0.5])
    np.testing.assert_allclose(pitch_class_histogram(notes, by_duration=True)[[0, 7]], [0.75, 0.25])


def test_c_major_scale_intervals_range_density():
    notes = c_major_scale()
    hist = interval_histogram(notes)
    assert hist.shape == (25,)
    # Steps up: 2, 2, 1, 2, 2, 2, 1 -> index 12 + step.
    np.testing.assert_allclose(hist[[13, 14]], [2 / 7, 5 / 7])
    assert hist.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(pitch_range(notes), [60, 72, 12])
    assert note_density(notes) == pytest.approx(8 / 4.0)  # 8 notes in 4 s


def test_a_single_repeated_note():
    notes = note_array(make_score([(k * Q, Q, 55, 90) for k in range(8)]))
    assert interval_histogram(notes)[12] == 1.0  # all unisons
    np.testing.assert_array_equal(pitch_range(notes), [55, 55, 0])
    assert note_density(notes) == pytest.approx(2.0)
    # 0.5 s durations and IOIs fall in the [0.5, 1) s bin.
    k = int(np.searchsorted(TIME_EDGES, 0.5, side="right"))
    assert TIME_EDGES[k - 1] == 0.5
    assert duration_histogram(notes)[k] == 1.0
    assert ioi_histogram(notes)[k] == 1.0
    # Back to back, each note ends as the next starts: never two at once.
    np.testing.assert_allclose(polyphony(notes), [1.0, 1.0])


def test_a_chord_polyphony_is_its_size():
    triad = note_array(make_score([(0, 4 * Q, p, 80) for p in (60, 64, 67)]))
    np.testing.assert_allclose(polyphony(triad), [3.0, 3.0])
    seventh = note_array(make_score([(0, Q, p, 80) for p in (43, 59, 62, 65)]))
    np.testing.assert_allclose(polyphony(seventh), [4.0, 4.0])
    # One onset group: no melodic interval on the top line, two rising steps on "all".
    assert not interval_histogram(triad).any()
    hist = interval_histogram(triad, line="all")
    np.testing.assert_allclose(hist[[12 + 4, 12 + 3]], [0.5, 0.5])
    assert ioi_histogram(triad).sum() == 0


def test_polyphony_mean_is_time_weighted_and_skips_rests():
    # A 1 s triad, 1 s of rest, then a single 1 s note: 3 voices half the sounding time, 1 the other.
    notes = notes_of([(0.0, 1.0, 60, 80), (0.0, 1.0, 64, 80), (0.0, 1.0, 67, 80), (2.0, 1.0, 72, 80)])
    np.testing.assert_allclose(polyphony(notes), [2.0, 3.0])
    # A held bass under four short notes: 2 voices throughout.
    notes = notes_of([(0.0, 2.0, 36, 80)] + [(0.5 * k, 0.5, 60 + k, 80) for k in range(4)])
    np.testing.assert_allclose(polyphony(notes), [2.0, 2.0])
    # Zero-length notes sound for no time.
    np.testing.assert_allclose(polyphony(notes_of([(0.0, 1.0, 60, 80), (0.5, 0.0, 62, 80)])), [1.0, 1.0])


def test_top_line_groups_a_spread_chord():
    # Performed chords: notes a few ms apart are one onset, and the top note is the melody.
    notes = notes_of(
        [(0.0, 0.5, 48, 80), (0.008, 0.5, 55, 80), (0.015, 0.5, 64, 80),  # top E
         (0.5, 0.5, 50, 80), (0.51, 0.5, 65, 80),  # top F: +1
         (1.0, 0.5, 45, 80), (1.02, 0.5, 62, 80)]  # top D: -3
    )
    np.testing.assert_array_equal(melodic_line(notes), [64, 65, 62])
    hist = interval_histogram(notes)
    np.testing.assert_allclose(hist[[13, 9]], [0.5, 0.5])
    k = int(np.searchsorted(TIME_EDGES, 0.5, side="right"))
    assert ioi_histogram(notes)[k] == 1.0  # two gaps of 0.5 s, not six tiny ones
    # Without the tolerance every note is its own onset.
    assert len(melodic_line(notes, chord_tolerance=0.0)) == 7


def test_leaps_are_clipped_to_an_octave():
    notes = notes_of([(0.0, 0.5, 40, 80), (0.5, 0.5, 59, 80), (1.0, 0.5, 40, 80), (1.5, 0.5, 52, 80)])
    hist = interval_histogram(notes)
    np.testing.assert_allclose(hist[[24, 0]], [2 / 3, 1 / 3])  # +19 and +12 -> +12, -19 -> -12


def test_time_histograms_use_log_bins():
    durations = [0.01, 0.04, 0.1, 0.2, 0.3, 0.7, 1.5, 3.0, 10.0]
    notes = notes_of([(2.0 * k, d, 60, 80) for k, d in enumerate(durations)])
    np.testing.assert_allclose(duration_histogram(notes), np.full(N_TIME_BINS, 1 / 9))
    assert len(duration_histogram(notes)) == len(TIME_EDGES) + 1 == 9


def test_drums_are_ignored():
    pitched = c_major_scale()
    drums = notes_of([(0.25 * k, 0.1, 36 + k % 3, 100) for k in range(16)], drum=True)
    both = np.concatenate([pitched, drums])
    np.testing.assert_array_equal(feature_vector(both), feature_vector(pitched))


def test_empty_input_gives_zeros():
    vec = feature_vector(np.zeros(0, NOTE_DTYPE))
    assert vec.shape == (len(FEATURE_NAMES),) and not vec.any()
    vec = feature_vector(notes_of([(1.0, 0.5, 60, 80)]))  # one note: no intervals, no IOIs
    assert np.isfinite(vec).all()


def test_feature_names_describe_the_vector():
    vec = feature_vector(c_major_scale())
    assert vec.dtype == np.float32 and vec.shape == (len(FEATURE_NAMES),)
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, vec.tolist()))
    assert named["pc_C"] == pytest.approx(0.25)
    assert named["interval_+2"] == pytest.approx(5 / 7)
    assert (named["pitch_min"], named["pitch_max"], named["pitch_span"]) == (60, 72, 12)
    assert named["note_density"] == pytest.approx(2.0)
    assert named["duration_0.5-1s"] == pytest.approx(1.0)
    assert named["ioi_0.5-1s"] == pytest.approx(1.0)
    assert (named["polyphony_mean"], named["polyphony_max"]) == (1.0, 1.0)


def test_velocity_statistics():
    notes = notes_of([(0.5 * k, 0.5, 60, v) for k, v in enumerate([20, 40, 60, 80, 100])])
    mean, std, p10, p50, p90 = velocity_stats(notes)
    assert (mean, p50) == (60, 60) and std == pytest.approx(np.std([20, 40, 60, 80, 100]))
    assert p10 == pytest.approx(28) and p90 == pytest.approx(92)
    flat = velocity_stats(c_major_scale())  # a quantised score at one velocity
    np.testing.assert_allclose(flat, [80, 0, 80, 80, 80])
    assert not velocity_stats(np.zeros(0, NOTE_DTYPE)).any()


def test_harmonic_intervals_read_each_chord_bottom_up():
    # C major triad struck spread over 20 ms (one chord), then a C-F#-C' chord, then a lone note.
    notes = notes_of([(0.0, 1, 67, 80), (0.01, 1, 60, 80), (0.02, 1, 64, 80),
                      (1.0, 1, 60, 80), (1.0, 1, 66, 80), (1.0, 1, 72, 80), (2.0, 1, 50, 80)])
    hist = harmonic_interval_histogram(notes)
    # neighbours: C-E (4), E-G (3); C-F# (6), F#-C (6)
    np.testing.assert_allclose(hist, [0, 0, 0, 0.25, 0.25, 0, 0.5])
    minor_ninth = notes_of([(0.0, 1, 60, 80), (0.0, 1, 73, 80)])  # 13 semitones: class 1
    np.testing.assert_allclose(harmonic_interval_histogram(minor_ninth), [0, 1, 0, 0, 0, 0, 0])
    assert not harmonic_interval_histogram(c_major_scale()).any()  # a melody has no chords
    named = dict(zip(FEATURE_NAMES, feature_vector(notes).tolist()))
    assert named["harmonic_ic6"] == pytest.approx(0.5) and named["velocity_std"] == 0


def test_feature_vector_is_finite_for_every_real_file():
    paths = sorted((FIXTURES / "performance").glob("*.mid")) + sorted((FIXTURES / "multitrack").glob("*.mid"))
    assert len(paths) >= 20, f"expected the real MIDI fixtures under {FIXTURES}"
    for path in paths + sorted((FIXTURES / "edge").glob("*.mid")):
        try:
            notes = note_array(load(path, allow_empty=True))
        except MidiError:
            assert path.parent.name == "edge", path
            continue
        vec = feature_vector(notes)
        assert vec.shape == (len(FEATURE_NAMES),), path.name
        assert np.isfinite(vec).all(), path.name
        if len(notes[~notes["is_drum"]]):
            for hist in (vec[:12], vec[12:37]):
                assert hist.sum() == pytest.approx(1.0, abs=1e-5) or not hist.any(), path.name
            assert vec[FEATURE_NAMES.index("polyphony_max")] >= 1, path.name
