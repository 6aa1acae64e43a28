"""Short MIDI prompts from text: chord progressions, scales and motifs, for a generator to continue.

Every function returns a one-track ``symusic.Score`` in ticks (``TPQ`` = 480 per quarter note) with
one tempo (``qpm``, 120 by default) and one time signature (4/4 by default) at tick 0, so it goes
straight into ``partita.represent.tokens.encode`` or a MIDI file.

* ``chords_to_score("C G Am F")``: chord symbols (roots A-G with ``#``/``b``, the usual
  qualities, slash basses such as ``C/E``, ``N.C.`` for a silent slot, ``|`` bar lines);
* ``scale_to_score("D dorian")``: the church modes, harmonic and melodic minor, pentatonics,
  blues, chromatic and whole-tone scales, up, down or up and down;
* ``motif_to_score("C4:1 E4:0.5 G4:0.5 r:1 C5:2")``: note names with octaves (C4 = MIDI 60) and
  optional durations in beats;
* ``parse_prompt(kind, text, **kw)``: the dispatcher behind the CLI's ``--chords``, ``--scale``
  and ``--motif``.

Chord symbols are read with a small table of our own rather than ``music21.harmony.ChordSymbol``:
music21 spells flats ``-`` (it refuses ``Bb``), takes ~10 ms a symbol and puts chords in octave 3;
the table is exact, instant and says which symbol it could not read. Mistakes raise
``PromptError`` (a ``PartitaError``) whose message is one line naming the bad part.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import numpy as np
from symusic import Note, Score, Tempo, TimeSignature, Track

from partita.errors import PartitaError

__all__ = [
    "CHORD_QUALITIES",
    "SCALES",
    "TPQ",
    "PromptError",
    "chord_pitches",
    "chords_to_score",
    "motif_to_score",
    "note_to_pitch",
    "parse_prompt",
    "scale_pitches",
    "scale_to_score",
]

#: Ticks per quarter note of every prompt score.
TPQ = 480

_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTALS = {"#": 1, "♯": 1, "x": 2, "b": -1, "♭": -1}


class PromptError(PartitaError, ValueError):
    """A prompt text that cannot be read; ``str(err)`` is one line naming the bad part."""


# --------------------------------------------------------------------------- tables

_TRIAD, _MINOR = (0, 4, 7), (0, 3, 7)

# quality -> semitones above the root. Aliases share one entry; parentheses are ignored
# ("m7(b5)" == "m7b5", "m(maj7)" == "mmaj7").
_QUALITY_GROUPS: list[tuple[tuple[int, ...], tuple[str, ...]]] = [
    (_TRIAD, ("", "maj", "M", "major")),
    (_MINOR, ("m", "min", "-", "minor")),
    ((0, 7), ("5",)),
    ((0, 4, 7, 10), ("7", "dom7")),
    ((0, 4, 7, 11), ("maj7", "M7", "Δ", "Δ7", "ma7", "major7")),
    ((0, 3, 7, 10), ("m7", "min7", "-7", "minor7")),
    ((0, 3, 7, 11), ("mmaj7", "mM7", "minmaj7", "-maj7")),
    ((0, 3, 6), ("dim", "°", "o")),
    ((0, 3, 6, 9), ("dim7", "°7", "o7")),
    ((0, 3, 6, 10), ("m7b5", "ø", "ø7", "min7b5", "-7b5", "halfdim", "halfdim7")),
    ((0, 4, 8), ("aug", "+", "+5", "#5")),
    ((0, 4, 8, 10), ("aug7", "+7", "7#5", "7+5")),
    ((0, 2, 7), ("sus2",)),
    ((0, 5, 7), ("sus4", "sus")),
    ((0, 5, 7, 10), ("7sus4", "7sus")),
    ((0, 4, 7, 9), ("6", "maj6", "M6")),
    ((0, 3, 7, 9), ("m6", "min6", "-6")),
    ((0, 4, 7, 9, 14), ("69", "6/9", "6add9")),
    ((0, 4, 7, 10, 14), ("9", "dom9")),
    ((0, 4, 7, 11, 14), ("maj9", "M9", "Δ9")),
    ((0, 3, 7, 10, 14), ("m9", "min9", "-9")),
    ((0, 4, 7, 14), ("add9", "add2", "2")),
    ((0, 3, 7, 14), ("madd9", "madd2", "minadd9")),
    ((0, 4, 7, 10, 13), ("7b9",)),
    ((0, 4, 7, 10, 15), ("7#9",)),
    ((0, 4, 7, 10, 14, 17), ("11", "dom11")),
    ((0, 3, 7, 10, 14, 17), ("m11", "min11", "-11")),
    ((0, 4, 7, 10, 14, 21), ("13", "dom13")),
]

#: Chord quality spelling -> intervals in semitones above the root.
CHORD_QUALITIES: dict[str, tuple[int, ...]] = {q: iv for iv, names in _QUALITY_GROUPS for q in names}
# Word-like spellings also match in any letter case ("Maj7", "MIN", "Dim7"); "M"/"m" never do.
_QUALITIES_FOLDED = {q.lower(): iv for q, iv in CHORD_QUALITIES.items() if re.match(r"[a-z]{2}", q)}

_SCALE_GROUPS: list[tuple[tuple[int, ...], tuple[str, ...]]] = [
    ((0, 2, 4, 5, 7, 9, 11), ("major", "ionian")),
    ((0, 2, 3, 5, 7, 8, 10), ("minor", "aeolian", "natural minor")),
    ((0, 2, 3, 5, 7, 9, 10), ("dorian",)),
    ((0, 1, 3, 5, 7, 8, 10), ("phrygian",)),
    ((0, 2, 4, 6, 7, 9, 11), ("lydian",)),
    ((0, 2, 4, 5, 7, 9, 10), ("mixolydian",)),
    ((0, 1, 3, 5, 6, 8, 10), ("locrian",)),
    ((0, 2, 3, 5, 7, 8, 11), ("harmonic minor",)),
    ((0, 2, 3, 5, 7, 9, 11), ("melodic minor",)),
    ((0, 2, 4, 7, 9), ("major pentatonic", "pentatonic")),
    ((0, 3, 5, 7, 10), ("minor pentatonic",)),
    ((0, 3, 5, 6, 7, 10), ("blues", "minor blues")),
    (tuple(range(12)), ("chromatic",)),
    ((0, 2, 4, 6, 8, 10), ("whole tone", "wholetone")),
]

#: Scale name -> semitones above the tonic within one octave (melodic minor: its rising form).
SCALES: dict[str, tuple[int, ...]] = {name: iv for iv, names in _SCALE_GROUPS for name in names}
# Word order does not matter ("pentatonic minor" == "minor pentatonic").
_SCALE_KEYS = {frozenset(name.split()): name for name in SCALES}

_VOICINGS = ("close", "open", "smooth")
_DIRECTIONS = ("up", "down", "updown")

# --------------------------------------------------------------------------- small parsers

_NOTE_RE = re.compile(r"^([A-Ga-g])(#{1,2}|b{1,2}|x|♯|♭)?(-?\d+)$")
_ROOT_RE = re.compile(r"^([A-G])(#{1,2}|b{1,2}|x|♯|♭)?")
_NO_CHORD = {"n.c.", "n.c", "nc", "n/c"}
_CHORD_HINT = "expected e.g. C, Am, G7, Fmaj7, Bb/D"


def _accidental(acc: str | None) -> int:
    return sum(_ACCIDENTALS[c] for c in acc) if acc else 0


def note_to_pitch(name: str) -> int:
    """MIDI pitch of a note name with octave: ``C4`` = 60 (scientific pitch), ``Bb3`` = 58,
    ``F#5`` = 78, ``C-1`` = 0. A whole number 0-127 is read as a MIDI pitch."""
    text = str(name).strip()
    if text.isdigit():
        pitch = int(text)
    else:
        m = _NOTE_RE.match(text)
        if not m:
            raise PromptError(f"unparseable note {text!r} (expected a name with octave, e.g. C4, F#3, Bb5, or r for a rest)")
        letter, acc, octave = m.groups()
        pitch = 12 * (int(octave) + 1) + _LETTERS[letter.upper()] + _accidental(acc)
    if not 0 <= pitch <= 127:
        raise PromptError(f"note {text!r} is outside the MIDI range (C-1 to G9, pitches 0-127)")
    return pitch


def _beats(text: str, what: str) -> Fraction:
    """A positive duration in beats: ``1``, ``0.5``, ``1/3`` (a triplet eighth)."""
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise PromptError(f"bad duration {text!r} in {what!r} (expected beats, e.g. 1, 0.5 or 1/3)") from None
    if value <= 0:
        raise PromptError(f"duration {text!r} in {what!r} must be positive")
    return value


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{name} must be a number, not {value!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise PromptError(f"{name} must be a positive number, not {value!r}")
    return v


def _ticks(beats: float | Fraction) -> int:
    return int(round(float(beats) * TPQ))


# --------------------------------------------------------------------------- chords


def _parse_chord(symbol: str) -> tuple[int, tuple[int, ...], int | None]:
    """(root pitch class offset from C, intervals, bass offset or None) of one chord symbol.

    Offsets are not reduced modulo 12 (``Cb`` is -1, ``B#`` is 12): the pitch follows the name.
    """
    bad = PromptError(f"unparseable chord {symbol!r} ({_CHORD_HINT})")
    m = _ROOT_RE.match(symbol)
    if not m:
        raise bad
    root = _LETTERS[m.group(1)] + _accidental(m.group(2))
    rest = symbol[m.end() :]
    bass = None
    quality = rest
    # A slash bass, unless the slash belongs to the quality ("C6/9").
    if "/" in rest and rest.replace("(", "").replace(")", "") not in CHORD_QUALITIES:
        quality, _, bass_text = rest.rpartition("/")
        bm = _ROOT_RE.match(bass_text)
        if not bm or bm.end() != len(bass_text):
            raise bad
        bass = _LETTERS[bm.group(1)] + _accidental(bm.group(2))
    q = quality.replace("(", "").replace(")", "")
    intervals = CHORD_QUALITIES.get(q)
    if intervals is None:
        intervals = _QUALITIES_FOLDED.get(q.lower())
    if intervals is None:
        raise bad
    return root, intervals, bass


def chord_pitches(symbol: str, *, octave: int = 4, voicing: str = "close", bass: bool = True) -> list[int]:
    """MIDI pitches of one chord symbol, lowest first: ``chord_pitches("C") == [48, 60, 64, 67]``.

    The chord's root sits in ``octave`` (C4 = 60) with the other tones stacked above it
    (``voicing="close"``) or with every second tone raised an octave (``"open"``); ``bass`` adds
    the root, or the slash bass, in the octave below.
    """
    root, intervals, slash = _parse_chord(symbol.strip())
    if voicing not in ("close", "open"):
        raise PromptError(f"unknown voicing {voicing!r} for one chord (choose close or open)")
    return _voice(symbol, root, intervals, slash, octave, voicing, bass, None)


def _voice(
    symbol: str,
    root: int,
    intervals: tuple[int, ...],
    slash: int | None,
    octave: int,
    voicing: str,
    bass: bool,
    previous: list[int] | None,
) -> list[int]:
    base = 12 * (int(octave) + 1) + root
    tones = [base + i for i in intervals]
    if voicing == "open":
        tones = sorted(t + 12 * (k % 2) for k, t in enumerate(tones))
    bass_pitch = 12 * int(octave) + (root if slash is None else slash)
    if voicing == "smooth" and previous:
        # Of the inversions of the close voicing (and their octave neighbours) that stay above the
        # bass, take the one whose centre is nearest the previous chord's: small moves, no leaps.
        target = float(np.mean(previous))
        best, best_d = tones, None
        for inv in range(len(tones)):
            cand = tones[inv:] + [t + 12 for t in tones[:inv]]
            for shift in (-12, 0, 12):
                c = [t + shift for t in cand]
                if bass and c[0] <= bass_pitch:
                    continue
                d = abs(float(np.mean(c)) - target)
                if best_d is None or d < best_d - 1e-9:
                    best, best_d = c, d
        tones = sorted(best)
    pitches = ([bass_pitch] if bass else []) + tones
    if min(pitches) < 0 or max(pitches) > 127:
        raise PromptError(f"chord {symbol!r} in octave {octave} falls outside MIDI pitches 0-127; choose another octave")
    return pitches


def chords_to_score(
    text: str,
    *,
    beats_per_chord: float = 4,
    octave: int = 4,
    qpm: float = 120,
    voicing: str = "close",
    program: int = 0,
    velocity: int = 80,
    bass: bool = True,
    time_signature: tuple[int, int] = (4, 4),
) -> Score:
    """A chord progression as a one-track score: ``chords_to_score("C G Am F")``.

    Symbols are separated by spaces (or commas). Each is a root ``A``-``G`` with optional ``#``
    or ``b``, a quality (none = major, ``m``/``min``, ``7``, ``maj7``, ``m7``, ``dim``, ``dim7``,
    ``aug``, ``sus2``, ``sus4``, ``6``, ``m6``, ``9``, ``add9``, ``m7b5``/``ø`` and more: see
    ``CHORD_QUALITIES``) and an optional slash bass (``C/E``). ``N.C.`` leaves its slot silent.

    Timing: without ``|``, every chord lasts ``beats_per_chord`` beats. With ``|`` bar lines
    (``"| C G | Am | F |"``), every bar lasts one bar of ``time_signature`` and its chords share
    it equally (``C`` and ``G`` get two beats each in 4/4).

    Pitches: the chord's root in ``octave`` (C4 = 60), other tones above it (``voicing="close"``),
    every second tone an octave higher (``"open"``), or the inversion nearest the previous chord
    (``"smooth"``, voice leading); with ``bass`` the root, or the slash bass, in the octave below.
    """
    beats_per_chord = _positive(beats_per_chord, "beats_per_chord")
    if voicing not in _VOICINGS:
        raise PromptError(f"unknown voicing {voicing!r} (choose one of {', '.join(_VOICINGS)})")
    num, den = _time_signature(time_signature)
    bar_beats = Fraction(num * 4, den)
    raw = str(text).replace("|", " | ").replace(",", " ").split()
    if not any(t != "|" for t in raw):
        raise PromptError(f"no chord symbols in {text!r} ({_CHORD_HINT})")
    # Slots: (symbol, onset in beats, length in beats).
    slots: list[tuple[str, Fraction, Fraction]] = []
    if "|" in raw:
        bars: list[list[str]] = [[]]
        for t in raw:
            if t == "|":
                bars.append([])
            else:
                bars[-1].append(t)
        bars = [b for b in bars if b]
        for i, bar in enumerate(bars):
            step = bar_beats / len(bar)
            slots += [(sym, i * bar_beats + k * step, step) for k, sym in enumerate(bar)]
    else:
        step = Fraction(beats_per_chord).limit_denominator(10**6)
        slots = [(sym, k * step, step) for k, sym in enumerate(raw)]
    events: list[tuple[int, int, int]] = []
    previous: list[int] | None = None
    for sym, onset, length in slots:
        if sym.lower() in _NO_CHORD:
            continue
        root, intervals, slash = _parse_chord(sym)
        pitches = _voice(sym, root, intervals, slash, octave, voicing, bass, previous)
        previous = pitches[1:] if bass else pitches
        start, end = _ticks(onset), _ticks(onset + length)
        events += [(start, end - start, p) for p in dict.fromkeys(pitches)]
    if not events:
        raise PromptError(f"the progression {text!r} has no chord, only N.C.")
    return _make_score(events, qpm=qpm, program=program, velocity=velocity, time_signature=(num, den), name="Chords")


# --------------------------------------------------------------------------- scales


def _scale_name(text: str) -> tuple[int, str]:
    parts = str(text).strip().split(None, 1)
    if not parts:
        raise PromptError("empty scale (expected a tonic and a scale name, e.g. 'D dorian' or 'A minor pentatonic')")
    m = _ROOT_RE.match(parts[0][:1].upper() + parts[0][1:])
    if not m or m.end() != len(parts[0]):
        raise PromptError(f"unparseable scale tonic {parts[0]!r} in {text!r} (expected a note name such as C, F#, Bb)")
    tonic = _LETTERS[m.group(1)] + _accidental(m.group(2))
    name = parts[1] if len(parts) > 1 else "major"
    words = frozenset(re.sub(r"[-_]", " ", name.lower()).split()) - {"scale", "mode"}
    # "whole-tone" == "whole tone" == "wholetone"
    key = _SCALE_KEYS.get(words) or _SCALE_KEYS.get(frozenset(["".join(sorted(words))]))
    if key is None:
        known = ", ".join(n for _, names in _SCALE_GROUPS for n in names[:1])
        raise PromptError(f"unknown scale {name!r} (known: {known})")
    return tonic, key


def scale_pitches(text: str, *, octaves: int = 1, direction: str = "up", octave: int = 4) -> list[int]:
    """MIDI pitches of a scale, in playing order: ``scale_pitches("C major")`` = C4 ... C5.

    The tonic sits in ``octave``; the scale covers ``octaves`` octaves and ends on the tonic
    (``"up"``: rising to the top tonic, ``"down"``: falling from it, ``"updown"``: up and back).
    Melodic minor falls in its natural-minor form, as classical scales are played.
    """
    tonic, name = _scale_name(text)
    if direction not in _DIRECTIONS:
        raise PromptError(f"unknown direction {direction!r} (choose one of {', '.join(_DIRECTIONS)})")
    if not isinstance(octaves, (int, np.integer)) or octaves < 1:
        raise PromptError(f"octaves must be a whole number >= 1, not {octaves!r}")
    base = 12 * (int(octave) + 1) + tonic

    def run(intervals: tuple[int, ...]) -> list[int]:
        return [base + 12 * o + i for o in range(int(octaves)) for i in intervals] + [base + 12 * int(octaves)]

    up = run(SCALES[name])
    down = run(SCALES["minor"] if name == "melodic minor" else SCALES[name])[::-1]
    pitches = up if direction == "up" else down if direction == "down" else up + down[1:]
    if min(pitches) < 0 or max(pitches) > 127:
        raise PromptError(f"scale {text!r} from octave {octave} over {octaves} octave(s) leaves MIDI pitches 0-127")
    return pitches


def scale_to_score(
    text: str,
    *,
    octaves: int = 1,
    direction: str = "up",
    note_beats: float = 0.5,
    octave: int = 4,
    qpm: float = 120,
    program: int = 0,
    velocity: int = 80,
    time_signature: tuple[int, int] = (4, 4),
) -> Score:
    """A scale as a one-track score of notes ``note_beats`` long: ``scale_to_score("D dorian")``.

    ``text`` is a tonic (``C``, ``F#``, ``Bb``) and a scale name: major/ionian, minor/aeolian,
    dorian, phrygian, lydian, mixolydian, locrian, harmonic minor, melodic minor, major/minor
    pentatonic, blues, chromatic, whole-tone (a tonic alone means major). See ``scale_pitches``
    for ``octaves``, ``direction`` and ``octave``.
    """
    step = Fraction(_positive(note_beats, "note_beats")).limit_denominator(10**6)
    pitches = scale_pitches(text, octaves=octaves, direction=direction, octave=octave)
    events = [(_ticks(k * step), _ticks((k + 1) * step) - _ticks(k * step), p) for k, p in enumerate(pitches)]
    return _make_score(
        events, qpm=qpm, program=program, velocity=velocity, time_signature=_time_signature(time_signature), name="Scale"
    )


# --------------------------------------------------------------------------- motifs


def motif_to_score(
    text: str,
    *,
    note_beats: float = 1,
    qpm: float = 120,
    program: int = 0,
    velocity: int = 80,
    time_signature: tuple[int, int] = (4, 4),
) -> Score:
    """A motif as a one-track score: ``motif_to_score("C4:1 E4:0.5 G4:0.5 r:1 C5:2")``.

    Items are separated by spaces (``|`` bar lines are ignored). An item is a note name with
    octave (``C4`` = MIDI 60, ``F#3``, ``Bb5``) or a MIDI pitch number, several joined by ``+``
    for notes struck together (``C4+E4+G4``), or ``r`` for a rest; ``:beats`` sets its length
    (``1``, ``0.5``, ``1/3``), else it lasts ``note_beats``.
    """
    default = Fraction(_positive(note_beats, "note_beats")).limit_denominator(10**6)
    items = [t for t in str(text).replace(",", " ").split() if t != "|"]
    if not items:
        raise PromptError(f"no notes in motif {text!r} (expected e.g. 'C4 E4 G4 C5' or 'C4:1 E4:0.5 r:1')")
    events: list[tuple[int, int, int]] = []
    onset = Fraction(0)
    for item in items:
        head, sep, dur = item.partition(":")
        length = _beats(dur, item) if sep else default
        if head.lower() not in ("r", "rest"):
            start, end = _ticks(onset), _ticks(onset + length)
            for name in head.split("+"):
                try:
                    pitch = note_to_pitch(name)
                except PromptError as e:
                    raise PromptError(f"{e} in motif item {item!r}") from None
                events.append((start, end - start, pitch))
        onset += length
    if not events:
        raise PromptError(f"the motif {text!r} has only rests")
    return _make_score(
        events, qpm=qpm, program=program, velocity=velocity, time_signature=_time_signature(time_signature), name="Motif"
    )


# --------------------------------------------------------------------------- dispatcher and score

_KINDS = {
    "chords": chords_to_score,
    "chord": chords_to_score,
    "scale": scale_to_score,
    "scales": scale_to_score,
    "motif": motif_to_score,
    "motifs": motif_to_score,
}


def parse_prompt(kind: str, text: str, **kw: Any) -> Score:
    """``chords_to_score``, ``scale_to_score`` or ``motif_to_score`` by name (``"chords"``,
    ``"scale"``, ``"motif"``; a leading ``--`` is ignored), for the CLI. Options a kind does not
    take raise ``PromptError``."""
    key = str(kind).lstrip("-").lower()
    if key not in _KINDS:
        raise PromptError(f"unknown prompt kind {kind!r} (choose chords, scale or motif)")
    fn = _KINDS[key]
    allowed = set(fn.__kwdefaults__ or {})
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise PromptError(f"{key} prompts take no option {', '.join(unknown)} (options: {', '.join(sorted(allowed))})")
    return fn(text, **kw)


def _time_signature(ts: Any) -> tuple[int, int]:
    try:
        num, den = (int(x) for x in ts)
    except (TypeError, ValueError):
        raise PromptError(f"time_signature must be two numbers such as (4, 4), not {ts!r}") from None
    if num < 1 or den not in (1, 2, 4, 8, 16, 32):
        raise PromptError(f"invalid time signature {num}/{den}")
    return num, den


def _make_score(
    events: list[tuple[int, int, int]],
    *,
    qpm: float,
    program: int,
    velocity: int,
    time_signature: tuple[int, int],
    name: str,
) -> Score:
    qpm = _positive(qpm, "qpm")
    if not 0 <= int(program) <= 127:
        raise PromptError(f"program must be 0-127 (a General MIDI instrument), not {program}")
    if not 1 <= int(velocity) <= 127:
        raise PromptError(f"velocity must be 1-127, not {velocity}")
    arr = np.array(sorted(events, key=lambda e: (e[0], e[2])), dtype=np.int64).reshape(-1, 3)
    if np.any(arr[:, 1] <= 0):
        raise PromptError("a note is shorter than one tick; use longer durations")
    score = Score(TPQ)
    track = Track(name, int(program), False)
    track.notes = Note.from_numpy(
        time=arr[:, 0].astype(np.int32),
        duration=arr[:, 1].astype(np.int32),
        pitch=arr[:, 2].astype(np.int8),
        velocity=np.full(len(arr), int(velocity), np.int8),
    )
    score.tracks.append(track)
    score.tempos.append(Tempo(0, float(qpm)))
    score.time_signatures.append(TimeSignature(0, *time_signature))
    return score
