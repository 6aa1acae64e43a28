"""Helical pianorolls: the fast renderer against a loop-by-loop reference, layout and crops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import FIXTURES, make_score
from partita.errors import PartitaError
from partita.io.midi import NOTE_DTYPE, load, note_array
from partita.represent.pianoroll import (
    DEFAULT_DECAY_FLOOR,
    PITCH_CLASS_NAMES,
    cell,
    center_crop,
    chromatic,
    pianoroll,
    random_crop,
)

MODES = ("binary", "velocity", "decay")


def reference_pianoroll(
    notes,
    *,
    frame_seconds=0.05,
    mode="binary",
    start=0.0,
    duration=None,
    out_of_range="fold",
    decay_floor=DEFAULT_DECAY_FLOOR,
):
    """The documented behaviour, one note and one frame at a time (slow and plain on purpose)."""
    fs = frame_seconds
    drawn = []  # (pitch, first frame, last frame, onset, duration, velocity)
    for onset, dur, pitch, velocity, _program, is_drum, _track in notes.tolist():
        if is_drum:
            continue
        if out_of_range == "fold":
            while pitch < 29:
                pitch += 12
            while pitch > 100:
                pitch -= 12
        elif not 29 <= pitch <= 100:
            continue
        first = math.floor((onset - start) / fs + 0.01)
        last = max(first, math.ceil((onset + dur - start) / fs - 0.01) - 1)
        drawn.append((pitch, first, last, onset, dur, velocity))
    if duration is not None:
        n_frames = round(duration / fs)
    else:
        n_frames = max((last + 1 for _, _, last, *_ in drawn), default=0)
    roll = np.zeros((12, 6, n_frames), np.float64)
    for pitch, first, last, onset, dur, velocity in drawn:
        row, octave = (pitch - 29) % 12, (pitch - 29) // 12
        for t in range(max(first, 0), min(last, n_frames - 1) + 1):
            if mode == "binary":
                value = 1.0
            elif mode == "velocity":
                value = velocity / 127.0
            else:
                centre = start + (t + 0.5) * fs
                progress = (centre - onset) / dur if dur > 0 else 0.0
                progress = min(max(progress, 0.0), 1.0)
                value = velocity / 127.0 * (1.0 - (1.0 - decay_floor) * progress)
            roll[row, octave, t] = max(roll[row, octave, t], value)
    return roll.astype(np.float32)


def notes_of(rows, *, drum=False):
    """A NOTE_DTYPE array from (onset_s, duration_s, pitch, velocity) rows."""
    a = np.zeros(len(rows), NOTE_DTYPE)
    for k, (onset, dur, pitch, vel) in enumerate(rows):
        a[k] = (onset, dur, pitch, vel, 0, drum, 0)
    return a


@pytest.fixture(scope="module")
def real_notes():
    """Note arrays of every performance and multitrack fixture, loaded once for the module."""
    paths = sorted((FIXTURES / "performance").glob("*.mid")) + sorted((FIXTURES / "multitrack").glob("*.mid"))
    assert len(paths) >= 20, f"expected the real MIDI fixtures under {FIXTURES}"
    return {p.name: note_array(load(p)) for p in paths}


# --- the fast renderer equals the reference on real music ------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_on_real_files_first_minute(real_notes, mode):
    # The whole roll (duration=None) of each piece's first minute of onsets.
    for name, notes in real_notes.items():
        head = notes[notes["onset"] < 60.0]
        fast = pianoroll(head, mode=mode)
        slow = reference_pianoroll(head, mode=mode)
        assert fast.shape == slow.shape, name
        assert fast.dtype == np.float32
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_on_real_files_in_a_window(real_notes, mode):
    # A window in the middle: notes struck before it and still held must be clipped, not lost;
    # a start off the frame grid and a coarser frame exercise the general case.
    for name, notes in real_notes.items():
        near = notes[(notes["onset"] > 20.0) & (notes["onset"] < 55.0)]
        for start, duration, fs in ((30.0, 20.0, 0.05), (31.37, 12.5, 0.1)):
            fast = pianoroll(near, mode=mode, start=start, duration=duration, frame_seconds=fs)
            slow = reference_pianoroll(near, mode=mode, start=start, duration=duration, frame_seconds=fs)
            assert fast.shape == (12, 6, round(duration / fs)), name
            np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6, err_msg=name)


def test_matches_reference_when_dropping_out_of_range(real_notes):
    notes = real_notes["Maestro_2.mid"]  # reaches MIDI 21 and 104
    head = notes[notes["onset"] < 60.0]
    for mode in MODES:
        np.testing.assert_allclose(
            pianoroll(head, mode=mode, out_of_range="drop"),
            reference_pianoroll(head, mode=mode, out_of_range="drop"),
            rtol=0,
            atol=1e-6,
        )


def test_window_on_the_grid_is_a_slice_of_the_whole_roll(real_notes):
    notes = real_notes["Handel, George Frideric, Air in E major, HWV 425, bNzVz5byPqk.mid"]
    whole = pianoroll(notes, mode="binary")
    window = pianoroll(notes, mode="binary", start=40.0, duration=15.0)
    np.testing.assert_array_equal(window, whole[..., 800:1100])


# --- layout ------------------------------------------------------------------------------------


def test_chromatic_scale_climbs_the_helix():
    # 72 notes, 29..100, each 0.1 s = two 50 ms frames, one after the other.
    score = make_score([(96 * k, 96, 29 + k, 100) for k in range(72)])
    roll = pianoroll(note_array(score))
    assert roll.shape == (12, 6, 144)
    # Every cell is used, each by exactly two frames: the 6th octave is not empty.
    np.testing.assert_array_equal(roll.sum(axis=2), np.full((12, 6), 2.0))
    # Flattening (octave, pitch class) is chromatic: frame 2k lights pitch 29 + k.
    flat = chromatic(roll)
    assert flat.shape == (72, 144)
    np.testing.assert_array_equal(flat.argmax(axis=0), np.repeat(np.arange(72), 2))
    # Past the last pitch class of an octave comes the first of the next one.
    for k in range(72):
        row, octave = cell(29 + k)
        assert (row, octave) == (k % 12, k // 12)
        assert roll[row, octave, 2 * k] == 1.0
    assert cell(40) == (11, 0) and cell(41) == (0, 1)


def test_pitch_class_axis_starts_at_f():
    assert PITCH_CLASS_NAMES[0] == "F"
    assert PITCH_CLASS_NAMES[cell(60)[0]] == "C"  # middle C
    assert PITCH_CLASS_NAMES[cell(69)[0]] == "A"
    assert cell(29) == (0, 0) and cell(100) == (11, 5)
    with pytest.raises(ValueError):
        cell(28)


def test_out_of_range_notes_fold_by_octaves_or_drop():
    # C0 -> C2 (36), E1 -> E2 (40), F7 -> F6 (89), G9 -> G6 (91)
    notes = notes_of([(0.05 * k, 0.05, p, 100) for k, p in enumerate([12, 28, 101, 127])])
    folded = pianoroll(notes)
    expected = pianoroll(notes_of([(0.05 * k, 0.05, p, 100) for k, p in enumerate([36, 40, 89, 91])]))
    np.testing.assert_array_equal(folded, expected)
    assert folded.sum() == 4
    dropped = pianoroll(notes, out_of_range="drop")
    assert dropped.shape == (12, 6, 0)  # nothing left, so nothing to cover
    assert not pianoroll(notes, out_of_range="drop", duration=1.0).any()


# --- frames and values -------------------------------------------------------------------------


def test_frames_a_note_covers():
    def lit(onset, dur):
        return np.flatnonzero(pianoroll(notes_of([(onset, dur, 60, 100)]), duration=1.0)[cell(60)])

    assert lit(0.0, 0.05).tolist() == [0]  # exactly one frame
    assert lit(0.0, 0.051).tolist() == [0, 1]  # touches the next one
    assert lit(0.15, 0.1).tolist() == [3, 4]  # 0.15 / 0.05 is 2.9999... in floats: snapped to 3
    assert lit(0.3000001, 0.1).tolist() == [6, 7]  # float32 seconds from symusic
    assert lit(0.0, 0.0504).tolist() == [0]  # within 1% of a frame of a boundary
    assert lit(0.12, 0.0).tolist() == [2]  # zero-length notes still get one frame
    assert lit(0.1, 0.0).tolist() == [2]
    assert lit(0.02, 0.01).tolist() == [0]


def test_length_runs_to_the_last_note_off():
    roll = pianoroll(notes_of([(0.0, 0.1, 60, 90), (1.0, 0.26, 64, 90)]))
    assert roll.shape == (12, 6, 26)  # ceil(1.26 / 0.05)
    assert pianoroll(notes_of([(0.0, 0.1, 60, 90)]), frame_seconds=0.025).shape == (12, 6, 4)


def test_velocity_takes_the_loudest_overlapping_note():
    notes = notes_of([(0.0, 0.2, 60, 40), (0.1, 0.2, 60, 127), (0.0, 0.1, 62, 64)])
    roll = pianoroll(notes, mode="velocity")
    np.testing.assert_allclose(roll[cell(60)], [40 / 127, 40 / 127, 1.0, 1.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(roll[cell(62)], [64 / 127, 64 / 127, 0, 0, 0, 0], rtol=1e-6)
    assert set(np.unique(pianoroll(notes, mode="binary"))) == {0.0, 1.0}


def test_decay_fades_linearly_to_the_floor():
    roll = pianoroll(notes_of([(0.0, 1.0, 60, 127)]), mode="decay", decay_floor=0.2)
    values = roll[cell(60)]
    assert values.shape == (20,)
    centres = (np.arange(20) + 0.5) * 0.05
    np.testing.assert_allclose(values, 1.0 - 0.8 * centres, rtol=1e-6)
    assert np.all(np.diff(values) < 0)
    # Floor 1 is plain velocity mode.
    notes = notes_of([(0.0, 1.0, 60, 90), (0.3, 0.02, 70, 50)])
    flat = pianoroll(notes, mode="decay", decay_floor=1.0)
    np.testing.assert_array_equal(flat, pianoroll(notes, mode="velocity"))


def test_drums_are_ignored():
    pitched = notes_of([(0.0, 0.5, 60, 100)])
    both = np.concatenate([pitched, notes_of([(0.0, 0.5, 36, 100), (1.0, 0.5, 38, 100)], drum=True)])
    np.testing.assert_array_equal(pianoroll(both), pianoroll(pitched))


def test_empty_input_gives_zeros():
    empty = np.zeros(0, NOTE_DTYPE)
    assert pianoroll(empty).shape == (12, 6, 0)
    for mode in MODES:
        roll = pianoroll(empty, mode=mode, duration=2.0)
        assert roll.shape == (12, 6, 40) and roll.dtype == np.float32 and not roll.any()
    rng = np.random.default_rng(0)
    crop = random_crop(empty, 3.0, rng)
    assert crop.shape == (12, 6, 60) and not crop.any()
    assert not center_crop(empty, 3.0).any()


def test_bad_arguments_are_refused():
    notes = notes_of([(0.0, 0.5, 60, 100)])
    with pytest.raises(ValueError):
        pianoroll(notes, mode="loudness")
    with pytest.raises(ValueError):
        pianoroll(notes, out_of_range="clip")
    with pytest.raises(ValueError):
        pianoroll(notes, frame_seconds=0)
    with pytest.raises(PartitaError, match="expected a note array"):
        pianoroll(np.zeros(3))


# --- crops -------------------------------------------------------------------------------------


def test_random_crop_shape_and_slice(real_notes):
    notes = real_notes["Maestro_1.mid"]
    whole = pianoroll(notes)
    rng = np.random.default_rng(7)
    for _ in range(5):
        crop, start = random_crop(notes, 10.0, rng, return_start=True)
        assert crop.shape == (12, 6, 200)
        first = round(start / 0.05)
        assert abs(first * 0.05 - start) < 1e-9  # on the frame grid
        np.testing.assert_array_equal(crop, whole[..., first : first + 200])
    for mode in MODES:
        assert random_crop(notes, 4.0, rng, mode=mode, frame_seconds=0.1).shape == (12, 6, 40)


def test_random_crop_is_deterministic_per_seed(real_notes):
    notes = real_notes["Maestro_3.mid"]
    a = [random_crop(notes, 5.0, np.random.default_rng(123), mode="decay") for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    starts = {random_crop(notes, 5.0, np.random.default_rng(seed), return_start=True)[1] for seed in range(8)}
    assert len(starts) > 1  # different seeds move the window


def test_crops_stay_within_the_music():
    # 2 s of silence, then 4 s of one held note: windows never start in the leading silence
    # and never run past the end while a later start would fit.
    notes = notes_of([(2.0, 4.0, 60, 100)])
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop, start = random_crop(notes, 1.0, rng, return_start=True)
        assert 2.0 - 1e-9 <= start <= 5.0 + 1e-9
        assert crop[cell(60)].all()
    crop, start = center_crop(notes, 1.0, return_start=True)
    assert start == pytest.approx(3.5)


def test_short_piece_is_zero_padded_at_the_end():
    notes = notes_of([(0.5, 0.5, 60, 100), (1.0, 0.5, 64, 100)])  # 1 s of music from 0.5 s
    for crop in (random_crop(notes, 5.0, np.random.default_rng(1)), center_crop(notes, 5.0)):
        assert crop.shape == (12, 6, 100)
        np.testing.assert_array_equal(crop[..., :20], pianoroll(notes)[..., 10:30])
        assert not crop[..., 20:].any()
