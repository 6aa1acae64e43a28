"""Prompts from text: chord progressions, scales and motifs as short MIDI scores."""

from __future__ import annotations

import numpy as np
import pytest

from partita.errors import PartitaError
from partita.io import load
from partita.io import prompts as P
from partita.represent.tokens import decode, encode, make_tokenizer


def notes(score) -> list[tuple[int, int, int]]:
    """(onset, duration, pitch) of every note, sorted."""
    n = score.tracks[0].notes.numpy()
    return sorted(zip(n["time"].tolist(), n["duration"].tolist(), n["pitch"].tolist()))


def chords_of(score) -> dict[int, list[int]]:
    """onset tick -> sorted pitches struck there."""
    out: dict[int, list[int]] = {}
    for t, _, p in notes(score):
        out.setdefault(t, []).append(p)
    return {t: sorted(ps) for t, ps in out.items()}


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(PartitaError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- chords


@pytest.mark.parametrize(
    "symbol, pitches",
    [
        ("C", [48, 60, 64, 67]),  # C3 bass, C4 E4 G4
        ("Am7", [57, 69, 72, 76, 79]),  # A3 bass, A4 C5 E5 G5
        ("F/A", [57, 65, 69, 72]),  # bass A3 under F4 A4 C5
        ("Bb", [58, 70, 74, 77]),
        ("F#m7b5", [54, 66, 69, 72, 76]),
        ("F#ø", [54, 66, 69, 72, 76]),
        ("Gm", [55, 67, 70, 74]),
        ("Cmin", [48, 60, 63, 67]),
        ("G7", [55, 67, 71, 74, 77]),
        ("Fmaj7", [53, 65, 69, 72, 76]),
        ("Ebmaj7/G", [55, 63, 67, 70, 74]),
        ("Bdim", [59, 71, 74, 77]),
        ("Bdim7", [59, 71, 74, 77, 80]),
        ("Caug", [48, 60, 64, 68]),
        ("Dsus2", [50, 62, 64, 69]),
        ("Dsus4", [50, 62, 67, 69]),
        ("C6", [48, 60, 64, 67, 69]),
        ("Am6", [57, 69, 72, 76, 78]),
        ("C9", [48, 60, 64, 67, 70, 74]),
        ("Cadd9", [48, 60, 64, 67, 74]),
        ("C6/9", [48, 60, 64, 67, 69, 74]),
        ("Dbm7(b5)", [49, 61, 64, 67, 71]),
        ("CMaj7", [48, 60, 64, 67, 71]),
        ("CM7", [48, 60, 64, 67, 71]),
        ("C/E", [52, 60, 64, 67]),
    ],
)
def test_chord_pitches(symbol, pitches):
    assert P.chord_pitches(symbol) == pitches
    score = P.chords_to_score(symbol)
    assert chords_of(score) == {0: pitches}


def test_chord_options():
    assert P.chord_pitches("C", bass=False) == [60, 64, 67]
    assert P.chord_pitches("C", octave=3) == [36, 48, 52, 55]
    assert P.chord_pitches("C", voicing="open") == [48, 60, 67, 76]  # C G E: an open triad
    assert P.chord_pitches("Cmaj7", voicing="open", bass=False) == [60, 67, 76, 83]


def test_progression_timing_and_instrument():
    score = P.chords_to_score("C G Am F", beats_per_chord=2, qpm=90, program=24, velocity=70)
    assert score.ticks_per_quarter == P.TPQ == 480
    assert [round(t.qpm) for t in score.tempos] == [90]
    ts = score.time_signatures[0]
    assert (ts.numerator, ts.denominator) == (4, 4)
    assert len(score.tracks) == 1 and score.tracks[0].program == 24 and not score.tracks[0].is_drum
    by_onset = chords_of(score)
    assert sorted(by_onset) == [0, 960, 1920, 2880]
    assert by_onset[1920] == [57, 69, 72, 76]
    assert {d for _, d, _ in notes(score)} == {960}
    assert set(score.tracks[0].notes.numpy()["velocity"].tolist()) == {70}


def test_bars_share_their_length_and_no_chord_is_silent():
    score = P.chords_to_score("| C G | Am | N.C. | F |")
    by_onset = chords_of(score)
    # bar 1: C and G two beats each; bar 2: Am whole bar; bar 3: silence; bar 4: F.
    assert sorted(by_onset) == [0, 960, 1920, 5760]
    durations = {t: d for t, d, _ in notes(score)}
    assert durations == {0: 960, 960: 960, 1920: 1920, 5760: 1920}
    assert by_onset[5760][0] == 53  # F bass
    # 3/4 bars are three beats long.
    waltz = P.chords_to_score("C | G | C", time_signature=(3, 4))
    assert sorted(chords_of(waltz)) == [0, 1440, 2880]


def test_commas_and_no_chord_without_bars():
    score = P.chords_to_score("C, NC, G", beats_per_chord=1)
    assert sorted(chords_of(score)) == [0, 960]


def test_smooth_voicing_moves_little():
    close = P.chords_to_score("C F G C", voicing="close", bass=False)
    smooth = P.chords_to_score("C F G C", voicing="smooth", bass=False)

    def motion(score):
        groups = [np.array(p) for _, p in sorted(chords_of(score).items())]
        return sum(abs(a.mean() - b.mean()) for a, b in zip(groups, groups[1:]))

    assert motion(smooth) < motion(close)
    # Each chord keeps its pitch classes.
    for (_, a), (_, b) in zip(sorted(chords_of(close).items()), sorted(chords_of(smooth).items())):
        assert sorted({p % 12 for p in a}) == sorted({p % 12 for p in b})


@pytest.mark.parametrize("bad", ["Hx7", "Cfoo", "C/H", "c", "7", "C#m7b5x"])
def test_bad_chord_is_one_line_naming_it(bad):
    msg = one_line_error(P.chords_to_score, f"C {bad} G")
    assert f"unparseable chord {bad!r}" in msg
    assert "expected e.g. C, Am, G7, Fmaj7, Bb/D" in msg


def test_chord_errors():
    assert "no chord" in one_line_error(P.chords_to_score, "  | |  ")
    assert "only N.C." in one_line_error(P.chords_to_score, "N.C. N.C.")
    assert "voicing" in one_line_error(P.chords_to_score, "C", voicing="drop7")
    assert "beats_per_chord" in one_line_error(P.chords_to_score, "C", beats_per_chord=0)
    assert "outside MIDI" in one_line_error(P.chords_to_score, "B13", octave=9)
    assert "program" in one_line_error(P.chords_to_score, "C", program=200)


def test_chords_are_fast_enough_to_type():
    # 64 symbols of every quality parse without music21 (no timing asserted; see benchmarks).
    text = " ".join(f"{r}{q}" for r in ("C", "F#", "Bb", "E") for q in P.CHORD_QUALITIES if "/" not in q)
    score = P.chords_to_score(text, beats_per_chord=1)
    assert len(chords_of(score)) == len(text.split())


# --------------------------------------------------------------------------- scales

PATTERNS = {
    "major": [2, 2, 1, 2, 2, 2, 1],
    "ionian": [2, 2, 1, 2, 2, 2, 1],
    "minor": [2, 1, 2, 2, 1, 2, 2],
    "aeolian": [2, 1, 2, 2, 1, 2, 2],
    "dorian": [2, 1, 2, 2, 2, 1, 2],
    "phrygian": [1, 2, 2, 2, 1, 2, 2],
    "lydian": [2, 2, 2, 1, 2, 2, 1],
    "mixolydian": [2, 2, 1, 2, 2, 1, 2],
    "locrian": [1, 2, 2, 1, 2, 2, 2],
    "harmonic minor": [2, 1, 2, 2, 1, 3, 1],
    "melodic minor": [2, 1, 2, 2, 2, 2, 1],
    "major pentatonic": [2, 2, 3, 2, 3],
    "pentatonic minor": [3, 2, 2, 3, 2],
    "blues": [3, 2, 1, 1, 3, 2],
    "chromatic": [1] * 12,
    "whole-tone": [2] * 6,
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_scale_interval_patterns(name):
    pitches = P.scale_pitches(f"D {name}")
    assert pitches[0] == 62 and pitches[-1] == 74
    assert np.diff(pitches).tolist() == PATTERNS[name]


def test_scale_score_timing_and_directions():
    score = P.scale_to_score("D dorian")
    ns = notes(score)
    assert [p for _, _, p in ns] == [62, 64, 65, 67, 69, 71, 72, 74]
    assert [t for t, _, _ in ns] == [240 * k for k in range(8)]
    assert {d for _, d, _ in ns} == {240}
    two = P.scale_pitches("C major", octaves=2, octave=3)
    assert two[0] == 48 and two[-1] == 72 and len(two) == 15
    assert P.scale_pitches("C major", direction="down") == P.scale_pitches("C major")[::-1]
    updown = P.scale_pitches("A minor", direction="updown")
    assert updown == [69, 71, 72, 74, 76, 77, 79, 81, 79, 77, 76, 74, 72, 71, 69]
    # Melodic minor rises with raised 6 and 7, falls as natural minor.
    mm = P.scale_pitches("A melodic minor", direction="updown")
    assert mm[:8] == [69, 71, 72, 74, 76, 78, 80, 81] and mm[8:] == [79, 77, 76, 74, 72, 71, 69]
    assert P.scale_pitches("Bb") == P.scale_pitches("Bb major")
    assert P.scale_pitches("f# Minor Pentatonic Scale")[0] == 66
    quarter = P.scale_to_score("C major", note_beats=1)
    assert notes(quarter)[1][:2] == (480, 480)


def test_scale_errors():
    msg = one_line_error(P.scale_to_score, "C bebop")
    assert "unknown scale 'bebop'" in msg and "dorian" in msg
    assert "tonic" in one_line_error(P.scale_to_score, "H dorian")
    assert "direction" in one_line_error(P.scale_to_score, "C major", direction="sideways")
    assert "octaves" in one_line_error(P.scale_to_score, "C major", octaves=0)
    assert "empty scale" in one_line_error(P.scale_to_score, "  ")


# --------------------------------------------------------------------------- motifs


def test_motif_plain_and_with_durations():
    plain = P.motif_to_score("C4 E4 G4 C5")
    assert notes(plain) == [(0, 480, 60), (480, 480, 64), (960, 480, 67), (1440, 480, 72)]
    timed = P.motif_to_score("C4:1 E4:0.5 G4:0.5 r:1 Bb3:2 F#5:1/3 | 61")
    assert notes(timed) == [
        (0, 480, 60),
        (480, 240, 64),
        (720, 240, 67),
        (1440, 960, 58),
        (2400, 160, 78),
        (2560, 480, 61),
    ]
    chord = P.motif_to_score("C4+E4+G4:2 D4", note_beats=0.5)
    assert notes(chord) == [(0, 960, 60), (0, 960, 64), (0, 960, 67), (960, 240, 62)]
    assert P.note_to_pitch("C-1") == 0 and P.note_to_pitch("G9") == 127 and P.note_to_pitch("A4") == 69
    assert P.note_to_pitch("cb4") == 59 and P.note_to_pitch("E#4") == 65


@pytest.mark.parametrize(
    "text, part",
    [("C4 H4 G4", "'H4'"), ("C4 E G4", "'E'"), ("C4:x", "'x'"), ("C4:-1", "'-1'"), ("C4 G10", "'G10'"), ("r r", "only rests"), ("", "no notes")],
)
def test_motif_errors(text, part):
    assert part in one_line_error(P.motif_to_score, text)


# --------------------------------------------------------------------------- dispatcher


def test_parse_prompt_dispatches():
    assert notes(P.parse_prompt("chords", "C G", beats_per_chord=2)) == notes(P.chords_to_score("C G", beats_per_chord=2))
    assert notes(P.parse_prompt("--scale", "D dorian")) == notes(P.scale_to_score("D dorian"))
    assert notes(P.parse_prompt("motif", "C4 D4")) == notes(P.motif_to_score("C4 D4"))
    assert "unknown prompt kind" in one_line_error(P.parse_prompt, "melody", "C4")
    assert "octaves" in one_line_error(P.parse_prompt, "chords", "C", octaves=2)


# --------------------------------------------------------------------------- MIDI and tokens

PROMPTS = [
    ("chords", "C G Am F"),
    ("chords", "| Dm7 G7 | Cmaj7 | F#m7b5 B7 | Em |"),
    ("scale", "D dorian"),
    ("scale", "Eb blues"),
    ("motif", "C4:1 E4:0.5 G4:0.5 r:1 C5:2"),
]


@pytest.mark.parametrize("kind, text", PROMPTS)
def test_prompts_survive_midi_and_tokenize(kind, text):
    score = P.parse_prompt(kind, text)
    back = load(score.dumps_midi())
    assert back.ticks_per_quarter == 480
    assert notes(back) == notes(score)
    assert round(back.tempos[0].qpm) == 120
    tok = make_tokenizer()
    ids = encode(tok, score)
    assert len(ids) > 0
    assert np.array_equal(encode(tok, back), ids)
    # The decoded prompt keeps every pitch and onset (on the tokenizer's grid these all fall on it).
    decoded = decode(tok, ids)
    scale = decoded.ticks_per_quarter / 480
    assert [(round(t / scale), p) for t, _, p in notes(decoded)] == [(t, p) for t, _, p in notes(score)]
