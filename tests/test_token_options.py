"""partita's tokenizer options (issue 28, point 4): same-program tracks kept apart by track roles,
a 1/4 file read in bars of its beats, and a vocabulary size chosen from the corpus; tokenizers
without them (the shipped models') tokenize as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
from typer.testing import CliRunner

from partita.represent.tokens import (assumed_metre, decode, encode, learn_track_roles, load_tokenizer,
                                      make_tokenizer, save_tokenizer, set_options, suggest_vocab_size, token_timing,
                                      track_roles, train_tokenizer)

POP = Path(__file__).parent / "fixtures" / "pop909"
SONGS = sorted(POP.glob("POP909_*.mid"))


def _scores():
    return [symusic.Score(str(f)) for f in SONGS]


def _options():
    return set_options(make_tokenizer(), roles=learn_track_roles(_scores()), metre_from_beats=True)


def test_same_program_tracks_become_roles_with_programs_of_their_own():
    roles = learn_track_roles(_scores())
    assert {r["name"] for r in roles} == {"MELODY", "BRIDGE", "PIANO"}
    assert all(r["program"] == 0 for r in roles)
    keeper = [r for r in roles if r["token_program"] == 0]
    assert [r["name"] for r in keeper] == ["PIANO"]  # the role with the most notes keeps the program
    assert len({r["token_program"] for r in roles}) == 3
    assert learn_track_roles(_scores(), min_files=len(SONGS) + 1) == []  # names seen too rarely are no roles


def test_a_three_track_song_tokenizes_and_decodes_as_three_tracks():
    tok = _options()
    for path in SONGS:
        song = symusic.Score(str(path))
        ids = encode(tok, song)
        back = decode(tok, ids)
        got = {t.name: (t.program, t.note_num()) for t in back.tracks}
        want = {t.name: t.note_num() for t in song.tracks if t.note_num()}
        assert set(got) == set(want) and all(p == 0 for p, _ in got.values())
        for name, n in want.items():
            assert abs(got[name][1] - n) <= max(2, n // 20)  # canonical form: re-struck duplicates go
        merged = decode(make_tokenizer(), encode(make_tokenizer(), song)).note_num()
        assert sum(n for _, n in got.values()) >= merged  # kept apart, a track's notes no longer collide with another's
        again = encode(tok, symusic.Score.from_midi(back.dumps_midi()))
        np.testing.assert_array_equal(again, ids)  # tokens -> MIDI -> tokens stays exact
    merged = decode(make_tokenizer(), encode(make_tokenizer(), symusic.Score(str(SONGS[0]))))
    assert len(merged.tracks) == 1  # without roles: one track per program, as the shipped models were trained


def test_options_survive_saving_and_training(tmp_path):
    tok = _options()
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert track_roles(loaded) == track_roles(tok) and assumed_metre(loaded, _scores()[0]) == "4/4"
    trained = train_tokenizer(_scores(), vocab_size=len(tok) + 60, base=tok)
    assert track_roles(trained) == track_roles(tok)
    song = _scores()[1]
    assert len(decode(trained, encode(trained, song)).tracks) == 3


def _bars(tok, score) -> int:
    bars, _ = token_timing(tok, encode(tok, score))
    return int(bars.max()) + 1


def test_a_one_beat_metre_is_read_in_bars_of_four_beats():
    tok = _options()
    plain = make_tokenizer()
    for path in SONGS:
        song = symusic.Score(str(path))
        metres = {(t.numerator, t.denominator) for t in song.time_signatures}
        if (1, 4) not in metres:
            assert assumed_metre(tok, song) is None
            continue
        assert assumed_metre(tok, song) == "4/4" and assumed_metre(plain, song) is None
        beats = song.end() / song.ticks_per_quarter
        assert _bars(plain, song) >= 0.9 * beats  # as written: a bar a beat
        assert abs(_bars(tok, song) - beats / 4) <= 2  # as the music goes: four beats a bar


def test_a_waltz_written_in_one_beat_bars_is_read_in_three():
    tpq = 480
    score = symusic.Score(tpq)
    track = symusic.Track("", 0, False)
    chords = [(48, 52, 55), (53, 57, 60), (55, 59, 62), (48, 52, 55)]  # C F G C, a chord a bar
    for bar in range(24):
        pitches = chords[bar % 4]
        track.notes.append(symusic.Note(bar * 3 * tpq, 3 * tpq, pitches[0] - 12, 80))
        for beat in range(3):
            for p in pitches:
                track.notes.append(symusic.Note((bar * 3 + beat) * tpq, tpq, p, 60))
    score.tracks.append(track)
    score.time_signatures.append(symusic.TimeSignature(0, 1, 4))
    assert assumed_metre(_options(), score) == "3/4"


def test_the_vocabulary_follows_the_corpus():
    small, why = suggest_vocab_size(517, 10_000)
    big, _ = suggest_vocab_size(517, 2_000_000)
    assert 517 + 100 <= small < big <= 20_000
    assert big == 517 + 800 and "merges" in why and "10,000 notes" in why  # 8M base tokens, one merge per 10,000
    assert suggest_vocab_size(517, 10**9)[0] == 20_000


def test_the_commands_say_what_they_chose(tmp_path):
    from partita.cli import app
    from partita.data.prepare import prepare

    midi = tmp_path / "midi"
    midi.mkdir()
    for f in SONGS:
        (midi / f.name).write_bytes(f.read_bytes())
    corpus = tmp_path / "corpus"
    prepare(midi, corpus, workers=1, valid=0.0, test=0.0)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "tokenizer", "train", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "vocabulary" in result.output and "(no --vocab)" in result.output
    assert "tracks kept apart: PIANO (program 0), MELODY (program 0, written as" in result.output
    result = runner.invoke(app, ["data", "tokenize", str(corpus), "-j", "1"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "4 of 5 pieces write a 1/4 time signature" in warnings[0]
    meta = json.loads((corpus / "tokens" / "streams.json").read_text())
    assert meta["metre_assumed"] == {"1/4 read as 4/4": 4}
    merged = runner.invoke(app, ["data", "tokenizer", "train", str(corpus), "--tracks", "merge", "--metre", "written",
                                 "--vocab", "700", "-o", str(tmp_path / "plain.json")])
    assert merged.exit_code == 0 and "tracks kept apart" not in merged.output
    plain = load_tokenizer(tmp_path / "plain.json")
    assert track_roles(plain) == [] and assumed_metre(plain, _scores()[0]) is None
    bad = runner.invoke(app, ["data", "tokenizer", "train", str(corpus), "--tracks", "some"])
    assert bad.exit_code != 0 and "--tracks must be keep or merge" in str(bad.exception)


def test_generation_decodes_the_roles_back_to_named_tracks():
    from partita.generation.repair import decode_tokens

    tok = _options()
    song = symusic.Score(str(SONGS[2]))
    tokens = [tok[int(i)] for i in encode(tok, song)]  # the token strings generation decodes
    back = decode_tokens(tok, tokens)
    assert sorted((t.name, t.program) for t in back.tracks) == [("BRIDGE", 0), ("MELODY", 0), ("PIANO", 0)]


def test_a_notated_one_beat_bar_is_not_a_metre():
    tok = _options()
    song = symusic.Score(str(POP / "POP909_331.mid"))  # 4/4 throughout
    assert assumed_metre(tok, song) is None
    pickup = song.copy()
    tpq = pickup.ticks_per_quarter
    pickup.time_signatures = symusic.TimeSignature.from_numpy(
        time=np.array([0, tpq], np.int32), numerator=np.array([1, 4], np.uint8), denominator=np.array([4, 4], np.uint8))
    assert assumed_metre(tok, pickup) is None  # a one-beat pickup, then 4/4: as written
