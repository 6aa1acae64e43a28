"""MusicVAE melody events: extraction, skyline, windows, and exact events -> MIDI -> events."""

from __future__ import annotations

import numpy as np
import pytest
from symusic import Score, Track

from conftest import FIXTURES, make_score
from partita.io import MidiError, load
from partita.represent.melody import (
    HOLD,
    NOTE_OFF,
    NUM_CLASSES,
    STEPS_PER_BAR,
    STEPS_PER_QUARTER,
    Melody,
    canonicalize,
    events_to_score,
    extract_melodies,
    extract_windows,
    is_canonical,
    meter_steps,
    score_to_events,
    sounding,
    validate,
    windows,
)

H, O = HOLD, NOTE_OFF
STEP = 120  # ticks per 16th note at tpq=480
REAL = ["edge/fur-elise.mid", "multitrack/POP909_008.mid", "performance/Maestro_1.mid"]


def through_midi(events, **kwargs) -> np.ndarray:
    """events -> Score -> MIDI bytes -> partita.io.load -> events."""
    data = events_to_score(events, **kwargs).dumps_midi()
    return score_to_events(load(data, allow_empty=True))


def notes_at(steps: list[tuple[int, int, int]]) -> Score:
    """A score from (start_step, length_steps, pitch) at tpq=480."""
    return make_score([(s * STEP, n * STEP, p, 90) for s, n, p in steps])


def test_constants_and_numbering():
    assert (NOTE_OFF, HOLD, NUM_CLASSES) == (128, 129, 130)
    assert (STEPS_PER_QUARTER, STEPS_PER_BAR) == (4, 16)
    assert meter_steps(4, 4) == meter_steps(2, 2) == 16
    assert meter_steps(3, 4) == 12 and meter_steps(6, 8) == 12


HAND_MADE = [
    [60, H, H, H, O, H, 62, H, 64, 64, 64, H, O, H, H, H],  # repeated pitch, trailing rest
    [H, H, H, 72, H, H, H, H],  # leading rest, note sounding at the end
    [0, 127, O, H, H, 0, H, H],  # extreme pitches
    [H] * 16 + [65, O] + [H] * 14,  # a silent first bar and a silent tail: the end marker keeps them
    [60],
    [H, H, H],  # silence only
    [],
]


@pytest.mark.parametrize("events", HAND_MADE)
def test_hand_made_round_trip_is_exact(events):
    events = np.array(events, dtype=np.int64)
    assert is_canonical(events)
    assert np.array_equal(through_midi(events), events)


def test_round_trip_at_other_resolutions():
    events = np.array([60, H, 62, O, H, 64, 64, H, H, O, H, H, 67, H, H, H])
    for tpq in (96, 220, 384, 10080):
        assert np.array_equal(through_midi(events, tpq=tpq, qpm=90.0, program=40), events)


def test_decoding_notes():
    score = events_to_score([H, 60, H, 60, O, H, 62, H], tpq=480)
    notes = [(n.time, n.duration, n.pitch) for n in score.tracks[0].notes]
    assert notes == [(120, 240, 60), (360, 120, 60), (720, 240, 62)]
    assert score.tpq == 480 and score.tempos[0].qpm == pytest.approx(120.0)


def test_canonicalize_rewrites_silent_note_offs_only():
    events = np.array([O, H, O, 60, O, O, H, 62, H, O])
    assert not is_canonical(events)
    canon = canonicalize(events)
    assert canon.tolist() == [H, H, H, 60, O, H, H, 62, H, O]
    assert np.array_equal(canonicalize(canon), canon)
    assert sounding(canon).tolist() == [-1, -1, -1, 60, -1, -1, -1, 62, 62, -1]
    # Batched along the last axis.
    assert np.array_equal(canonicalize(np.stack([events, events])), np.stack([canon, canon]))


def test_validate_rejects_non_events():
    with pytest.raises(ValueError, match="out of range"):
        validate([60, 130])
    with pytest.raises(ValueError, match="out of range"):
        events_to_score([-1, 60])
    with pytest.raises(ValueError, match="integers"):
        validate([60.0, 61.0])
    with pytest.raises(ValueError, match="tpq"):
        events_to_score([60], tpq=100 + 2)


def test_random_sequences_decode_to_readable_midi():
    """Any ints in [0, 130) decode; the MIDI reads back; re-encoding gives the canonical form."""
    rng = np.random.default_rng(0)
    for i in range(200):
        n = int(rng.integers(1, 97))
        events = rng.integers(0, NUM_CLASSES, n)
        if i % 2:  # realistic density: mostly holds, some note-offs
            events = np.where(rng.random(n) < 0.6, HOLD, events)
            events = np.where(rng.random(n) < 0.15, NOTE_OFF, events)
        data = events_to_score(events).dumps_midi()
        score = load(data, allow_empty=True)
        n_notes = int(np.count_nonzero(events < NOTE_OFF))
        assert score.note_num() == n_notes and len(score.tracks) == (1 if n_notes else 0)
        assert np.array_equal(score_to_events(score), canonicalize(events))


def test_extract_quantizes_to_sixteenths():
    # Off-grid onsets and offsets snap to the nearest step; a tiny note keeps one step.
    score = make_score([(10, 470, 60, 90), (475, 250, 62, 90), (1000, 5, 64, 90), (1200, 100, 65, 90)])
    (melody,) = extract_melodies(score, min_notes=1)
    expected = [60, H, H, H, 62, H, O, H, 64, O, 65, O, H, H, H, H]
    assert melody.events.tolist() == expected
    assert (melody.track, melody.program, melody.start_step) == (0, 0, 0)
    assert isinstance(melody, Melody) and melody.n_notes == 4 and melody.bars == 1


def test_extract_uses_the_score_resolution():
    score = make_score([(0, 96, 60, 90), (96, 48, 62, 90), (192, 384, 64, 90)], tpq=96, program=73)
    (melody,) = extract_melodies(score, min_notes=1)
    assert melody.events[:9].tolist() == [60, H, H, H, 62, H, O, H, 64]
    assert melody.program == 73


def test_leading_silence_is_cut_to_the_bar_of_the_first_note():
    score = notes_at([(37, 2, 60), (40, 4, 62)])
    (melody,) = extract_melodies(score, min_notes=1)
    assert melody.start_step == 32
    assert melody.events.tolist() == [H] * 5 + [60, H, O, 62, H, H, H, O] + [H] * 3
    # The bar position survives decoding: re-extracting the decoded melody gives the same events.
    again = extract_melodies(load(melody.to_score().dumps_midi()), min_notes=1)[0]
    assert np.array_equal(again.events, melody.events)


def test_skyline_keeps_the_highest_note():
    # A held C-E-G chord under a melody that goes above it and then below the top of the chord.
    score = notes_at([(0, 8, 60), (0, 8, 64), (0, 8, 67), (2, 2, 72), (4, 2, 69), (6, 2, 66), (8, 4, 55)])
    (melody,) = extract_melodies(score, min_notes=1)
    # Step 6: 66 starts under the still-held 67, so 67 (struck at 0) re-enters as a new note-on.
    assert melody.events[:13].tolist() == [67, H, 72, H, 69, H, 67, H, 55, H, H, H, O]
    with pytest.raises(MidiError) as err:
        extract_melodies(score, skyline=False, min_notes=1)
    assert err.value.reason == "no_melody" and "polyphonic" in str(err.value)
    with pytest.raises(MidiError) as err:
        score_to_events(score)
    assert err.value.reason == "polyphonic"
    assert score_to_events(score, skyline=True)[:13].tolist() == melody.events[:13].tolist()


def test_skyline_restrikes_a_repeated_top_note():
    score = notes_at([(0, 4, 60), (0, 8, 48), (4, 4, 60), (2, 6, 55)])
    (melody,) = extract_melodies(score, min_notes=1)
    assert melody.events[:9].tolist() == [60, H, H, H, 60, H, H, H, O]


def test_monophonic_tracks_are_kept_polyphonic_skipped_without_skyline():
    score = notes_at([(0, 4, 60), (4, 4, 62), (8, 4, 64), (12, 4, 65)])
    chords = Track("chords", 0, False)
    chords.notes = notes_at([(0, 16, 48), (0, 16, 52)]).tracks[0].notes
    score.tracks.append(chords)
    mono = extract_melodies(score, skyline=False)
    assert [m.track for m in mono] == [0]
    both = extract_melodies(score, skyline=True, min_notes=1)
    assert [m.track for m in both] == [0, 1]


def test_drums_only_raises_no_melody():
    score = make_score([(i * STEP, STEP, 36 + i % 3, 100) for i in range(32)], is_drum=True)
    with pytest.raises(MidiError) as err:
        extract_melodies(score)
    assert err.value.reason == "no_melody" and "\n" not in str(err.value)


def test_min_notes_and_programs_filter_tracks():
    score = notes_at([(0, 4, 60), (4, 4, 62)])
    with pytest.raises(MidiError) as err:
        extract_melodies(score, min_notes=4)
    assert err.value.reason == "no_melody"
    assert len(extract_melodies(score, min_notes=2)) == 1
    with pytest.raises(MidiError):
        extract_melodies(score, min_notes=1, programs=range(32, 40))


def test_windows_shapes_hop_and_alignment():
    rng = np.random.default_rng(1)
    pitches = rng.integers(55, 80, 64)
    events = np.full(64 * 8, HOLD)  # 32 bars of eighth notes
    events[::8] = pitches
    events[4::8] = NOTE_OFF
    two = windows(events, bars=2)
    assert two.shape == (31, 32)
    assert np.array_equal(two[1], events[16:48])
    sixteen = windows(events, bars=16, hop_bars=4)
    assert sixteen.shape == (5, 256)
    assert np.array_equal(sixteen[-1], events[256:512])
    assert windows(events[:20], bars=2).shape == (0, 32)
    assert all(is_canonical(row) for row in two)


def test_windows_start_self_contained():
    # A note held across the window boundary is re-struck at the window start; a note-off right at
    # the start becomes a HOLD (nothing is sounding inside the window yet).
    events = np.array([60] + [H] * 19 + [O] + [H] * 3 + [62, H, H, H, H, H, H, O] + [64] + [H] * 15)
    rows = windows(events, bars=1, max_rest_bars=None)
    assert rows[1].tolist() == [60, H, H, H, O, H, H, H, 62, H, H, H, H, H, H, O]
    off_first = np.array([60] + [H] * 15 + [O] + [H] * 7 + [62] + [H] * 7)
    assert windows(off_first, bars=1, max_rest_bars=None)[1][0] == HOLD


def test_windows_skip_long_rests_and_sparse_windows():
    bar_notes = [60, H, H, H, O, H, H, H, 62, H, H, H, O, H, H, H]
    silent_bar = [H] * 16
    events = np.array(bar_notes * 2 + silent_bar + bar_notes * 2)
    # Windows 1 and 2 hold the silent bar (with the note-off before it, a rest of 20 steps).
    assert windows(events, bars=2).shape == (2, 32)
    assert windows(events, bars=2, max_rest_bars=None).shape == (4, 32)
    assert windows(events, bars=2, max_rest_bars=2).shape == (4, 32)
    # Half of each note bar is rest; the silent bar pushes windows over 0.6.
    assert windows(events, bars=2, max_rest_bars=None, max_silence=0.6).shape == (2, 32)
    assert windows(events, bars=2, max_rest_bars=None, min_notes=3).shape == (2, 32)
    assert windows(events, bars=1, dedupe=True).shape == (1, 16)


def test_extract_windows_errors():
    short = notes_at([(i * 2, 2, 60 + i) for i in range(8)])  # one bar
    with pytest.raises(MidiError) as err:
        extract_windows(short, bars=2)
    assert err.value.reason == "too_short"
    assert extract_windows(short, bars=1).shape == (1, 16)
    sparse = notes_at([(0, 1, 60), (40, 1, 62), (80, 1, 64)])
    with pytest.raises(MidiError) as err:
        extract_windows(sparse, bars=2)
    assert err.value.reason == "too_sparse"
    with pytest.raises(MidiError) as err:
        extract_windows(make_score([(0, 480, 36, 100)], is_drum=True))
    assert err.value.reason == "no_melody"


def test_strict_meter_refuses_bars_that_are_not_16_steps():
    waltz = make_score([(i * 480, 480, 60 + i % 5, 90) for i in range(24)], time_signature=(3, 4))
    assert len(extract_melodies(waltz)) == 1
    with pytest.raises(MidiError) as err:
        extract_melodies(waltz, strict_meter=True)
    assert err.value.reason == "meter"
    cut_time = make_score([(i * 480, 480, 60 + i % 5, 90) for i in range(24)], time_signature=(2, 2))
    assert len(extract_melodies(cut_time, strict_meter=True)) == 1


@pytest.mark.parametrize("name", REAL)
def test_real_files_round_trip(name, fixtures):
    score = load(fixtures / name)
    melodies = extract_melodies(score)
    assert melodies
    for melody in melodies:
        events = melody.events
        assert len(events) % STEPS_PER_BAR == 0 and melody.start_step % STEPS_PER_BAR == 0
        assert is_canonical(events) and melody.n_notes >= 4
        assert events.min() >= 0 and events.max() < NUM_CLASSES
        assert np.array_equal(through_midi(events, tpq=score.tpq, program=melody.program), events)
        for bars in (2, 16):
            rows = windows(melody, bars=bars)
            assert rows.ndim == 2 and rows.shape[1] == bars * 16
            for row in rows[:: max(1, len(rows) // 5)]:
                assert np.array_equal(through_midi(row), row)
    assert extract_windows(score, bars=2).shape[1] == 32


def test_skyline_off_on_a_performance_keeps_nothing():
    score = load(FIXTURES / "performance/Maestro_1.mid")
    with pytest.raises(MidiError) as err:
        extract_melodies(score, skyline=False)
    assert err.value.reason == "no_melody"


@pytest.mark.parametrize(
    "name, number, tracks",
    [("essenFolksong/altdeu10", 1, 1), ("bach/bwv66.6", None, 4)],
)
def test_music21_corpus_melodies(name, number, tracks, tmp_path):
    music21 = pytest.importorskip("music21")
    piece = music21.corpus.parse(name, number=number) if number else music21.corpus.parse(name)
    path = tmp_path / "piece.mid"
    piece.write("midi", fp=str(path))
    score = load(path)
    # Folk song and chorale parts are single lines: nothing needs the skyline.
    melodies = extract_melodies(score, skyline=False)
    assert len(melodies) == tracks
    for melody in melodies:
        assert np.array_equal(through_midi(melody.events, tpq=score.tpq), melody.events)
        assert np.array_equal(score_to_events(melody.to_score()), melody.events)
    assert extract_windows(score, bars=2, skyline=False).shape[1] == 32


def test_drop_windows_removes_held_out_windows_in_any_key():
    from partita.represent.melody import drop_windows

    train = np.array([[60, HOLD, 62, NOTE_OFF], [70, HOLD, 72, NOTE_OFF], [60, 64, HOLD, HOLD], [HOLD] * 4], np.int16)
    held = np.array([[65, HOLD, 67, NOTE_OFF], [HOLD] * 4], np.int16)
    assert drop_windows(train, held).tolist() == [[60, 64, HOLD, HOLD]]  # same shape a fourth up, and the empty one
    assert drop_windows(train, held[:0]).tolist() == train.tolist()


def test_corpus_windows_reads_each_split_and_counts_what_it_skips(tmp_path):
    from conftest import labelled_folder
    from partita.data.corpus import Corpus
    from partita.data.prepare import prepare
    from partita.errors import PartitaError
    from partita.represent.melody import corpus_windows

    root = tmp_path / "midi"
    labelled_folder(root, {"Edge": [FIXTURES / "edge" / f"{n}.mid" for n in ("fur-elise", "pitches", "durations")]})
    prepare(root, tmp_path / "c", workers=1, valid=0.0, test=0.0)
    corpus = Corpus(tmp_path / "c")
    w, info = corpus_windows(corpus, "train", 2, labels=["edge"])  # case ignored
    assert w.dtype == np.int16 and w.shape[1] == 32 and info["windows"] == len(w) > 0
    assert info["pieces"] + sum(info["skipped"].values()) == 3 and info["labels"] == ["Edge"]
    expected = np.concatenate([extract_windows(corpus.score(i), bars=2) for i in corpus.indices(split="train")
                               if len(_windows_or_none(corpus.score(i)))])
    assert np.array_equal(w, expected)
    empty, info = corpus_windows(corpus, "test", 2)
    assert empty.shape == (0, 32) and info["pieces"] == 0
    with pytest.raises(PartitaError, match="label 'Jazz' is not in"):
        corpus_windows(corpus, "train", 2, labels=["Jazz"])


def _windows_or_none(score):
    from partita.io.midi import MidiError

    try:
        return extract_windows(score, bars=2)
    except MidiError:
        return []
