"""partita accompany: the melody kept in ticks, new named tracks, the rule baseline, the chord-fit
metric, the window layout, one-line errors, and a tiny model trained here through the CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
from typer.testing import CliRunner

from partita.cli import app
from partita.data.accompany import IGNORE, chord_pitch_classes, parse_tracks, song_split, window_layout
from partita.errors import PartitaError
from partita.evaluate.accompany import accompaniment_metrics, chord_fit
from partita.generation.accompany import accompany, beat_phase, choose_melody_track, rule_chords, track_tokens

FIX = Path(__file__).parent / "fixtures" / "accompany"
SONG = FIX / "008" / "008.mid"
runner = CliRunner()


def _notes(track) -> dict:
    return {k: np.asarray(v) for k, v in track.notes.numpy().items()}


def _same_tracks(original: symusic.Score, out: symusic.Score) -> None:
    assert len(out.tracks) > len(original.tracks)
    for a, b in zip(original.tracks, out.tracks):
        assert (a.name, a.program, a.is_drum) == (b.name, b.program, b.is_drum)
        na, nb = _notes(a), _notes(b)
        for k in na:
            np.testing.assert_array_equal(na[k], nb[k])
    assert out.ticks_per_quarter == original.ticks_per_quarter
    assert [(t.time, t.mspq) for t in out.tempos] == [(t.time, t.mspq) for t in original.tempos]


def _melody_file(tmp_path: Path, notes: list[tuple[int, int, int]], tpq: int = 480, name: str = "Flute") -> Path:
    score = symusic.Score(tpq)
    track = symusic.core.TrackTick(name, 73, False)
    for t, d, p in notes:
        track.notes.append(symusic.core.NoteTick(t, d, p, 90))
    score.tracks.append(track)
    path = tmp_path / "melody.mid"
    score.dump_midi(str(path))
    return path


def test_harte_labels():
    assert chord_pitch_classes("C:maj") == {0, 4, 7}
    assert chord_pitch_classes("A:min7") == {9, 0, 4, 7}
    assert chord_pitch_classes("Bb:maj/5") == {10, 2, 5}
    assert chord_pitch_classes("D:sus4(b7)") == {2, 7, 9, 0}
    assert chord_pitch_classes("G:7(*5)") == {7, 11, 5}
    assert chord_pitch_classes("N") is None and chord_pitch_classes("X") is None


def test_chord_fit_on_a_made_example():
    chords = [(0.0, 2.0, frozenset({0, 4, 7})), (2.0, 4.0, None), (4.0, 6.0, frozenset({5, 9, 0}))]
    onsets = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    durations = np.array([1.0, 1.0, 3.0, 1.0, 2.0])
    pitches = np.array([60, 61, 62, 65, 64])  # C fits, C# not, (under N: not counted), F fits, E not
    assert chord_fit(onsets, durations, pitches, chords) == pytest.approx((1.0 + 1.0) / (1 + 1 + 1 + 2))
    assert chord_fit(np.array([2.5]), np.array([1.0]), np.array([60]), chords) is None


def test_metrics_of_a_made_accompaniment():
    score = symusic.Score(480)
    score.tempos.append(symusic.core.TempoTick(0, 500000))  # 120 bpm: a beat is 0.5 s
    melody = {"time": np.array([0, 960]), "duration": np.array([960, 960]), "pitch": np.array([72, 74])}
    acc = {"time": np.array([0, 0, 960, 1200]), "duration": np.array([960, 960, 240, 240]), "pitch": np.array([48, 64, 50, 76])}
    m = accompaniment_metrics(score, melody, acc, [(0.0, 2.0, frozenset({0, 4, 7}))], end=1920)
    assert m["notes_per_beat"] == pytest.approx(4 / 4)
    assert m["on_beat"] == pytest.approx(3 / 4)  # 1200 is half a beat late
    # all under C major (to 2 s): C 1 s, E 1 s, D 0.25 s (not in it), E 0.25 s
    assert m["chord_fit"] == pytest.approx(2.25 / 2.5)
    # 12 sixteenths with both sounding: the 76 (above the melody) sounds in 2 of them
    assert m["below_melody"] == pytest.approx(10 / 12)
    assert m["polyphony"] == pytest.approx((8 * 2 + 4 * 1) / 12)  # over the 12 sixteenths where any sounds


def test_rule_baseline_follows_the_melody(tmp_path):
    # C major: bar 1 C E G (twice: half bars), bar 2 F A C, bar 3 G B D, bar 4 C E G
    q = 480
    mel = []
    for bar, pcs in enumerate([(72, 76, 79), (77, 81, 84), (79, 83, 86), (72, 76, 79)]):
        for half in range(2):
            for k, p in enumerate(pcs):
                mel.append((bar * 4 * q + half * 2 * q + k * 160 * 4 // 3, 200, p))
    score = symusic.Score(str(_melody_file(tmp_path, mel)))
    track = rule_chords(score, 0)
    n = _notes(track)
    assert track.name == "PIANO"
    halves = sorted(set(n["time"].tolist()))
    assert len(halves) == 8
    got = [frozenset(int(p) % 12 for p in n["pitch"][n["time"] == t]) for t in halves]
    want = [{0, 4, 7}] * 2 + [{5, 9, 0}] * 2 + [{7, 11, 2}] * 2 + [{0, 4, 7}] * 2
    assert got == want
    for t in halves:  # under the melody it sounds with
        sounding = [p for (a, d, p) in mel if a < t + 2 * q and a + d > t]
        assert n["pitch"][n["time"] == t].max() < min(sounding)
    chords = _notes(rule_chords(score, 0, chords="Am Dm"))
    assert {int(p) % 12 for p in chords["pitch"][chords["time"] < 4 * q]} == {9, 0, 4}


def test_beat_phase_finds_late_beats():
    assert beat_phase(np.array([0, 480, 960, 1440]), 480) == 0
    assert beat_phase(np.array([360, 840, 1320, 1800, 2040]), 480) == 360


def test_folk_keeps_every_note_and_adds_a_named_track(tmp_path):
    original = symusic.Score(str(SONG))
    result = accompany(str(SONG), style="folk")[0]
    _same_tracks(original, result.score)
    assert result.score.tracks[-1].name == "PIANO (accompaniment)"  # the file has a PIANO already
    assert result.melody_name == "MELODY" and result.melody_track == 0
    path = _melody_file(tmp_path, [(i * 480, 400, 67 + (i % 5)) for i in range(16)])
    alone = accompany(str(path), style="folk")[0]
    assert [t.name for t in alone.score.tracks] == ["Flute", "PIANO"]
    _same_tracks(symusic.Score(str(path)), alone.score)


def test_broken_chords_play_the_block_chords_one_note_a_beat(tmp_path):
    # a C major tune in 4/4 (the default metre): one chord per half bar, two beats each
    path = _melody_file(tmp_path, [(i * 480, 460, [72, 76, 79, 76][i % 4]) for i in range(16)])
    block = accompany(str(path), style="folk")[0].score.tracks[-1].notes.numpy()
    broken = accompany(str(path), style="folk", pattern="broken")[0]
    _same_tracks(symusic.Score(str(path)), broken.score)
    b = broken.score.tracks[-1].notes.numpy()
    assert len(np.unique(b["time"])) == len(b["time"])  # one note at a time
    assert set(np.diff(b["time"]).tolist()) == {480} and b["duration"].max() == 480  # one a beat
    for seg in np.unique(block["time"]):  # each half bar: the block chord's bass first, then its upper notes
        chord = np.sort(block["pitch"][block["time"] == seg])
        played = b["pitch"][(b["time"] >= seg) & (b["time"] < seg + 960)]
        assert played[0] == chord[0] and set(played[1:].tolist()) <= set(chord[1:].tolist())
    assert np.array_equal(np.unique(b["time"] // 960 * 960), np.unique(block["time"]))


def test_melody_track_choice_and_errors(tmp_path):
    score = symusic.Score(480)
    chords = symusic.core.TrackTick("Pad", 0, False)
    for i in range(8):
        for p in (48, 52, 55):
            chords.notes.append(symusic.core.NoteTick(i * 480, 480, p, 80))
    score.tracks.append(chords)
    with pytest.raises(PartitaError, match="no melody-like track.*--melody-track"):
        choose_melody_track(score)
    line = symusic.core.TrackTick("", 40, False)
    for i in range(8):
        line.notes.append(symusic.core.NoteTick(i * 480, 400, 70 + i, 80))
    score.tracks.append(line)
    assert choose_melody_track(score) == 1
    assert choose_melody_track(score, 1) == 0
    with pytest.raises(PartitaError, match="has 2 tracks"):
        choose_melody_track(score, 3)


def test_window_layout_targets_only_the_written_bars():
    given = (np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1]), np.array([0, 4, 0, 4]))
    written = (np.array([10, 11, 12, 13, 14]), np.array([0, 0, 1, 1, 2]), np.array([0, 2, 0, 2, 0]))
    ids, targets, bars, positions = window_layout(given, written, 0, 2, (98, 99))
    assert ids.tolist() == [98, 1, 2, 3, 4, 99, 10, 11, 12, 13]
    assert targets.tolist() == [IGNORE] * 5 + [10, 11, 12, 13, 14]  # the last predicts bar 2's first token
    assert bars.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    shown, *_ = window_layout(given, written, 0, 2, (98, 99), written_end=1)
    assert shown.tolist() == [98, 1, 2, 3, 4, 99, 10, 11]


def test_splits_and_track_names():
    assert song_split("009") == "test" and song_split("019") == "test"
    assert song_split("004") == "valid" and song_split("008") == "train"
    assert parse_tracks("MELODY:PIANO") == ("MELODY", "PIANO")
    with pytest.raises(PartitaError, match="GIVEN:WRITTEN"):
        parse_tracks("MELODY")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["missing.mid"], "missing.mid"),
        ([str(SONG), "--style", "chorale", "--chords", "C G"], "--chords works with --style pop and folk"),
        ([str(SONG), "--style", "jazz"], "--style must be one of"),
        ([str(SONG), "--style", "folk", "--chords", "C Hm"], "unparseable chord"),
        ([str(SONG), "--style", "folk", "--melody-track", "9"], "has 3 tracks"),
        ([str(SONG), "--style", "folk", "--pattern", "waltz"], "--pattern must be one of"),
    ],
)
def test_cli_mistakes_are_one_line(tmp_path, capsys, args, expected):
    from partita.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["accompany", *[str(tmp_path / a) if a == "missing.mid" else a for a in args], "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A tiny accompaniment model trained for a few steps on the fixture songs (train and valid)."""
    from partita.train.accompany import train_accompany

    out = tmp_path_factory.mktemp("acc") / "run"
    train_accompany(FIX, out, tracks="MELODY:PIANO", preset="tiny", max_steps=3, batch_size=2, val_every=3,
                    progress="none", seed=0)
    return out / "bundle"


def test_tiny_model_through_the_cli(tiny_bundle, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["accompany", str(SONG), "--model", str(tiny_bundle), "--seed", "3", "-t", "0.9",
                                 "--out", str(out), "--json", str(out / "r.json")])
    assert result.exit_code == 0, result.output
    assert "melody = track 1 MELODY" in result.output
    rows = json.loads((out / "r.json").read_text())["samples"]
    assert rows[0]["method"] == "model" and rows[0]["bars"] >= 20 and rows[0]["tokens"] > 0
    saved = symusic.Score(str(out / "008-accompany-000.mid"))
    original = symusic.Score(str(SONG))
    for a, b in zip(original.tracks, saved.tracks):  # the file's tracks come back as they were
        assert a.name == b.name
        for k, v in _notes(a).items():
            np.testing.assert_array_equal(v, _notes(b)[k])


def test_tiny_model_keeps_the_melody_and_repeats_for_a_seed(tiny_bundle):
    original = symusic.Score(str(SONG))
    runs = [accompany(str(SONG), model=str(tiny_bundle), seed=5, max_new_tokens=48)[0] for _ in range(2)]
    _same_tracks(original, runs[0].score)
    assert runs[0].score.tracks[-1].name == "PIANO (accompaniment)"
    assert len(runs[0].ids) > 1 and sum(runs[0].stops.values()) >= 3  # windows of 8 bars, then 4 new bars each
    np.testing.assert_array_equal(runs[0].ids, runs[1].ids)  # the same seed, the same tokens
    other = accompany(str(SONG), model=str(tiny_bundle), seed=6, max_new_tokens=48)[0]
    assert not np.array_equal(other.ids, runs[0].ids)


def test_notes_snap_to_the_chords_of_a_plan(tmp_path):
    from partita.generation.accompany import rule_plan, snap_to_plan

    path = _melody_file(tmp_path, [(i * 480, 480, 72) for i in range(12)])  # 4/4: a bar is 1920 ticks
    score = symusic.Score(str(path))
    track = symusic.core.TrackTick("PIANO", 0, False)
    for t, p in [(0, 61), (480, 62), (1920, 66), (2400, 70), (3840, 63)]:
        track.notes.append(symusic.core.NoteTick(t, 240, p, 80))
    snap_to_plan(track, rule_plan(score, 0, chords="C G"))
    # bar 1 C: 61 -> 60, 62 -> 62 ± 2 (ties down: 60); bar 2 G: 66 -> 67 (F# is a semitone from G), 70 -> 71; bar 3 C: 63 -> 64
    assert [int(n.pitch) for n in track.notes] == [60, 60, 67, 71, 64]


def test_eval_accompany_cli(tiny_bundle, tmp_path):
    result = runner.invoke(app, ["eval", "accompany", "--model", str(tiny_bundle), "--data", str(FIX), "--bars", "4",
                                 "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["songs"] == ["009"] and r["skipped"] == ["019: no melody in the first 4 bars"]
    assert set(r["systems"]) == {"real", "rule", "tagged", "pop", "other", "unconditioned", "model"}
    plain = r["per_song"]["unconditioned"]  # gpt-piano after the melody's first two bars: scored there
    assert [row["song"] for row in plain] == ["009"] and plain[0]["notes_per_beat"] > 0
    assert 0.0 <= r["systems"]["unconditioned"]["chord_fit"] <= 1.0
    assert r["systems"]["real"]["notes_per_beat_ratio"] == pytest.approx(1.0)
    assert 0.0 <= r["systems"]["rule"]["chord_fit"] <= 1.0 and r["systems"]["real"]["chord_fit"] > 0.9
    assert r["systems"]["model"]["notes_per_beat"] >= 0.0  # the tiny model may write no notes: no chord fit then


def test_track_tokens_keep_bars(tiny_bundle):
    from partita.bundle import load

    tok = load(str(tiny_bundle), "gpt").tokenizer
    score = symusic.Score(str(SONG))
    ids, bars, positions = track_tokens(tok, score, [score.tracks[0]])
    assert len(ids) == len(bars) == len(positions) and np.all(np.diff(bars) >= 0)


def test_fine_tuned_bundle_lists_no_inherited_labels(tmp_path):
    """The accompaniment model conditions on no label: an init's composer labels stay off its card."""
    from partita.train.accompany import train_accompany
    from partita.pretrained import bundle_path

    train_accompany(FIX, tmp_path / "run", tracks="MELODY:PIANO", init=bundle_path("gpt-small"), max_steps=1,
                    batch_size=1, val_every=1, progress="none", seed=0)
    card = json.loads((tmp_path / "run" / "bundle" / "card.json").read_text())
    assert card["labels"] == [] and card["init"].endswith("gpt-small")


def test_folk_density_sets_how_often_chords_are_struck(tmp_path):
    path = _melody_file(tmp_path, [(i * 480, 460, [72, 76, 79, 76][i % 4]) for i in range(16)])
    beats = 16.0

    def rate(**kw):
        r = accompany(str(path), style="folk", **kw)[0]
        _same_tracks(symusic.Score(str(path)), r.score)
        return r.score.tracks[-1].note_num() / beats

    default = rate()  # a 4-note chord a half bar: 2 notes a beat
    assert default == pytest.approx(2.0, rel=0.1)
    assert rate(density=4) == pytest.approx(4.0, rel=0.1) and rate(density=8) == pytest.approx(8.0, rel=0.1)
    assert rate(pattern="broken") == pytest.approx(1.0, rel=0.1)
    assert rate(pattern="broken", density=2) == pytest.approx(2.0, rel=0.1)
    for kw, text in (({"style": "chorale", "density": 2}, "--density works with"), ({"density": 0}, "above 0"),
                     ({"style": "folk", "candidates": 3}, "--candidates works with --style pop"),
                     ({"style": "pop", "candidates": 3}, "--candidates works with --style pop and a --model")):
        with pytest.raises(PartitaError, match=text):
            accompany(str(path), **{"style": "folk", **kw})


def test_candidates_keep_the_window_that_fits_the_harmony(tiny_bundle):
    from partita.generation.accompany import _candidate_score, _harmony, rule_plan

    score = symusic.Score(str(SONG))
    harmony = _harmony(rule_plan(score, 0))
    starts, chords = harmony
    assert len(starts) == len(chords) > 4 and all(len(c) == 3 for c in chords)
    inside = {"time": starts[:4], "duration": np.full(4, 480), "pitch": np.array([min(c) + 48 for c in chords[:4]])}
    outside = {**inside, "pitch": np.array([next(p for p in range(48, 60) if p % 12 not in c) for c in chords[:4]])}
    assert _candidate_score(inside, harmony, 8.0, None) == 1.0 and _candidate_score(outside, harmony, 8.0, None) == 0.0
    assert _candidate_score(inside, harmony, 8.0, 0.5) > _candidate_score(inside, harmony, 8.0, 4.0)  # 4 notes in 8 beats
    one = accompany(str(SONG), model=str(tiny_bundle), seed=5, max_new_tokens=48)[0]
    best = accompany(str(SONG), model=str(tiny_bundle), seed=5, max_new_tokens=48, candidates=3)[0]
    again = accompany(str(SONG), model=str(tiny_bundle), seed=5, max_new_tokens=48, candidates=3)[0]
    _same_tracks(score, best.score)
    np.testing.assert_array_equal(best.ids, again.ids)  # a seed gives the same choice
    assert sum(best.stops.values()) == sum(one.stops.values())  # one kept per window


def test_default_is_pop_with_the_shipped_chord_tagger(tmp_path):
    result = runner.invoke(app, ["accompany", str(SONG), "--out", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "pop: the tagged chords, arpeggio" in result.output
    row = json.loads((tmp_path / "r.json").read_text())["samples"][0]
    assert row["style"] == "pop" and row["method"] == "chords" and row["pattern"] == "arpeggio"
    saved = symusic.Score(str(tmp_path / "008-accompany-000.mid"))
    _same_tracks(symusic.Score(str(SONG)), saved)
    assert accompany(str(SONG), pattern="block")[0].method == "chords"


def test_folk_tunes_with_long_ties_and_double_stops_are_melodies():
    """O'Neill's 0575 holds one note through the next bars (a tie read long) and 0873 has double
    stops: both are lines; a piano performance is not."""
    demo = Path(__file__).resolve().parents[1] / "src" / "partita" / "data" / "demo" / "oneills"
    for name in ("0575.mid", "0873.mid"):
        score = symusic.Score(str(demo / name))
        assert choose_melody_track(score) == 0
        assert accompany(str(demo / name), style="folk")[0].added["PIANO"] > 0
    piano = symusic.Score(str(Path(__file__).parent / "fixtures" / "midi" / "performance" / "Maestro_1.mid"))
    with pytest.raises(PartitaError, match="no melody-like track"):
        choose_melody_track(piano)


def test_model_notes_move_to_the_tagged_chords():
    """gpt-piano (fill-in-the-middle, never taught to accompany) writes notes in the windows; each
    is moved to the tagged chord at its onset."""
    from partita.generation.accompany import load_tagger, tagged_plan

    score = symusic.Score(str(SONG))
    plan = tagged_plan(score, 0, load_tagger())
    starts = np.array([c[0] for c in plan])
    r = accompany(str(SONG), model="gpt-piano", seed=2, max_new_tokens=64)[0]
    n = r.score.tracks[-1].notes.numpy()
    inside = [(t, p) for t, p in zip(n["time"], n["pitch"]) if plan[0][0] <= t < plan[-1][1]]
    assert inside  # the tiny model writes notes under the melody
    for t, p in inside:
        assert int(p) % 12 in plan[int(np.searchsorted(starts, t, side="right")) - 1][3]
