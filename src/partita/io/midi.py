"""Reading, checking and writing MIDI files, and the note arrays every representation starts from.

symusic does the parsing (C++, ~100x pretty_midi). Before handing bytes to it we read the header
ourselves, so that every file we cannot use is refused with one `MidiError` whose `reason` is a
short code (for summaries) and whose message is one line a person can act on.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Union

import numpy as np
import symusic
from symusic import Note, Pedal, Score, Track

from partita.errors import PartitaError
from partita.io.files import atomic_path

DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: One row per note. ``onset`` and ``duration`` are in the unit asked for (seconds, beats or ticks);
#: a beat is a quarter note. ``track`` is the index of the track in the score the note came from.
NOTE_DTYPE = np.dtype(
    [
        ("onset", "f8"),
        ("duration", "f8"),
        ("pitch", "i2"),
        ("velocity", "i2"),
        ("program", "i2"),
        ("is_drum", "?"),
        ("track", "i2"),
    ]
)

# symusic's names for the units we expose.
_UNITS = {"second": "second", "beat": "quarter", "tick": "tick"}

MidiSource = Union[str, os.PathLike, bytes, bytearray]


class MidiError(PartitaError, ValueError):
    """A MIDI input that cannot be used. ``reason`` is a short code; ``str(err)`` is one line."""

    def __init__(self, reason: str, message: str, source: str | None = None):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


def _check_header(data: bytes, name: str | None) -> bytes:
    """Validate the container and return the Standard MIDI File bytes (unwrapping RIFF RMID)."""
    if data[:4] == b"RIFF" and data[8:12] == b"RMID":
        # RIFF-wrapped MIDI (.rmi): the SMF is the payload of the 'data' chunk.
        pos = 12
        while pos + 8 <= len(data):
            cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
            if cid == b"data":
                data = data[pos + 8 : pos + 8 + size]
                break
            pos += 8 + size + (size & 1)
        else:
            raise MidiError("not_midi", "RIFF file without a MIDI data chunk", name)
    if len(data) == 0:
        raise MidiError("not_midi", "empty file (0 bytes), not a MIDI file", name)
    if data[:4] != b"MThd":
        raise MidiError("not_midi", "not a MIDI file (it does not start with an MThd header)", name)
    if len(data) < 14:
        raise MidiError("truncated", "truncated MIDI file: the header is incomplete", name)
    header_len, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if header_len < 6:
        raise MidiError("corrupt", f"corrupt MIDI header (length {header_len}, expected 6)", name)
    if division & 0x8000:
        raise MidiError(
            "smpte",
            "SMPTE time division is not supported; re-save the file with ticks per quarter note",
            name,
        )
    if division == 0:
        raise MidiError("zero_tpq", "the header says zero ticks per quarter note, so no timing can be read", name)
    if fmt == 2:
        raise MidiError(
            "type2",
            "type-2 MIDI (independent sequences) is not supported; convert it to type 0 or 1",
            name,
        )
    if fmt > 2:
        raise MidiError("corrupt", f"unknown MIDI format {fmt} in the header", name)
    # Walk the chunks: a track chunk longer than what is left means the file was cut short.
    pos, found = 8 + header_len, 0
    while pos + 8 <= len(data) and found < ntracks:
        size = struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > len(data):
            raise MidiError(
                "truncated",
                f"truncated MIDI file: track {found + 1} needs {size} bytes but only {len(data) - pos - 8} remain",
                name,
            )
        if data[pos : pos + 4] == b"MTrk":
            found += 1
        pos += 8 + size
    if found < ntracks and pos < len(data):
        raise MidiError("truncated", "truncated MIDI file: a track chunk header is cut short", name)
    return data


def load(
    source: MidiSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_empty: bool = False,
) -> Score:
    """Load a MIDI file (path or bytes) as a symusic ``Score`` in ticks.

    Raises ``MidiError`` for anything unusable: not MIDI, truncated, SMPTE or zero division,
    type 2, larger than ``max_bytes``, or (unless ``allow_empty``) without a single note.
    """
    name = None
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise MidiError("missing", "no such file", name) from None
        except OSError as e:
            raise MidiError("unreadable", f"cannot read the file ({e.strerror})", name) from None
        if path.is_dir():
            raise MidiError("not_midi", "is a folder, not a MIDI file", name)
        if size > max_bytes:
            raise MidiError(
                "too_large",
                f"file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit (raise max_bytes to read it)",
                name,
            )
        try:
            data = path.read_bytes()
        except OSError as e:
            raise MidiError("unreadable", f"cannot read the file ({e.strerror})", name) from None
    if len(data) > max_bytes:
        raise MidiError(
            "too_large",
            f"data is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit",
            name,
        )
    data = _check_header(data, name)
    try:
        score = Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError with its own wording
        msg = str(e).replace("MiniMidi: ", "").split(":")[0].strip() or type(e).__name__
        reason = "truncated" if "length" in msg.lower() or "remaining" in msg.lower() else "corrupt"
        raise MidiError(reason, f"corrupt MIDI data ({msg})", name) from None
    if not allow_empty and score.note_num() == 0:
        raise MidiError("no_notes", "the file contains no notes", name)
    return score


def save(score: Score, path: str | os.PathLike) -> Path:
    """Write ``score`` as a standard MIDI file; the file appears whole or not at all."""
    path = Path(path)
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))
    return path


def _empty_notes() -> dict:
    return {
        "time": np.zeros(0, np.int32),
        "duration": np.zeros(0, np.int32),
        "pitch": np.zeros(0, np.int8),
        "velocity": np.zeros(0, np.int8),
    }


def sustained_durations(notes: dict, pedals: dict) -> np.ndarray:
    """Note durations (ticks) lengthened by sustain-pedal intervals, as a pianist hears them.

    ``notes`` and ``pedals`` are symusic's ``.numpy()`` dicts of one track. A note released while
    the pedal is down lasts until the pedal is lifted, but no longer than the next onset of the
    same pitch (a re-struck key cuts the old sound), and never shorter than written.
    """
    onset = notes["time"].astype(np.int64)
    end = onset + notes["duration"].astype(np.int64)
    if len(pedals["time"]) == 0 or len(onset) == 0:
        return notes["duration"].astype(np.int32)
    order = np.argsort(pedals["time"], kind="stable")
    p_start = pedals["time"][order].astype(np.int64)
    p_end = p_start + pedals["duration"][order].astype(np.int64)
    k = np.maximum(np.searchsorted(p_start, end, side="right") - 1, 0)
    held = (p_start[k] <= end) & (end < p_end[k])
    new_end = np.where(held, p_end[k], end)
    # Cap at the next onset of the same pitch.
    pitch = notes["pitch"]
    by_pitch = np.argsort((pitch.astype(np.int64) << 40) | onset, kind="stable")
    nxt = np.full(len(onset), np.iinfo(np.int64).max)
    same = pitch[by_pitch][1:] == pitch[by_pitch][:-1]
    nxt[by_pitch[:-1][same]] = onset[by_pitch[1:][same]]
    new_end = np.maximum(end, np.minimum(new_end, nxt))
    return (new_end - onset).astype(np.int32)


def sustain_pedal(score: Score) -> Score:
    """A copy of ``score`` (in ticks) with notes lengthened by the sustain pedal
    (:func:`sustained_durations`); the pedal events are removed so nothing applies them twice."""
    score = score.copy()
    if score.ttype != symusic.TimeUnit.tick:
        raise ValueError("sustain_pedal works on scores in ticks")
    for track in score.tracks:
        if len(track.pedals) == 0 or track.note_num() == 0:
            continue
        n = track.notes.numpy()
        track.notes = Note.from_numpy(
            time=n["time"],
            duration=sustained_durations(n, track.pedals.numpy()),
            pitch=n["pitch"],
            velocity=n["velocity"],
        )
        track.pedals = Pedal.from_numpy(time=np.zeros(0, np.int32), duration=np.zeros(0, np.int32))
    return score


def drop_drums(score: Score) -> Score:
    """A copy of ``score`` without its drum tracks."""
    out = score.copy()
    out.tracks = [t for t in score.copy().tracks if not t.is_drum]
    return out


def merge_tracks(score: Score, program: int = 0, name: str = "Piano") -> Score:
    """All pitched notes of ``score`` as one track (a piano part by default); drums are dropped."""
    out = score.copy()
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and t.note_num()] or [_empty_notes()]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((merged["pitch"], merged["time"]))
    track = Track(name, program, False)
    track.notes = Note.from_numpy(**{k: v[order] for k, v in merged.items()})
    out.tracks = [track]
    return out


def preprocess(score: Score, *, sustain: bool = False, drums: bool = True, merge: bool = False) -> Score:
    """The options every representation can use, applied in a fixed order.

    ``sustain``: extend notes under the sustain pedal (for performance MIDI);
    ``drums=False``: drop drum tracks; ``merge``: fold all pitched tracks into one piano part.
    """
    if sustain:
        score = sustain_pedal(score)
    if not drums:
        score = drop_drums(score)
    if merge:
        score = merge_tracks(score)
    return score


def note_array(score: Score, unit: str = "second") -> np.ndarray:
    """Every note of ``score`` as a ``NOTE_DTYPE`` array sorted by onset, then pitch.

    ``unit`` is ``"second"``, ``"beat"`` (quarter notes) or ``"tick"``.
    """
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {sorted(_UNITS)}, not {unit!r}")
    if score.ttype != symusic.TimeUnit.tick:
        score = score.to("tick")
    converted = score.to(_UNITS[unit]) if unit != "tick" else score
    parts = []
    for i, track in enumerate(converted.tracks):
        n = track.notes.numpy()
        if len(n["time"]) == 0:
            continue
        a = np.empty(len(n["time"]), NOTE_DTYPE)
        a["onset"] = n["time"]
        a["duration"] = n["duration"]
        a["pitch"] = n["pitch"]
        a["velocity"] = n["velocity"]
        a["program"] = track.program
        a["is_drum"] = track.is_drum
        a["track"] = i
        parts.append(a)
    if not parts:
        return np.zeros(0, NOTE_DTYPE)
    notes = np.concatenate(parts)
    return notes[np.lexsort((notes["pitch"], notes["onset"]))]


def pitched(notes: np.ndarray, *, require: tuple[str, ...] = ("onset", "duration", "pitch"), sort: bool = False) -> np.ndarray:
    """The non-drum notes of a ``NOTE_DTYPE`` array (``is_drum`` is optional); ``sort``: by onset,
    then pitch. ``PartitaError`` for anything that is not a note array with the fields in ``require``."""
    notes = np.asarray(notes)
    if notes.dtype.names is None or not set(require) <= set(notes.dtype.names):
        raise PartitaError(f"expected a note array with fields {', '.join(require)} (partita.io.note_array or Corpus.notes)")
    if "is_drum" in notes.dtype.names:
        notes = notes[~notes["is_drum"]]
    return notes[np.lexsort((notes["pitch"], notes["onset"]))] if sort else notes


def last_note_off(score: Score) -> int:
    """The tick (in ``score``'s unit) where its last note ends; 0 without notes. Meta events
    (tempo, metre, markers) and pedals after it do not count: they are not music."""
    ends = [int((n["time"] + n["duration"]).max()) for n in (t.notes.numpy() for t in score.tracks) if len(n["time"])]
    return max(ends) if ends else 0


def duration_seconds(score: Score) -> float:
    """Length of the score from time 0 to its last note-off, in seconds (``partita.io.timing``)."""
    if score.note_num() == 0:
        return 0.0
    if score.ttype == symusic.TimeUnit.second:
        return float(last_note_off(score))
    from partita.io.timing import seconds_at

    tick = score if score.ttype == symusic.TimeUnit.tick else score.to("tick")
    return float(seconds_at(tick, [last_note_off(tick)])[0])


#: General MIDI programs of the piano family (acoustic grand to clavinet).
PIANO_PROGRAMS = range(0, 8)


def is_piano(path: str | os.PathLike) -> bool:
    """Whether a MIDI file is piano music: pitched notes only, all on piano programs (0-7). An
    unreadable file is not (the step that reads it for real reports why)."""
    try:
        score = load(path)
    except Exception:
        return False
    tracks = [t for t in score.tracks if t.note_num() > 0]
    return bool(tracks) and all(not t.is_drum and t.program in PIANO_PROGRAMS for t in tracks)
