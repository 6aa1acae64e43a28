"""The splice contract (``partita.edit``): a continuation or an infilling gives back the user's file,
every original note and event as it was in ticks, with only new notes added where they belong.

Made files cover each case of issue 25 (tempo map past the last note, program 1, two hands, three
same-program tracks, 2/4, 3/4, 6/8, 3/8, a metre change, tempo below 40 qpm, sustain pedal); the
real fixtures are spliced with made "new notes" and continued by the shipped gpt-piano.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import symusic
from symusic import ControlChange, KeySignature, Note, Pedal, Score, Tempo, TextMeta, TimeSignature, Track

from conftest import FIXTURES
from partita.edit import cut, last_onset, new_notes, prompt_view, splice
from partita.io.midi import load, sustained_durations
from partita.io.timing import bar_starts

TPQ = 480


def _file(tracks, *, tempos=((0, 120.0),), metre=((0, 4, 4),), keys=(), pedals=(), markers=(), tpq=TPQ) -> Score:
    """A made MIDI file, written and read back (the score as symusic reads a user's file).
    ``tracks``: (name, program, [(tick, duration, pitch)])."""
    s = Score(tpq)
    for name, program, notes in tracks:
        t = Track(name, program, False)
        for tick, dur, pitch in notes:
            t.notes.append(Note(int(tick), int(dur), int(pitch), 80))
        if pedals and not len(s.tracks):
            for tick, dur in pedals:
                t.pedals.append(Pedal(int(tick), int(dur)))
                t.controls.append(ControlChange(int(tick), 64, 127))
                t.controls.append(ControlChange(int(tick + dur), 64, 0))
        s.tracks.append(t)
    for tick, qpm in tempos:
        s.tempos.append(Tempo(int(tick), float(qpm)))
    for tick, n, d in metre:
        s.time_signatures.append(TimeSignature(int(tick), n, d))
    for tick, key in keys:
        s.key_signatures.append(KeySignature(int(tick), key, 0))
    for tick, text in markers:
        s.markers.append(TextMeta(int(tick), text))
    return load(s.dumps_midi())


def _melody(bars: int, beats_per_bar: float, *, low=60, step=TPQ // 2, pitch_span=12):
    n = int(bars * beats_per_bar * TPQ // step)
    return [(i * step, step, low + (i * 5) % pitch_span) for i in range(n)]


def _events(score: Score) -> dict:
    """Everything but the notes, in ticks."""
    out = {name: [(e.time, *(_fields(e))) for e in getattr(score, name)]
           for name in ("tempos", "time_signatures", "key_signatures", "markers")}
    for i, t in enumerate(score.tracks):
        out[f"track{i}"] = (t.name, int(t.program), bool(t.is_drum))
        for name in ("pedals", "controls", "pitch_bends", "lyrics"):
            out[f"track{i}.{name}"] = [(e.time, *_fields(e)) for e in getattr(t, name)]
    return out


def _fields(e):
    for name in ("mspq", "numerator", "denominator", "key", "tonality", "text", "duration", "number", "value"):
        if hasattr(e, name):
            yield getattr(e, name)


def _notes(track) -> Counter:
    n = track.notes.numpy()
    return Counter(zip(n["time"].tolist(), n["duration"].tolist(), n["pitch"].tolist(), n["velocity"].tolist()))


def assert_kept(original: Score, result: Score, *, span=None) -> dict:
    """Every original track, note (those starting outside ``span`` when given) and meta event is in
    ``result`` exactly, in ticks; returns the added notes per track index."""
    assert result.ticks_per_quarter == original.ticks_per_quarter
    assert len(result.tracks) >= len(original.tracks)
    before, after = _events(original), _events(result)
    assert {k: v for k, v in after.items() if k in before} == before
    added = {}
    for i, (a, b) in enumerate(zip(original.tracks, result.tracks)):
        old, new = _notes(a), _notes(b)
        if span is not None:  # the notes that start in the span are the ones replaced
            old = Counter({k: v for k, v in old.items() if not span[0] <= k[0] < span[1]})
        assert not (old - new), f"track {i}: original notes changed or lost"
        extra = new - old
        if span is not None:
            assert all(span[0] <= k[0] < span[1] for k in extra), "a new note starts outside the span"
        added[i] = sum(extra.values())
    return added


def _new_score(tpq: int, notes, program=0) -> Score:
    s = Score(tpq)
    t = Track("new", program, False)
    for tick, dur, pitch in notes:
        t.notes.append(Note(int(tick), int(dur), int(pitch), 90))
    s.tracks.append(t)
    return s


# --------------------------------------------------------------------------- the contract, no model


def test_splice_keeps_every_event_and_places_new_notes_at_their_beats():
    original = _file([("Piano", 0, _melody(4, 4))], tempos=((0, 30.0), (TPQ * 8, 90.0), (TPQ * 40, 60.0)),
                     keys=((0, 2),), markers=((TPQ * 2, "A"), (TPQ * 60, "end of the map")))
    new = _new_score(16, [(16 * 16, 8, 72), (16 * 17, 16, 74)])  # beats 16 and 17 at 16 ticks a beat
    out = splice(original, new)
    added = assert_kept(original, out.score)
    assert added == {0: 2} and out.added == 2 and out.new_tracks == 0
    times = sorted(n.time for n in out.score.tracks[0].notes if n.pitch in (72, 74) and n.velocity == 90)
    assert times == [16 * TPQ, 17 * TPQ]  # same beats, so the file's own tempo map plays them


def test_splice_span_drops_every_new_note_outside_it():
    original = _file([("Piano", 0, _melody(8, 3))], metre=((0, 3, 4),))
    starts = bar_starts(original, bars=8)
    t0, t1 = int(starts[2]), int(starts[4])
    kept = cut(original, None)
    new = _new_score(TPQ, [(t0 - 1, 10, 50), (t0, 10, 51), (t1 - 1, 10, 52), (t1, 10, 53)])
    out = splice(kept, new, start=t0, end=t1)
    assert out.added == 2
    assert sorted(n.pitch for n in out.score.tracks[0].notes if n.velocity == 90) == [51, 52]


def test_track_rule_two_hands_and_three_same_program_tracks():
    left = [(i * TPQ, TPQ, 40 + i % 5) for i in range(16)]
    right = [(i * TPQ, TPQ, 72 + i % 5) for i in range(16)]
    hands = _file([("Right", 0, right), ("Left", 0, left)])
    new = _new_score(TPQ, [(16 * TPQ, TPQ, 76), (16 * TPQ, TPQ, 43), (17 * TPQ, TPQ, 62)])
    out = splice(hands, new)
    assert assert_kept(hands, out.score) == {0: 2, 1: 1}  # 76 and 62 nearer the right hand's register
    pop = load(FIXTURES / "pop909" / "001.mid")
    assert [t.name for t in pop.tracks] == ["MELODY", "BRIDGE", "PIANO"]
    end = last_onset(pop) + 1
    regs = {t.name: float(np.median(t.notes.numpy()["pitch"][-16:])) for t in pop.tracks}
    new = _new_score(TPQ, [(end, TPQ, int(regs[name])) for name in ("MELODY", "BRIDGE", "PIANO")])
    out = splice(pop, new)
    added = assert_kept(pop, out.score)
    assert added == {0: 1, 1: 1, 2: 1} and out.new_tracks == 0


def test_piano_programs_are_piano_and_other_programs_get_their_own_track():
    original = _file([("Bright", 1, _melody(2, 4))])
    out = splice(original, _new_score(TPQ, [(8 * TPQ, TPQ, 60)], program=0))
    assert assert_kept(original, out.score) == {0: 1} and len(out.score.tracks) == 1
    assert out.score.tracks[0].program == 1  # the new note takes the track's program
    view = prompt_view(original)
    assert [t.program for t in view.tracks] == [0]  # the model reads one piano
    out = splice(original, _new_score(TPQ, [(8 * TPQ, TPQ, 60)], program=33))
    assert out.new_tracks == 1 and out.score.tracks[1].program == 33


def test_prompt_view_applies_the_pedal_as_training_and_stops_at_the_last_note():
    notes = [(i * TPQ, TPQ // 4, 60 + i) for i in range(8)]
    original = _file([("Piano", 0, notes)], pedals=((0, 4 * TPQ),),
                     tempos=((0, 100.0), (TPQ * 100, 50.0)), metre=((0, 4, 4), (TPQ * 200, 3, 4)))
    view = prompt_view(original)
    n = original.tracks[0].notes.numpy()
    expected = sustained_durations(n, original.tracks[0].pedals.numpy())  # what data.prepare stores
    assert view.tracks[0].notes.numpy()["duration"].tolist() == expected.tolist()
    assert expected[0] > TPQ // 4  # the pedal lengthened the first notes
    assert [t.time for t in view.tempos] == [0] and [t.time for t in view.time_signatures] == [0]
    assert len(view.tracks[0].pedals) == 0 and len(view.markers) == 0
    first = prompt_view(original, 3 * TPQ)
    assert last_onset(first) == 2 * TPQ


def test_cut_keeps_what_starts_before_it_exactly():
    original = _file([("Piano", 0, [(0, 5 * TPQ, 60), (2 * TPQ, TPQ, 62), (4 * TPQ, TPQ, 64)])],
                     tempos=((0, 120.0), (3 * TPQ, 60.0), (5 * TPQ, 90.0)), markers=((TPQ, "a"), (4 * TPQ, "b")))
    c = cut(original, 4 * TPQ)
    assert [(n.time, n.duration) for n in c.tracks[0].notes] == [(0, 5 * TPQ), (2 * TPQ, TPQ)]
    assert [t.time for t in c.tempos] == [0, 3 * TPQ] and [m.text for m in c.markers] == ["a"]


def test_every_fixture_splices_back_exactly():
    """Every readable real and edge fixture: new notes spliced after its last note leave every
    original note and event in place, in ticks."""
    files = sorted(FIXTURES.glob("*/*.mid"))
    assert len(files) > 30
    done = 0
    for path in files:
        try:
            original = load(path)
        except Exception:
            continue  # refused with a one-line reason (tests/test_io.py)
        end = last_onset(original)
        new = _new_score(16, [(int(end * 16 / original.ticks_per_quarter) + 2, 8, 64)])
        out = splice(original, new)
        added = assert_kept(original, out.score)
        in_new_tracks = sum(t.note_num() for t in out.score.tracks[len(original.tracks):])
        assert sum(added.values()) + in_new_tracks == out.added == 1, path
        assert (in_new_tracks == 1) == (out.new_tracks == 1)  # a file without a piano track gets one
        view = prompt_view(original)
        assert view.note_num() == original.note_num()
        done += 1
    assert done > 25


# --------------------------------------------------------------------------- with the shipped model


@pytest.fixture(scope="module")
def piano():
    from partita.bundle import load as load_bundle

    return load_bundle("gpt-piano", "gpt")


def _continue(bundle, score, **kw):
    from partita.generation import generate_samples

    kw.setdefault("max_new_tokens", 48)
    return generate_samples(bundle, score, n=1, seed=0, threads=1, **kw)[0]


CASES = {
    "tempo map past the last note": dict(tempos=((0, 100.0), (TPQ * 400, 80.0)), metre=((0, 4, 4), (TPQ * 800, 3, 4))),
    "2/4": dict(metre=((0, 2, 4),)),
    "3/4": dict(metre=((0, 3, 4),)),
    "6/8": dict(metre=((0, 6, 8),)),
    "3/8": dict(metre=((0, 3, 8),)),
    "metre change": dict(metre=((0, 4, 4), (TPQ * 16, 3, 4))),
    "below 40 qpm": dict(tempos=((0, 30.0),)),
    "sustain pedal": dict(pedals=((0, 6 * TPQ), (8 * TPQ, 6 * TPQ))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_continuation_keeps_the_file_and_starts_after_its_last_note(piano, case):
    kw = CASES[case]
    beats = {(0, 2, 4): 2, (0, 3, 4): 3, (0, 6, 8): 3, (0, 3, 8): 1.5}.get(kw.get("metre", ((0, 4, 4),))[0], 4)
    original = _file([("Right", 0, _melody(8, beats, low=67)), ("Left", 0, _melody(8, beats, low=43, step=TPQ))], **kw)
    s = _continue(piano, original)
    added = assert_kept(original, s.score)
    assert sum(added.values()) == s.new_notes == s.notes - original.note_num()
    assert len(s.score.tracks) == 2  # two hands, no new track
    end = last_onset(original)
    new_onsets = [k[0] for i, t in enumerate(s.score.tracks) for k in (_notes(t) - _notes(original.tracks[i]))]
    assert all(t >= end for t in new_onsets)  # after the last note, whatever meta events follow
    if new_onsets:
        assert min(new_onsets) < end + 8 * TPQ  # not after the tempo map's or metre's end
        assert s.ok and s.new_seconds > 0
    else:
        assert not s.ok and s.new_seconds == 0


def test_program_1_piano_gets_new_notes_in_its_track(piano):
    original = _file([("Bright piano", 1, _melody(8, 4))])
    s = _continue(piano, original, max_new_tokens=64)
    assert s.new_notes > 0 and len(s.score.tracks) == 1 and s.score.tracks[0].program == 1
    assert assert_kept(original, s.score) == {0: s.new_notes}


def test_prompt_bars_and_seconds_cut_the_file_in_its_own_metre(piano):
    original = _file([("Piano", 0, _melody(12, 3))], metre=((0, 3, 4),), tempos=((0, 60.0),))
    s = _continue(piano, original, prompt_bars=2)
    base = cut(original, 6 * TPQ)  # two bars of 3/4
    assert assert_kept(base, s.score) == {0: s.new_notes}
    s = _continue(piano, original, prompt_seconds=4.0)  # 60 qpm: 4 beats
    assert assert_kept(cut(original, 4 * TPQ), s.score) == {0: s.new_notes}


def test_three_track_pop_song_keeps_its_tracks(piano):
    original = load(FIXTURES / "pop909" / "002.mid")
    s = _continue(piano, original, max_new_tokens=64)
    added = assert_kept(original, s.score)
    assert [t.name for t in s.score.tracks] == ["MELODY", "BRIDGE", "PIANO"]
    assert sum(added.values()) == s.new_notes > 0


@pytest.mark.parametrize("metre", [(2, 4), (3, 4), (6, 8), (3, 8), "change"])
def test_infill_in_any_metre_never_spills(piano, metre):
    from partita.generation.infill import infill

    sig = ((0, 4, 4), (TPQ * 16, 3, 4)) if metre == "change" else ((0, *metre),)
    beats = 3 if metre == "change" else metre[0] * 4 / metre[1]
    original = _file([("Right", 0, _melody(16, beats, low=67)), ("Left", 0, _melody(16, beats, low=43, step=TPQ))],
                     metre=sig)
    starts = bar_starts(original, bars=12)
    (r,) = infill(piano, original, bars=(6, 8), seed=0, threads=1)
    assert r.ticks == (int(starts[5]), int(starts[8]))  # the file's own bars 6-8
    added = assert_kept(original, r.score, span=r.ticks)
    assert sum(added.values()) == r.notes_added
    inside = sum(1 for t in original.tracks for n in t.notes if r.ticks[0] <= n.time < r.ticks[1])
    assert r.notes_removed == inside


def test_new_notes_are_what_the_model_added(piano):
    from partita.represent.tokens import encode

    tok = piano.tokenizer
    a = _file([("Piano", 0, _melody(2, 4))])
    b = _file([("Piano", 0, _melody(2, 4) + [(8 * TPQ, TPQ, 70), (9 * TPQ, TPQ, 72)])])
    ia, ib = encode(tok, a, bos_eos=True)[:-1], encode(tok, b, bos_eos=True)[:-1]
    assert (ib[: len(ia)] == ia).all()
    added = new_notes(tok, ib, len(ia))
    assert sorted(n.pitch for t in added.tracks for n in t.notes) == [70, 72]
    assert isinstance(added, symusic.core.ScoreTick)
