"""MIDI loading: every usable file loads, every unusable one is one MidiError with its reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import make_score
from symusic import Pedal, Score, Track

from partita.io import MidiError, load, merge_tracks, note_array, preprocess, save, sustain_pedal


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
