"""The splice contract of every edit: the user's file comes back with only the new notes added.

A continuation (``partita.generate(prompt=...)``), an infilling (``partita.infill``) and the web
explorer's jobs all go through here:

* ``prompt_view`` is what the model reads of a file: the notes (before a cut) with the sustain
  pedal applied to their durations exactly as ``partita data prepare`` applies it for training,
  the tempo, time and key signatures up to the last note's onset (events past the music never
  reach the model, so it continues after the last note, not after a tempo map that runs on),
  piano programs 1-7 read as 0 (a model writes one piano). miditok then quantises it and clamps
  its tempo when encoding. The view is an input, never the output.
* ``new_notes`` separates the notes the model wrote from the prompt's, in the tokenizer's ticks.
* ``splice`` adds them to the user's ``Score`` as symusic read it: every original note, track,
  name, program, tempo, time and key signature, pedal and control event, lyric and marker stays
  exactly as it was (in ticks). A new note is placed at the same beat the model wrote it on,
  ``tick = model_tick * file_tpq / model_tpq``: the tokenizer keeps beats (it rescales and
  quantises ticks; tempo is a token of its own), so the file's own tempo map plays the new notes.
  ``splice(..., start=, end=)`` keeps only the new notes that start in ``[start, end)``: a
  continuation starts at the prompt's last onset (a note the model writes at an earlier position
  of that bar is dropped), an infilling's notes lie in its span.

Which track a new note joins (``TRACK_RULE``): a drum note joins a drum track; a pitched note a
track of its program, where any piano program (0-7) counts as piano, and it takes that track's
program. Where several tracks qualify (two hands on one program; POP909's MELODY, BRIDGE and
PIANO) it joins the one whose register is nearest its pitch: a track's register is the median
pitch of its 16 notes nearest the edit (the last 16 before it, and for an infilling also the
first 16 after the span), ties to the earlier track. A note no track qualifies for starts a new
track of its program.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import symusic
from symusic import Note, Score

from partita.io.midi import PIANO_PROGRAMS, sustain_pedal

__all__ = [
    "REGISTER_NOTES",
    "TRACK_RULE",
    "Spliced",
    "cut",
    "last_onset",
    "new_notes",
    "prompt_view",
    "splice",
    "to_ticks",
]

#: Notes per track that give its register (the median pitch) for the track rule.
REGISTER_NOTES = 16

TRACK_RULE = (
    "drum notes join a drum track; a pitched note joins a track of its program (any piano program 0-7 "
    "counts as piano) and takes that track's program; among several such tracks, the one whose register "
    f"(median pitch of its {REGISTER_NOTES} notes nearest the edit) is nearest the note's pitch, ties to the "
    "earlier track; no such track: a new track of the note's program"
)

_PITCH_SCORE = (symusic.core.ScoreTick,)


def _ticks(score: Any) -> Score:
    return score if isinstance(score, _PITCH_SCORE) else score.to("tick")


def last_onset(score: Score) -> int:
    """Tick of the last note onset of ``score`` (-1 without notes)."""
    ends = [int(t.notes.numpy()["time"].max()) for t in score.tracks if t.note_num()]
    return max(ends) if ends else -1


def cut(score: Score, at: Optional[int]) -> Score:
    """The user's ``score`` as a prompt cut at tick ``at``: every note, pedal, control, pitch bend,
    lyric, marker, tempo, time and key signature that starts before it, exactly as it was (a note
    keeps its whole duration; the tempo and metre in force at the cut go on for the new notes).
    ``at=None``: the score itself."""
    if at is None:
        return score
    out = score.copy()
    at = int(at)
    for track in out.tracks:
        for name in ("notes", "pedals", "controls", "pitch_bends", "lyrics"):
            events = getattr(track, name)
            if len(events):
                setattr(track, name, events.filter(lambda e: e.time < at, inplace=False))
    for name in ("markers", "tempos", "time_signatures", "key_signatures"):
        events = getattr(out, name)
        if len(events):
            setattr(out, name, events.filter(lambda e: e.time < at, inplace=False))
    return out


def prompt_view(score: Any, at: Optional[int] = None, *, sustain: bool = True) -> Score:
    """What the model reads of ``score`` (module doc): notes starting before tick ``at`` (all when
    None), the sustain pedal applied as training applies it, meta events up to the last onset,
    piano programs as 0, no lyrics, markers, controls or pitch bends."""
    score = _ticks(score)
    view = Score(int(score.ticks_per_quarter))
    src = cut(score, at)
    if sustain:
        src = sustain_pedal(src)
    end = last_onset(src)
    for track in src.tracks:
        if track.note_num() == 0:
            continue
        program = 0 if (not track.is_drum and int(track.program) in PIANO_PROGRAMS) else int(track.program)
        t = symusic.core.TrackTick(track.name, program, bool(track.is_drum))
        t.notes = track.notes.copy()
        view.tracks.append(t)
    for name in ("tempos", "time_signatures", "key_signatures"):
        events = getattr(score, name)
        if len(events):
            setattr(view, name, events.filter(lambda e: e.time <= end, inplace=False))
    return view


def new_notes(tokenizer: Any, ids: np.ndarray, prompt_length: int) -> Score:
    """The notes that ``ids[prompt_length:]`` add to the prompt ``ids[:prompt_length]``, as a score
    in the tokenizer's ticks (one track per program): what the whole decodes to, less what the
    prompt alone decodes to."""
    from partita.generation.sampling import decode_safe

    ids = np.asarray(ids, np.int64)
    whole, _ = decode_safe(tokenizer, ids)
    out = Score(int(whole.ticks_per_quarter))
    if prompt_length <= 0:
        before: Counter = Counter()
    else:
        prompt, _ = decode_safe(tokenizer, ids[:prompt_length])
        before = Counter(_note_keys(prompt))
    for track in whole.tracks:
        n = track.notes.numpy()
        keep = np.ones(len(n["time"]), bool)
        for i, key in enumerate(zip(n["time"].tolist(), n["duration"].tolist(), n["pitch"].tolist(), n["velocity"].tolist())):
            k = (int(track.program), bool(track.is_drum), *key)
            if before[k] > 0:
                before[k] -= 1
                keep[i] = False
        if keep.any():
            t = symusic.core.TrackTick(track.name, int(track.program), bool(track.is_drum))
            t.notes = Note.from_numpy(**{f: v[keep] for f, v in n.items()})
            out.tracks.append(t)
    return out


def _note_keys(score: Score):
    for track in score.tracks:
        n = track.notes.numpy()
        for key in zip(n["time"].tolist(), n["duration"].tolist(), n["pitch"].tolist(), n["velocity"].tolist()):
            yield (int(track.program), bool(track.is_drum), *key)


def to_ticks(ticks: Any, frm: int, to: int) -> np.ndarray:
    """Ticks at resolution ``frm`` as ticks at resolution ``to`` (the same beat, rounded)."""
    return np.round(np.asarray(ticks, np.float64) * (int(to) / int(frm))).astype(np.int64)


@dataclass
class Spliced:
    """The user's score with the new notes added, and what was added."""

    score: Score
    added: int  # new notes in the score
    by_track: dict  # track index -> notes added to it
    new_tracks: int = 0  # tracks made for programs the file had none of
    end: int = 0  # tick where the last new note ends (0 without new notes)


def _qualifies(track: Any, program: int, drum: bool) -> bool:
    if drum or track.is_drum:
        return bool(track.is_drum) and drum
    if program in PIANO_PROGRAMS:
        return int(track.program) in PIANO_PROGRAMS
    return int(track.program) == program


def _register(track: Any, start: int, end: Optional[int]) -> float:
    n = track.notes.numpy()
    t, p = n["time"], n["pitch"].astype(np.float64)
    near = p[t < start][-REGISTER_NOTES:]
    if end is not None:
        near = np.concatenate([near, p[t >= end][:REGISTER_NOTES]])
    if len(near) == 0:
        near = p
    return float(np.median(near)) if len(near) else 60.0


def splice(original: Any, added: Score, *, start: Optional[int] = None, end: Optional[int] = None) -> Spliced:
    """``original`` (the user's score) with the notes of ``added`` (in any resolution, from tick 0
    of the same piece) placed at the same beats, each in a track chosen by ``TRACK_RULE``; only
    those starting in ``[start, end)`` (file ticks; None: open) are added (module doc)."""
    score = _ticks(original).copy()
    tpq = int(score.ticks_per_quarter)
    src_tpq = int(added.ticks_per_quarter)
    edit_at = start if start is not None else last_onset(score) + 1
    by_track: dict[int, list] = {}
    new_tracks = 0
    registers: dict[int, float] = {}
    last_end = 0
    for track in added.tracks:
        n = track.notes.numpy()
        if len(n["time"]) == 0:
            continue
        time = to_ticks(n["time"], src_tpq, tpq)
        dur = np.maximum(to_ticks(n["duration"], src_tpq, tpq), 1)
        keep = np.ones(len(time), bool)
        if start is not None:
            keep &= time >= start
        if end is not None:
            keep &= time < end
        if not keep.any():
            continue
        time, dur, pitch, vel = time[keep], dur[keep], n["pitch"][keep], n["velocity"][keep]
        last_end = max(last_end, int((time + dur).max()))
        program, drum = int(track.program), bool(track.is_drum)
        candidates = [i for i, t in enumerate(score.tracks) if t.note_num() and _qualifies(t, program, drum)]
        if not candidates:
            candidates = [i for i, t in enumerate(score.tracks) if not t.note_num() and _qualifies(t, program, drum)]
        if not candidates:
            t = symusic.core.TrackTick(_program_label(program, drum), program, drum)
            score.tracks.append(t)
            candidates = [len(score.tracks) - 1]
            new_tracks += 1
        if len(candidates) == 1:
            choice = np.full(len(time), candidates[0])
        else:
            for i in candidates:
                if i not in registers:
                    registers[i] = _register(score.tracks[i], edit_at, end)
            reg = np.array([registers[i] for i in candidates])
            choice = np.asarray(candidates)[np.argmin(np.abs(pitch[:, None].astype(np.float64) - reg[None, :]), axis=1)]
        for i in np.unique(choice):
            m = choice == i
            by_track.setdefault(int(i), []).append((time[m], dur[m], pitch[m], vel[m]))
    for i, parts in by_track.items():
        track = score.tracks[i]
        old = track.notes.numpy()
        merged = {
            "time": np.concatenate([old["time"]] + [p[0].astype(old["time"].dtype) for p in parts]),
            "duration": np.concatenate([old["duration"]] + [p[1].astype(old["duration"].dtype) for p in parts]),
            "pitch": np.concatenate([old["pitch"]] + [p[2].astype(old["pitch"].dtype) for p in parts]),
            "velocity": np.concatenate([old["velocity"]] + [p[3].astype(old["velocity"].dtype) for p in parts]),
        }
        # the original notes first in their own order, the new ones after them in time order:
        # a stable sort by onset keeps every original note's place among notes of its onset
        order = np.argsort(merged["time"], kind="stable")
        track.notes = Note.from_numpy(**{k: v[order] for k, v in merged.items()})
    counts = {i: int(sum(len(p[0]) for p in parts)) for i, parts in by_track.items()}
    return Spliced(score=score, added=int(sum(counts.values())), by_track=counts, new_tracks=new_tracks, end=last_end)


def _program_label(program: int, drum: bool) -> str:
    return "Drums (new)" if drum else f"program {program} (new)"
