"""MIDI loading: every usable file loads, every unusable one is one MidiError with its reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import symusic
from conftest import make_score
from symusic import Pedal, Score, Track

from partita.io import MidiError, duration_seconds, load, merge_tracks, note_array, preprocess, save, sustain_pedal


def _smf(fmt: int = 1, ntracks: int = 1, division: int = 480, tracks: list[bytes] | None = None) -> bytes:
    """A standard MIDI file built byte by byte."""
    if tracks is None:
        # one note: delta 0 note-on C4, delta 480 note-off, end of track
        events = bytes([0x00, 0x90, 60, 100, 0x83, 0x60, 0x80, 60, 0, 0x00, 0xFF, 0x2F, 0x00])
        tracks = [b"MTrk" + struct.pack(">I", len(events)) + events]
    return b"MThd" + struct.pack(">IHHH", 6, fmt, ntracks, division) + b"".join(tracks)


def test_hand_made_file_loads_from_bytes_and_path(tmp_path):
    data = _smf()
    score = load(data)
    assert score.note_num() == 1
    path = tmp_path / "one.mid"
    path.write_bytes(data)
    notes = note_array(load(path))
    assert notes["pitch"].tolist() == [60]
    assert notes["onset"][0] == 0.0 and notes["duration"][0] == pytest.approx(0.5)  # 120 qpm default


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not_midi"),
        (b"RIFF0000WAVEfmt ", "not_midi"),
        (b"MThd\x00\x00", "truncated"),
        (_smf(division=0xE728), "smpte"),  # -25 fps, 40 ticks per frame
        (_smf(division=0), "zero_tpq"),
        (_smf(fmt=2), "type2"),
        (_smf(fmt=7), "corrupt"),
        (_smf()[:-5], "truncated"),
        (_smf(tracks=[b"MTrk" + struct.pack(">I", 4) + bytes([0x00, 0xFF, 0x2F, 0x00])]), "no_notes"),
    ],
    ids=["empty", "not-midi", "short-header", "smpte", "zero-tpq", "type2", "bad-format", "truncated-track", "no-notes"],
)
def test_each_unusable_input_has_its_reason(data, reason):
    with pytest.raises(MidiError) as info:
        load(data)
    assert info.value.reason == reason
    assert "\n" not in str(info.value)


def test_size_limit(tmp_path):
    path = tmp_path / "big.mid"
    path.write_bytes(_smf())
    with pytest.raises(MidiError) as info:
        load(path, max_bytes=10)
    assert info.value.reason == "too_large"
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MidiError) as info:
        load(tmp_path / "nope.mid")
    assert info.value.reason == "missing"
    with pytest.raises(MidiError) as info:
        load(tmp_path)
    assert info.value.reason == "not_midi"


def test_corrupt_control_change_is_refused_not_crashed(fixtures):
    with pytest.raises(MidiError) as info:
        load(fixtures / "edge" / "control168-corrupt.mid")
    assert info.value.reason == "corrupt"


def test_rmid_wrapper_is_unwrapped():
    smf = _smf()
    chunk = b"data" + struct.pack("<I", len(smf)) + smf
    riff = b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"RMID" + chunk
    assert load(riff).note_num() == 1


def test_every_performance_and_multitrack_fixture_loads(fixtures):
    files = sorted((fixtures / "performance").glob("*.mid")) + sorted((fixtures / "multitrack").glob("*.mid"))
    assert len(files) >= 30
    for f in files:
        score = load(f)
        notes = note_array(score)
        assert len(notes) > 0
        assert np.all(np.diff(notes["onset"]) >= 0)


def test_every_edge_fixture_loads_or_is_refused(fixtures):
    outcomes = {}
    for f in sorted((fixtures / "edge").glob("*.mid")):
        try:
            load(f)
            outcomes[f.name] = "ok"
        except MidiError as e:
            assert "\n" not in str(e)
            outcomes[f.name] = e.reason
    assert outcomes["negative-ticks-per-beat.mid"] == "smpte"
    assert outcomes["zero-ticks-per-beat.mid"] == "zero_tpq"
    assert outcomes["type2.mid"] == "type2"
    assert outcomes["empty.mid"] == "no_notes"
    assert outcomes["fur-elise.mid"] == "ok"


def test_units_seconds_beats_ticks():
    score = make_score([(0, 480, 60, 80), (960, 240, 62, 90)], qpm=60)
    sec, beat, tick = (note_array(score, u) for u in ("second", "beat", "tick"))
    assert sec["onset"].tolist() == [0.0, 2.0] and sec["duration"].tolist() == [1.0, 0.5]
    assert beat["onset"].tolist() == [0.0, 2.0] and beat["duration"].tolist() == [1.0, 0.5]
    assert tick["onset"].tolist() == [0, 960]
    with pytest.raises(ValueError):
        note_array(score, "bar")


def test_sustain_pedal_extends_until_release_or_restrike():
    score = make_score([(0, 100, 60, 80), (200, 100, 64, 80), (600, 100, 60, 80), (1500, 100, 67, 80)])
    # pedal down 50..1000
    score.tracks[0].pedals = Pedal.from_numpy(time=np.array([50], np.int32), duration=np.array([950], np.int32))
    out = note_array(sustain_pedal(score), "tick")
    durs = {(int(n["onset"]), int(n["pitch"])): int(n["duration"]) for n in out}
    assert durs[(0, 60)] == 600  # held by the pedal, cut by the re-struck C at 600
    assert durs[(200, 64)] == 800  # held until the pedal lifts at 1000
    assert durs[(600, 60)] == 400
    assert durs[(1500, 67)] == 100  # after the pedal: unchanged
    assert len(sustain_pedal(score).tracks[0].pedals) == 0


def test_drop_drums_and_merge_tracks():
    piano = make_score([(0, 480, 60, 80)])
    drums = make_score([(0, 120, 36, 100)], is_drum=True).tracks[0]
    bass = Track("bass", 33, False)
    bass.notes = make_score([(240, 240, 40, 70)]).tracks[0].notes
    piano.tracks.append(drums)
    piano.tracks.append(bass)
    assert not any(t.is_drum for t in preprocess(piano, drums=False).tracks)
    merged = merge_tracks(piano)
    assert len(merged.tracks) == 1 and merged.tracks[0].program == 0
    assert sorted(note_array(merged)["pitch"].tolist()) == [40, 60]


def test_save_round_trip(tmp_path):
    score = make_score([(0, 480, 60, 80), (480, 480, 67, 90)])
    path = save(score, tmp_path / "sub" / "out.mid")
    assert note_array(load(path)).tolist() == note_array(score).tolist()
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_empty_score_is_refused_unless_allowed():
    data = Score(480).dumps_midi()
    with pytest.raises(MidiError):
        load(data)
    assert load(data, allow_empty=True).note_num() == 0


def test_atomic_writes_are_whole_or_not_at_all(tmp_path):
    from partita.io.files import atomic_path, atomic_write

    path = atomic_write(tmp_path / "sub" / "a.txt", "one")  # the folder is made
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert path.read_text() == "one" and [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temporary file left
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"


def test_pitched_drops_drums_and_refuses_other_arrays():
    from partita.errors import PartitaError
    from partita.io.midi import NOTE_DTYPE, pitched

    notes = np.zeros(3, NOTE_DTYPE)
    notes["onset"], notes["pitch"], notes["is_drum"] = [2.0, 1.0, 1.0], [60, 64, 36], [False, False, True]
    assert pitched(notes)["pitch"].tolist() == [60, 64]
    assert pitched(notes, sort=True)["pitch"].tolist() == [64, 60]
    with pytest.raises(PartitaError, match="expected a note array"):
        pitched(np.zeros(3))


# --------------------------------------------------------------------------- the file's clock (io.timing)


def _timed(tpq=480, tempos=((0, 120.0),), metre=()):
    from symusic import Note, Score, Tempo, TimeSignature, Track

    s = Score(tpq)
    t = Track("", 0, False)
    t.notes.append(Note(0, 10, 60, 80))
    t.notes.append(Note(tpq * 40, 10, 60, 80))
    s.tracks.append(t)
    for tick, qpm in tempos:
        s.tempos.append(Tempo(tick, qpm))
    for tick, n, d in metre:
        s.time_signatures.append(TimeSignature(tick, n, d))
    return s


@pytest.mark.parametrize("metre, bar", [((0, 2, 4), 960), ((0, 3, 4), 1440), ((0, 6, 8), 1440), ((0, 3, 8), 720), ((0, 5, 8), 1200)])
def test_bar_grid_in_the_files_own_metre(metre, bar):
    from partita.io.timing import bar_of, bar_starts, metres

    s = _timed(metre=(metre,))
    starts = bar_starts(s, bars=10)
    assert starts[:11].tolist() == [k * bar for k in range(11)]
    assert bar_of(starts, [0, bar - 1, bar]).tolist() == [0, 0, 1]
    assert metres(s) == ((metre[1], metre[2]),)


def test_bar_grid_follows_metre_changes_and_starts_a_bar_at_a_change():
    from partita.io.timing import bar_starts, metres

    s = _timed(metre=((0, 4, 4), (3840, 3, 4), (3840 + 1440 + 480, 2, 4)))  # the last change comes mid-bar
    starts = bar_starts(s, 8000).tolist()
    assert starts[:6] == [0, 1920, 3840, 5280, 5760, 6720]
    assert metres(s) == ((2, 4), (3, 4), (4, 4))
    assert bar_starts(_timed(), bars=2)[:3].tolist() == [0, 1920, 3840]  # 4/4 when there is none


def test_seconds_and_ticks_through_the_tempo_map_agree_with_symusic():
    from partita.io.timing import seconds_at, ticks_at

    s = _timed(tempos=((0, 30.0), (960, 90.0), (4800, 200.0)))
    ticks = np.array([0, 100, 960, 2000, 4800, 19200])
    mine = seconds_at(s, ticks)
    theirs = []
    for tick in ticks:  # symusic's own conversion of a note at that tick
        probe = s.copy()
        probe.tracks[0].notes.append(symusic.Note(int(tick), 1, 61, 1))
        sec = probe.to("second")
        theirs.append(min(n.time for n in sec.tracks[0].notes if n.pitch == 61))
    np.testing.assert_allclose(mine, theirs, atol=1e-6)
    assert ticks_at(s, mine).tolist() == ticks.tolist()
    assert seconds_at(_timed(tempos=()), [480]).tolist() == [0.5]  # 120 qpm before any tempo


def test_duration_counts_notes_not_meta_events():
    from symusic import Tempo

    s = _timed()
    s.tempos.append(Tempo(480 * 400, 60.0))  # a tempo map that runs on past the music
    assert duration_seconds(s) == pytest.approx((480 * 40 + 10) / 960)
