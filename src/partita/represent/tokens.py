"""Token sequences for language models, through miditok.

miditok does the tokenization (REMI by default) and the BPE/Unigram training (Hugging Face
``tokenizers`` underneath); this module is the thin layer partita needs on top of it:

* ``make_tokenizer`` builds a tokenizer with partita's defaults (below), ``save_tokenizer`` and
  ``load_tokenizer`` keep its whole state in ONE local JSON file (never the Hub);
* ``encode``/``decode`` turn a ``symusic.Score`` into one int array per piece and back, such that
  tokens -> MIDI file -> tokens is exact (see "Canonical form");
* ``train_tokenizer`` learns BPE or Unigram merges from in-memory scores;
* ``token_timing`` gives, for every (possibly merged) token, the bar index and the position in
  the bar, for a model's bar/beat embeddings;
* ``write_token_streams``/``TokenStreams`` store a whole corpus as memory-mapped arrays.

Defaults (``PARTITA_DEFAULTS``) and why:

* ``use_programs=True`` and ``one_token_stream_for_programs=True``: every instrument goes into ONE
  stream with ``Program`` tokens before each note (REMI+), so a piece is one sequence for a GPT;
* ``use_tempos=True``, ``use_time_signatures=True``: tempo and metre are part of the music; REMI
  then writes ``Bar TimeSig Position ...``, which is what ``token_timing`` reads;
* ``beat_res={(0, 4): 8, (4, 12): 4}``: onsets on a 1/8-beat grid; durations to 1/8 beat up to 4
  beats, then 1/4 beat up to 12 beats (miditok's default);
* ``num_velocities=32``; ``special_tokens=["PAD", "BOS", "EOS"]`` (PAD is id 0);
* no chords, rests, pedals, pitch bends or control changes: they cost sequence length, Rest tokens
  move time without Bar tokens (``token_timing`` refuses them) and pedals are better applied to
  note durations first (``partita.io.preprocess(score, sustain=True)``);
* ``encode_ids_split="bar"``: BPE merges never cross a bar line, so a merged token always lies
  inside one bar.

partita's own options (``set_options``; saved in tokenizer.json's ``additional_params``, so a
tokenizer without them, as the shipped models have, tokenizes as before; ``partita data tokenizer
train`` sets both by default):

* track roles (``learn_track_roles``, ``track_roles``): named tracks that share a program with
  another track (POP909's MELODY, BRIDGE, PIANO) are written with programs of their own and
  ``decode``/``restore_tracks`` give them back their program and name, so they stay apart in the
  one stream where miditok would merge them;
* the metre read from the beats (``assumed_metre``): a file written in 1/4 is read in bars of its
  beats' grouping (4, or 3).

Canonical form. miditok quantizes (time grid, duration and velocity bins, tempo bins) and then
orders simultaneous events by track order and note order. Some scores would not come back
identical from a MIDI file, so ``encode`` fixes an order and removes what MIDI cannot carry
(after sorting in-memory events by time, which miditok assumes, and after miditok's own
preprocessing):

1. tracks are ordered by program (drums first): a decoded score lists its tracks in order of
   appearance, so simultaneous notes of different instruments must always come in one order;
2. within a track, notes are ordered by (onset, duration, pitch), the order they come back in;
3. within a track, a note re-struck while it still sounds is cut to end by the new onset (its
   duration floored to a duration bin), and of two notes with the same onset and pitch only the longest is kept:
   MIDI pairs note-offs with note-ons first-in-first-out, so nested notes of one pitch cannot
   survive a MIDI file.

With these, ``encode(load(decode(ids).dumps_midi())) == ids`` for any ``ids = encode(score)``
(tested for REMI, TSD, MIDILike and Structured, base and BPE-trained).

miditok limitations worth knowing: notes outside ``pitch_range`` (21-108 by default) and time
signatures outside ``time_signature_range`` are dropped; time signature changes are delayed to the
next bar; Structured has no time signatures (4/4) and clips pauses to its longest TimeShift;
Hugging Face's Unigram training is not deterministic (BPE is).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Union

import miditok
import numpy as np
import symusic
from miditok import MusicTokenizer, TokenizerConfig, TokSequence
from miditok.utils import get_score_ticks_per_beat
from symusic import Note, Score

from partita.errors import PartitaError
from partita.io.files import atomic_path
from partita.io.midi import MidiSource, load
from partita.represent.token_tables import TokenTables, token_tables

__all__ = [
    "PARTITA_DEFAULTS",
    "TOKENIZERS",
    "TokenTables",
    "TokenizerError",
    "check_tokenizer",
    "TokenStreams",
    "decode",
    "encode",
    "assumed_metre",
    "learn_track_roles",
    "load_tokenizer",
    "make_tokenizer",
    "restore_tracks",
    "set_options",
    "suggest_vocab_size",
    "track_roles",
    "save_tokenizer",
    "special_id",
    "token_tables",
    "token_timing",
    "token_streams",
    "train_tokenizer",
    "write_token_streams",
]

#: The tokenizations partita accepts: those that give one stream of single ids per piece.
#: (CPWord, Octuple and MuMIDI stack several ids per step; MMM needs per-track sequences.)
TOKENIZERS: dict[str, type[MusicTokenizer]] = {
    "REMI": miditok.REMI,
    "TSD": miditok.TSD,
    "MIDILike": miditok.MIDILike,
    "Structured": miditok.Structured,
}

#: partita's TokenizerConfig defaults; any of them can be overridden in ``make_tokenizer``.
PARTITA_DEFAULTS: dict[str, Any] = {
    "use_programs": True,
    "one_token_stream_for_programs": True,
    "use_tempos": True,
    "use_time_signatures": True,
    "beat_res": {(0, 4): 8, (4, 12): 4},
    "num_velocities": 32,
    "special_tokens": ["PAD", "BOS", "EOS"],
    "use_chords": False,
    "use_rests": False,
    "use_sustain_pedals": False,
    "use_pitch_bends": False,
    "use_control_changes": False,
    "encode_ids_split": "bar",
}

# Tokenizer-specific options miditok reads from ``config.additional_params``.
_EXTRA_PARAMS = {
    "REMI": {"max_bar_embedding", "use_bar_end_tokens", "add_trailing_bars"},
    "MIDILike": {"max_duration"},
}
_CONFIG_PARAMS = {
    name
    for name, p in inspect.signature(TokenizerConfig.__init__).parameters.items()
    if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
}

_STREAMS_FORMAT = "partita.token_streams"
_STREAMS_VERSION = 1
_BARS_DTYPE = np.dtype("<i4")
_POSITIONS_DTYPE = np.dtype("<i2")

PathLike = Union[str, os.PathLike]
_SCORE_TYPES = (symusic.core.ScoreTick, symusic.core.ScoreQuarter, symusic.core.ScoreSecond)


class TokenizerError(PartitaError, ValueError):
    """A tokenizer that cannot be made, read or used; ``str(err)`` is one line."""


# --------------------------------------------------------------------------- tokenizer objects


def _resolve_name(name: str) -> str:
    for key in TOKENIZERS:
        if key.lower() == str(name).lower().replace("-", "").replace("_", ""):
            return key
    raise TokenizerError(
        f"unsupported tokenizer {name!r}: partita uses one token stream per piece, "
        f"choose one of {', '.join(TOKENIZERS)}"
    )


def make_tokenizer(name: str = "REMI", **params: Any) -> MusicTokenizer:
    """A miditok tokenizer ``name`` (REMI, TSD, MIDILike, Structured) with partita's defaults.

    ``params`` are ``miditok.TokenizerConfig`` fields (``num_velocities=16``,
    ``beat_res={(0, 4): 4}``, ``pitch_range=(0, 127)``...) or options of that tokenization
    (REMI: ``max_bar_embedding``, ``use_bar_end_tokens``, ``add_trailing_bars``); they override
    ``PARTITA_DEFAULTS``. Settings that would give one stream per track are refused.
    """
    key = _resolve_name(name)
    allowed = _CONFIG_PARAMS | _EXTRA_PARAMS.get(key, set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TokenizerError(
            f"unknown {key} tokenizer parameter(s) {', '.join(unknown)}; "
            "see miditok.TokenizerConfig for the valid ones"
        )
    cfg = {**PARTITA_DEFAULTS, **params}
    if not (cfg["use_programs"] and cfg["one_token_stream_for_programs"]):
        raise TokenizerError(
            "use_programs and one_token_stream_for_programs must stay True: "
            "partita encodes every piece as one token stream"
        )
    cfg["special_tokens"] = list(cfg["special_tokens"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # miditok warns about options it switches off itself
        tokenizer = TOKENIZERS[key](TokenizerConfig(**cfg))
    return tokenizer


def check_tokenizer(tokenizer: Any) -> MusicTokenizer:
    if not isinstance(tokenizer, MusicTokenizer):
        raise TokenizerError(f"expected a miditok tokenizer, got {type(tokenizer).__name__}")
    if type(tokenizer).__name__ not in TOKENIZERS or not tokenizer.one_token_stream:
        raise TokenizerError(
            f"{type(tokenizer).__name__} tokenizer without one token stream per piece is not "
            f"supported; make one with make_tokenizer({', '.join(map(repr, TOKENIZERS))})"
        )
    return tokenizer


def save_tokenizer(tokenizer: MusicTokenizer, path: PathLike) -> Path:
    """Write the tokenizer's whole state (config, vocabulary, learned merges) to one JSON file.

    ``path`` is a file name (``tokenizer.json`` is added if it is a folder). The file appears
    whole or not at all.
    """
    check_tokenizer(tokenizer)
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    with atomic_path(path, suffix=".json") as tmp:
        tokenizer.save(tmp)
    return path


def load_tokenizer(path: PathLike) -> MusicTokenizer:
    """Read a tokenizer JSON file written by ``save_tokenizer`` (or miditok's ``save``).

    Only the local file is read: nothing is ever fetched from the network. A missing, unreadable
    or malformed file raises ``TokenizerError`` (a ``ValueError``) with a one-line message.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file (write one with save_tokenizer)")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read the tokenizer file ({e})") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not a tokenizer JSON file ({e.msg} at line {e.lineno})") from None
    if not isinstance(params, dict) or "tokenization" not in params or "config" not in params:
        raise TokenizerError(f"{path}: not a miditok tokenizer file (no 'tokenization'/'config' entry)")
    name = params["tokenization"]
    if name not in TOKENIZERS:
        raise TokenizerError(
            f"{path}: {name!r} tokenizers are not supported; use one of {', '.join(TOKENIZERS)}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # ``params=`` reads the local JSON file directly (from_pretrained could reach the Hub).
            tokenizer = TOKENIZERS[name](params=path)
    except Exception as e:  # miditok raises KeyError/TypeError/... on a damaged file
        raise TokenizerError(f"{path}: corrupt tokenizer file ({type(e).__name__}: {e})") from None
    return check_tokenizer(tokenizer)


# --------------------------------------------------------------------------- canonical encoding


def _track_key(track: symusic.core.TrackTick) -> int:
    return -1 if track.is_drum else track.program


def _canonical_notes(tokenizer: MusicTokenizer, score: Score) -> None:
    """Per track: no overlapping notes of one pitch, notes sorted by (onset, duration, pitch).

    In place, on a score miditok has preprocessed (see the module doc for why).
    """
    use_bins = not tokenizer._note_on_off  # duration tokens: durations must stay on their bins
    sections = None
    for track in score.tracks:
        if track.note_num() == 0:
            continue
        program = -1 if track.is_drum else track.program
        n = track.notes.numpy()
        t = n["time"].astype(np.int64)
        d = n["duration"].astype(np.int64)
        p = n["pitch"]
        v = n["velocity"]
        changed = False
        if track.note_num() > 1 and program in tokenizer.config.use_note_duration_programs:
            order = np.lexsort((-d, t, p))  # by pitch, onset, longest first
            ts, ds, ps = t[order], d[order], p[order]
            same_pitch = ps[1:] == ps[:-1]
            dup = same_pitch & (ts[1:] == ts[:-1])  # same onset and pitch: keep the longest
            if dup.any():
                keep = np.ones(len(ts), bool)
                keep[1:][dup] = False
                order, ts, ds, ps = order[keep], ts[keep], ds[keep], ps[keep]
                same_pitch = ps[1:] == ps[:-1]
                changed = True
            i = np.flatnonzero(same_pitch & (ts[:-1] + ds[:-1] > ts[1:]))
            if len(i):
                gap = ts[i + 1] - ts[i]
                if use_bins:  # floor the new duration to a duration bin of its metre section
                    if sections is None:
                        if tokenizer.config.use_time_signatures and len(score.time_signatures) > 0:
                            sections = get_score_ticks_per_beat(score)
                        else:
                            sections = np.array([[score.end() + 1, tokenizer.time_division]])
                    sec = np.minimum(np.searchsorted(sections[:, 0], ts[i], side="right"), len(sections) - 1)
                    for s in np.unique(sec):
                        bins = np.sort(tokenizer._tpb_to_time_array[int(sections[s, 1])])
                        m = sec == s
                        gap[m] = bins[np.maximum(np.searchsorted(bins, gap[m], side="right") - 1, 0)]
                ds[i] = np.minimum(ds[i], gap)
                changed = True
            if changed:
                t, d, p, v = ts, ds, ps, v[order]
        order = np.lexsort((p, d, t))
        if changed or np.any(order != np.arange(len(order))):
            track.notes = Note.from_numpy(
                time=t[order].astype(np.int32),
                duration=d[order].astype(np.int32),
                pitch=p[order],
                velocity=v[order],
            )


def _is_sorted(events: Any) -> bool:
    if len(events) < 2:
        return True
    times = events.numpy()["time"]
    return bool(np.all(times[1:] >= times[:-1]))


def _time_sorted(score: Score) -> Score:
    """``score``, or a copy with its events sorted by time (miditok assumes they are).

    ``symusic`` sorts what it reads from a file, but a score built in memory may not be.
    """
    lists = [score.tempos, score.time_signatures, score.key_signatures]
    if all(_is_sorted(x) for x in lists) and all(_is_sorted(t.notes) for t in score.tracks):
        return score
    score = score.copy()
    for events in (score.tempos, score.time_signatures, score.key_signatures):
        events.sort(inplace=True)
    for track in score.tracks:
        track.notes.sort(inplace=True)  # by (time, duration, pitch)
    return score


def _prepare(tokenizer: MusicTokenizer, score: Score) -> Score:
    """partita's options (track roles, the metre read from the beats), miditok's preprocessing,
    then partita's canonical form (module doc)."""
    if not isinstance(score, symusic.core.ScoreTick):
        score = score.to("tick")
    score = _with_options(tokenizer, score)
    pre = tokenizer.preprocess_score(_time_sorted(score))
    if tokenizer.config.use_time_signatures and len(pre.time_signatures) > 0:
        # miditok picks the new resolution from the time signatures before it delays them to
        # bar lines and drops the redundant ones; when an x/8 signature vanishes that way, the
        # onsets sit on a grid twice too fine for the metre left. A second pass requantizes them.
        expected = tokenizer.config.max_num_pos_per_beat * max(ts.denominator for ts in pre.time_signatures) // 4
        if pre.ticks_per_quarter != expected:
            pre = tokenizer.preprocess_score(pre)
    pre.tracks.sort(key=_track_key, inplace=True)
    _canonical_notes(tokenizer, pre)
    return pre


def _tokseq(tokenizer: MusicTokenizer, score: Score | MidiSource, encode_ids: bool) -> TokSequence:
    if not isinstance(score, _SCORE_TYPES):
        score = load(score)
    return tokenizer.encode(_prepare(tokenizer, score), encode_ids=encode_ids, no_preprocess_score=True)


def encode(
    tokenizer: MusicTokenizer,
    score: Score | MidiSource,
    *,
    bos_eos: bool = False,
    dtype: Any = np.int64,
) -> np.ndarray:
    """Token ids of ``score`` (a Score, or a MIDI path/bytes), merged by BPE/Unigram if trained.

    ``bos_eos=True`` frames them with the BOS and EOS tokens (the base ids, which a trained
    tokenizer keeps). The sequence is in partita's canonical form (module doc), which makes
    tokens -> MIDI -> tokens exact.
    """
    check_tokenizer(tokenizer)
    ids = np.asarray(_tokseq(tokenizer, score, encode_ids=True).ids, dtype=dtype)
    if bos_eos:
        ids = np.concatenate([[special_id(tokenizer, "BOS")], ids, [special_id(tokenizer, "EOS")]]).astype(dtype)
    return ids


def special_id(tokenizer: MusicTokenizer, name: str) -> int:
    """The id ``encode`` and models use for the special token ``name`` ("PAD", "BOS", "EOS")."""
    check_tokenizer(tokenizer)
    token = name if "_" in name else f"{name}_None"
    if token not in tokenizer.vocab:
        raise TokenizerError(f"the tokenizer has no {name} token (special tokens: {tokenizer.special_tokens})")
    base_id = tokenizer.vocab[token]
    if not tokenizer.is_trained:
        return base_id
    table = token_tables(tokenizer)
    single = np.flatnonzero((table.lengths == 1) & (table.flat[np.minimum(table.starts, len(table.flat) - 1)] == base_id))
    if len(single) == 0:
        raise TokenizerError(f"the trained tokenizer has no id for {name}")
    return int(single[0])


def decode(tokenizer: MusicTokenizer, ids: Iterable[int] | np.ndarray) -> Score:
    """The ``symusic.Score`` (in ticks, at ``tokenizer.time_division`` per quarter) of ``ids``.

    PAD, BOS and EOS tokens are dropped first. Ids come from ``encode`` or a model; a trained
    tokenizer reads them as merged (BPE/Unigram) ids.
    """
    check_tokenizer(tokenizer)
    ids = np.asarray(ids if not hasattr(ids, "numpy") else ids.numpy()).astype(np.int64).ravel()
    table = token_tables(tokenizer)
    if ids.size and (ids.min() < 0 or ids.max() >= len(table.lengths)):
        raise TokenizerError(f"token ids must be in [0, {len(table.lengths)}), got {ids.min()}..{ids.max()}")
    ids = ids[~table.special[ids]]
    seq = TokSequence(ids=ids.tolist(), are_ids_encoded=tokenizer.is_trained)
    return restore_tracks(tokenizer, tokenizer.decode(seq))


# --------------------------------------------------------------------------- partita's options

#: ``config.additional_params`` keys of partita's own tokenizer options (saved in tokenizer.json;
#: a tokenizer without them, such as those of the shipped models, tokenizes as it always did).
TRACKS_KEY = "partita_track_roles"
METRE_KEY = "partita_metre_from_beats"


def track_roles(tokenizer: MusicTokenizer) -> list[dict]:
    """The tokenizer's track roles: ``[{"program": p, "name": NAME, "token_program": q}]``; a
    track of program ``p`` named ``NAME`` is written with ``Program_q`` tokens and decoded back
    to program ``p`` named ``NAME``, so same-program tracks (POP909's MELODY, BRIDGE and PIANO,
    all piano) stay apart. Empty: tracks of one program are merged (miditok's one stream)."""
    return list(tokenizer.config.additional_params.get(TRACKS_KEY) or [])


def _name_key(name: str) -> str:
    return " ".join(str(name).split()).upper()


def learn_track_roles(scores: Iterable[Score], *, min_files: int = 2) -> list[dict]:
    """Track roles (``track_roles``) from a corpus: in every score, the named tracks that share
    their program with another track; a name that does so in at least ``min_files`` scores is a
    role. Of a program's roles the one with the most notes keeps the program (so an unnamed track
    of it, a user's plain piano prompt, reads as that role); the others get programs no track of
    the corpus uses, nearest first in the program's General MIDI family."""
    counts: dict[tuple[int, str], list[int]] = {}  # (program, NAME) -> [files, notes]
    used: set[int] = set()
    for score in scores:
        by_program: dict[int, list] = {}
        for track in score.tracks:
            if track.is_drum or track.note_num() == 0:
                continue
            used.add(int(track.program))
            by_program.setdefault(int(track.program), []).append(track)
        for program, tracks in by_program.items():
            if len(tracks) < 2:
                continue
            for name in {_name_key(t.name) for t in tracks if t.name.strip()}:
                entry = counts.setdefault((program, name), [0, 0])
                entry[0] += 1
                entry[1] += sum(t.note_num() for t in tracks if _name_key(t.name) == name)
    roles: list[dict] = []
    taken = set(used)
    for program in sorted({p for p, _ in counts}):
        names = sorted(((n, c) for (p, n), c in counts.items() if p == program and c[0] >= min_files),
                       key=lambda x: (-x[1][1], x[0]))
        if len(names) < 2:
            continue
        family = list(range(program // 8 * 8, program // 8 * 8 + 8))
        order = sorted(family, key=lambda q: abs(q - program)) + list(range(128))
        free = [q for q in dict.fromkeys(order) if q not in taken]  # nearest in the family first, each once
        for k, (name, _) in enumerate(names):
            if k == 0:
                q = program
            elif free:
                q = free.pop(0)
                taken.add(q)
            else:
                break  # no program left to write it with: it merges, as before
            roles.append({"program": program, "name": name, "token_program": q})
    return roles


def _role_maps(tokenizer: MusicTokenizer) -> tuple[dict, dict]:
    roles = track_roles(tokenizer)
    to_token = {(r["program"], r["name"]): r["token_program"] for r in roles}
    back = {r["token_program"]: (r["program"], r["name"]) for r in roles}
    return to_token, back


def restore_tracks(tokenizer: MusicTokenizer, score: Score) -> Score:
    """A decoded ``score`` with its tracks given back the programs and names of the tokenizer's
    track roles (``track_roles``; in place; nothing changes without roles). Tracks stay apart."""
    _, back = _role_maps(tokenizer)
    if not back:
        return score
    for track in score.tracks:
        if not track.is_drum and int(track.program) in back:
            track.program, track.name = back[int(track.program)][0], back[int(track.program)][1]
    return score


def assumed_metre(tokenizer: MusicTokenizer, score: Score) -> str | None:
    """What the tokenizer assumes of ``score``'s metre (``METRE_KEY`` on): a file written in 1/4 (a
    sequencer's "one beat a bar", as 593 of the 808 POP909 files here write, 524 of them throughout,
    the others among 4/4 or 2/4 bars) for at least half of its length (a notated 1/4 bar, as 38 of
    ASAP's scores have for a pickup or a short bar, is not a metre) is read in
    bars of the beats' own grouping, 4 (or 3 where its harmony changes every third beat), from the
    beat where the harmony changes most often (on POP909's annotated downbeats this finds the
    bar's first beat in about half of the files, against a quarter by chance); ``"4/4"`` or ``"3/4"``, None when nothing is assumed."""
    found = _regrouped(tokenizer, score)
    return None if found is None else f"{found[0]}/4"


def _regrouped(tokenizer: MusicTokenizer, score: Score) -> tuple[int, int] | None:
    """``(beats a bar, beat of the first downbeat)`` for a 1/4 file under ``METRE_KEY``, else None."""
    if not tokenizer.config.additional_params.get(METRE_KEY) or len(score.time_signatures) == 0:
        return None
    ts = score.time_signatures.numpy()
    # 1/4 throughout, or 1/4 bars among 2/4 and 4/4 ones (a sequencer's grid, not a notated metre),
    # 1/4 for at least half of the music: a score's notated 1/4 bar (a pickup, a bar of rest) is kept
    if not (np.any(ts["numerator"] == 1) and np.all(ts["denominator"] == 4) and np.all(np.isin(ts["numerator"], (1, 2, 4)))):
        return None
    end = max(int(score.end()), 1)
    order = np.argsort(ts["time"], kind="stable")
    times, nums = ts["time"][order].astype(np.int64), ts["numerator"][order]
    spans = np.diff(np.r_[np.minimum(times, end), end])
    if spans[nums == 1].sum() < 0.5 * end:
        return None
    tpq = int(score.ticks_per_quarter)
    notes = [t.notes.numpy() for t in score.tracks if not t.is_drum and t.note_num() > 0]
    if not notes:
        return None
    start = np.concatenate([n["time"] for n in notes]).astype(np.int64) // tpq
    end = np.maximum((np.concatenate([n["time"] + n["duration"] for n in notes]).astype(np.int64)) // tpq, start + 1)
    pitch = np.concatenate([n["pitch"] for n in notes]).astype(np.int64) % 12
    beats = int(end.max()) + 1
    if beats < 16:
        return 4, 0
    # the pitch classes sounding in every beat; a bar starts where the harmony changes most
    length = end - start
    rows = np.repeat(start, length) + (np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length))
    chroma = np.zeros((beats, 12))
    np.add.at(chroma, (rows, np.repeat(pitch, length)), 1.0)
    chroma /= np.maximum(np.linalg.norm(chroma, axis=1, keepdims=True), 1e-9)
    change = np.r_[0.0, 1.0 - (chroma[1:] * chroma[:-1]).sum(axis=1)]
    best = {}
    for group in (4, 3):
        means = [change[phase::group].mean() for phase in range(group)]
        best[group] = (max(means) / max(change.mean(), 1e-9), int(np.argmax(means)))
    group = 3 if best[3][0] > 1.15 * best[4][0] else 4
    return group, best[group][1]


def _with_options(tokenizer: MusicTokenizer, score: Score) -> Score:
    """``score`` (a ScoreTick) as the tokenizer's options read it: tracks of its roles written
    with their role's program, a 1/4 file in the bars of its beats (``assumed_metre``). A copy
    when anything changes; the caller's score is never modified."""
    to_token, _ = _role_maps(tokenizer)
    regroup = _regrouped(tokenizer, score)
    renamed = [i for i, t in enumerate(score.tracks)
               if to_token and not t.is_drum and (int(t.program), _name_key(t.name)) in to_token]
    if not renamed and regroup is None:
        return score
    score = score.copy()
    for i in renamed:
        track = score.tracks[i]
        track.program = to_token[(int(track.program), _name_key(track.name))]
    if regroup is not None:
        group, phase = regroup
        tpq = int(score.ticks_per_quarter)
        times = [0, phase * tpq] if phase else [0]
        nums = [phase, group] if phase else [group]  # the beats before the first downbeat: one short bar
        score.time_signatures = symusic.TimeSignature.from_numpy(
            time=np.asarray(times, np.int32), numerator=np.asarray(nums, np.uint8),
            denominator=np.asarray([4] * len(times), np.uint8))
    return score


def set_options(tokenizer: MusicTokenizer, *, roles: list[dict] | None = None, metre_from_beats: bool = False
                ) -> MusicTokenizer:
    """Give ``tokenizer`` (in place; returned) partita's options: track ``roles``
    (``learn_track_roles``) and ``metre_from_beats`` (``assumed_metre``). They are saved with it."""
    params = tokenizer.config.additional_params
    params.pop(TRACKS_KEY, None)
    params.pop(METRE_KEY, None)
    if roles:
        bad = [r for r in roles if not (0 <= int(r["program"]) < 128 and 0 <= int(r["token_program"]) < 128)]
        if bad or len({r["token_program"] for r in roles}) != len(roles):
            raise TokenizerError(f"track roles need distinct programs 0-127, got {roles}")
        params[TRACKS_KEY] = [{"program": int(r["program"]), "name": _name_key(r["name"]),
                               "token_program": int(r["token_program"])} for r in roles]
    if metre_from_beats:
        params[METRE_KEY] = True
    return tokenizer


def suggest_vocab_size(base_size: int, notes: int, *, tokens_per_note: float = 4.0, per_token: int = 10000,
                       most: int = 20000) -> tuple[int, str]:
    """A BPE vocabulary for a corpus of ``notes`` notes, with the reason in words: one learned token
    for every ``per_token`` base tokens of it (about ``tokens_per_note`` a note in REMI), at least
    100 and at most ``most`` in all. A rarer merge is too rare to learn in a short run: on POP909
    (~4.4M base tokens) one per 1,000 gave 4,917 tokens, and a 10-minute CPU run of the small model
    stayed at 11.1 bits/token, above the 5-gram's 9.7 on those tokens (RESULTS.md, "Training in a
    budget"); one per 10,000 gives 917."""
    base_tokens = int(notes * tokens_per_note)
    merges = int(min(max(round(base_tokens / per_token, -2), 100), max(most - base_size, 100)))
    why = (f"{base_size:,} base tokens + {merges:,} merges: one per ~{per_token:,} of the ~{base_tokens:,} base tokens "
           f"of {notes:,} notes ({tokens_per_note:g} a note)")
    return base_size + merges, why


# --------------------------------------------------------------------------- training


class _TrainingIterator:
    """Yields, per score, the byte strings miditok's trainer reads (one per bar or beat chunk).

    It mirrors ``miditok.TokTrainingIterator.load_file`` but takes in-memory scores and uses
    partita's canonical form, so the merges learned are those ``encode`` will apply.
    """

    def __init__(self, tokenizer: MusicTokenizer, scores: Iterable[Score]):
        self.tokenizer = tokenizer
        self.scores = scores
        self.used = 0
        self.failed: list[str] = []

    def __len__(self) -> int:
        try:
            return len(self.scores)  # type: ignore[arg-type]
        except TypeError:
            return 0  # only used for the progress bar

    def __iter__(self) -> Iterator[list[str]]:
        tok = self.tokenizer
        split = tok.config.encode_ids_split
        for score in self.scores:
            try:
                seq = _tokseq(tok, score, encode_ids=False)
            except Exception as e:
                self.failed.append(f"{type(e).__name__}: {e}")
                continue
            chunks = seq.split_per_bars() if split == "bar" else seq.split_per_beats() if split == "beat" else [seq]
            out = [tok._ids_to_bytes(c.ids, as_one_str=True) for c in chunks if len(c) > 0]
            if out:
                self.used += 1
                yield out


def train_tokenizer(
    scores: Iterable[Score],
    vocab_size: int = 10000,
    model: str = "BPE",
    base: MusicTokenizer | None = None,
    **trainer_kwargs: Any,
) -> MusicTokenizer:
    """A copy of ``base`` (default: ``make_tokenizer()``) with BPE or Unigram merges learned.

    ``scores`` may be any iterable (a generator is read once, encoding each score on the fly).
    ``vocab_size`` counts base tokens plus merges and must exceed the base vocabulary.
    BPE training is deterministic (same scores, same vocabulary and ids); Hugging Face's
    Unigram training is not guaranteed to be, so train a Unigram tokenizer once and save it.
    Scores that cannot be tokenized are skipped with a warning.
    """
    if model not in ("BPE", "Unigram"):
        raise TokenizerError(f"model must be 'BPE' or 'Unigram', not {model!r}")
    tok = make_tokenizer() if base is None else copy.deepcopy(check_tokenizer(base))
    n_base = len(tok.vocab)
    if vocab_size <= n_base:
        raise TokenizerError(
            f"vocab_size ({vocab_size}) must be larger than the {n_base} base tokens of this tokenizer"
        )
    iterator = _TrainingIterator(tok, scores)
    tok.train(vocab_size=vocab_size, model=model, iterator=iterator, **trainer_kwargs)
    if iterator.failed:
        warnings.warn(
            f"train_tokenizer: skipped {len(iterator.failed)} score(s) that could not be tokenized "
            f"(first: {iterator.failed[0]})",
            stacklevel=2,
        )
    if iterator.used == 0:
        raise TokenizerError("train_tokenizer: no score gave any token to train on")
    return tok


# --------------------------------------------------------------------------- per-token timing


def _timing_positions(table: TokenTables, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bar/Position tokenizers (REMI): count Bar tokens, carry the last Position value."""
    n = len(base)
    is_bar = table.is_bar[base]
    bar = np.maximum(np.cumsum(is_bar) - 1, 0)
    pos_val = table.position[base]
    mark = is_bar | (pos_val >= 0)
    last = np.maximum.accumulate(np.where(mark, np.arange(n), -1))
    pos = np.where(last >= 0, np.where(is_bar, 0, pos_val)[np.maximum(last, 0)], 0)
    return bar, pos


def _timing_shifts(tokenizer: MusicTokenizer, table: TokenTables, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time-shift tokenizers (TSD, MIDILike, Structured): accumulate ticks, count bars per metre."""
    n = len(base)
    bar = np.zeros(n, np.int64)
    pos = np.zeros(n, np.int64)
    tpq = tokenizer.time_division
    res = tokenizer.config.max_num_pos_per_beat
    ts = table.ts[base]
    cuts = np.flatnonzero(ts[:, 1] > 0)
    bounds = [0, *cuts.tolist(), n]
    tick = ts_tick = bar_at_ts = 0
    num, den = 4, 4
    for a, b in zip(bounds[:-1], bounds[1:]):
        if a == b:
            continue
        if ts[a, 1] > 0:  # a TimeSig token starts this segment: a new metre from here
            ticks_per_bar = num * tpq * 4 // den
            bar_at_ts += -(-(tick - ts_tick) // ticks_per_bar)  # a change starts a new bar
            ts_tick = tick
            num, den = int(ts[a, 0]), int(ts[a, 1])
        tpb = tokenizer._tpb_per_ts.get(den, tpq)
        ticks_per_bar = max(num * tpq * 4 // den, 1)
        ticks_per_pos = max(tpb // res, 1)
        shifts = table.shift.get(tpb, table.shift[next(iter(table.shift))])[base[a:b]]
        start = tick + np.cumsum(shifts) - shifts
        rel = start - ts_tick
        bar[a:b] = bar_at_ts + rel // ticks_per_bar
        pos[a:b] = (rel % ticks_per_bar) // ticks_per_pos
        tick += int(shifts.sum())
    return bar, pos


def token_timing(tokenizer: MusicTokenizer, ids: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(bar_index, position_in_bar)``, two int32 arrays as long as ``ids``.

    For each token, the bar it falls in (0 for the first bar) and its position in that bar in
    the tokenizer's position units (REMI: the value of the Position token in force, i.e. steps of
    1/``max(beat_res)`` of a beat; time-shift tokenizers: the same units computed from the time
    shifts). A Bar token starts its bar at position 0; tokens before the first Bar (BOS) are in
    bar 0 at position 0. A merged (BPE/Unigram) token gets the values of its first base token.
    Tokenizers with Rest tokens are refused (rests move time without Bar tokens).
    """
    check_tokenizer(tokenizer)
    if tokenizer.config.use_rests:
        raise TokenizerError("token_timing does not support Rest tokens: make the tokenizer with use_rests=False")
    table = token_tables(tokenizer)
    ids = np.asarray(ids if not hasattr(ids, "numpy") else ids.numpy()).astype(np.int64).ravel()
    if ids.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    if ids.min() < 0 or ids.max() >= len(table.lengths):
        raise TokenizerError(f"token ids must be in [0, {len(table.lengths)}), got {ids.min()}..{ids.max()}")
    base, first = table.expand(ids)
    if table.has_position:
        bar, pos = _timing_positions(table, base)
    elif table.has_shift:
        bar, pos = _timing_shifts(tokenizer, table, base)
    else:
        raise TokenizerError(f"{type(tokenizer).__name__} has neither Position nor TimeShift tokens")
    # A token made of no base token (never the case for music) takes the previous value.
    first = np.minimum(first, max(len(base) - 1, 0))
    return bar[first].astype(np.int32), pos[first].astype(np.int32)


# --------------------------------------------------------------------------- corpus streams


def _auto_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _encode_piece(tokenizer: MusicTokenizer, score: Any, bos_eos: bool, dtype: np.dtype) -> tuple | str:
    """(ids, bars, positions, the metre assumed or None) of one piece, the arrays in the dtypes
    they are stored in, or the one-line reason it cannot be encoded. (Cast where they are made: half the bytes to send back.)"""
    try:
        if callable(score) and not isinstance(score, _SCORE_TYPES):
            score = score()
        if not isinstance(score, _SCORE_TYPES):
            score = load(score)
        if score.note_num() == 0:
            raise TokenizerError("the score has no notes")
        ids = encode(tokenizer, score, bos_eos=bos_eos)
        if len(ids) - (2 if bos_eos else 0) <= 0:
            raise TokenizerError("no token (no note the tokenizer can represent)")
        bars, positions = token_timing(tokenizer, ids)
        metre = assumed_metre(tokenizer, score if isinstance(score, symusic.core.ScoreTick) else score.to("tick"))
    except Exception as e:
        return f"{type(e).__name__}: {e}".splitlines()[0]
    positions = np.clip(positions, 0, np.iinfo(_POSITIONS_DTYPE).max)
    return ids.astype(dtype), bars.astype(_BARS_DTYPE), positions.astype(_POSITIONS_DTYPE), metre


_WORKER: dict = {}  # the tokenizer of a worker process, set once by _init_encoder


def _init_encoder(tokenizer: MusicTokenizer, bos_eos: bool, dtype: np.dtype) -> None:
    _WORKER.update(tokenizer=tokenizer, bos_eos=bos_eos, dtype=dtype)


def _encode_task(item: tuple) -> tuple | str:
    return _encode_piece(_WORKER["tokenizer"], item[1], _WORKER["bos_eos"], _WORKER["dtype"])


def _crashed(item: tuple) -> str:
    return "crashed: the tokenizer process died on this piece"


def _encode_items(items, tokenizer, bos_eos, dtype, workers, seen, progress):
    """Yield (piece_id, (ids, bars, positions) or reason) in the order of ``items``.

    In this process, a piece whose id is already written is not encoded again; in the pool every
    piece is encoded and the caller drops duplicates as they come, so both write the same bytes.
    """
    if workers is None:
        total = len(items) if hasattr(items, "__len__") else 0
        for done, (piece_id, score) in enumerate(items, 1):
            piece_id = str(piece_id)
            yield piece_id, None if piece_id in seen else _encode_piece(tokenizer, score, bos_eos, dtype)
            if progress:
                progress(done, max(total, done))
        return
    from partita.data.pool import isolated_map

    items = [(str(piece_id), score) for piece_id, score in items]
    token_tables(tokenizer)  # built once here, inherited by every worker rather than built in each
    results = isolated_map(
        _encode_task,
        items,
        workers=workers,
        on_crash=_crashed,
        initializer=_init_encoder,
        initargs=(tokenizer, bos_eos, dtype),
        ordered=True,
        max_batch=4,
    )
    for done, (_, (piece_id, _score), encoded) in enumerate(results, 1):
        yield piece_id, encoded
        if progress:
            progress(done, len(items))


def write_token_streams(
    items: Iterable[tuple[str, Score | MidiSource]],
    tokenizer: MusicTokenizer,
    out_dir: PathLike,
    dtype: Any = None,
    *,
    bos_eos: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TokenStreams:
    """Encode ``(piece_id, score)`` pairs into memory-mappable arrays under ``out_dir``.

    A score is a ``Score``, a MIDI path or bytes, or a picklable zero-argument callable that
    returns a ``Score`` (``Corpus.score_ref(i)``: the piece is built where it is encoded).
    ``workers=None`` encodes in this process; ``workers=N`` in N worker processes of partita's
    crash-isolated pool (``partita.data.pool``), with the same output byte for byte (results are
    written in the order of ``items``; a piece whose process crashes is skipped with its reason).
    ``progress(done, total)`` is called after each piece.

    Writes ``tokens.bin`` (all ids, concatenated), ``bars.bin`` and ``positions.bin`` (same
    length, from ``token_timing``), ``offsets.npy`` (``n_pieces + 1`` int64; piece ``i`` is
    ``tokens[offsets[i]:offsets[i+1]]``), ``piece_ids.json``, ``tokenizer.json`` and
    ``streams.json`` (dtypes, vocab size, tokenizer hash, skipped pieces). ``dtype`` defaults to
    uint16 when the vocabulary fits, else uint32. ``bos_eos`` frames every piece with BOS ... EOS
    (what a language model trained on the concatenation wants).

    Everything is written to a temporary folder beside ``out_dir`` and renamed into place at
    the end, so an interrupted run leaves no half-written streams. A piece that fails to encode
    (or gives no token) is skipped; the ``(piece_id, reason)`` pairs are in ``.skipped``.
    """
    check_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
    vocab_size = len(tokenizer)
    dtype = _auto_dtype(vocab_size) if dtype is None else np.dtype(dtype).newbyteorder("<")
    if dtype.kind not in "ui" or np.iinfo(dtype).max < vocab_size - 1:
        raise TokenizerError(f"dtype {dtype} cannot hold token ids up to {vocab_size - 1}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        offsets, piece_ids, skipped, assumed = [0], [], [], {}
        seen: set[str] = set()
        with open(tmp / "tokens.bin", "wb") as ft, open(tmp / "bars.bin", "wb") as fb, open(
            tmp / "positions.bin", "wb"
        ) as fp:
            for piece_id, encoded in _encode_items(items, tokenizer, bos_eos, dtype, workers, seen, progress):
                if piece_id in seen:
                    skipped.append((piece_id, "duplicate piece id"))
                    continue
                if isinstance(encoded, str):
                    skipped.append((piece_id, encoded))
                    continue
                ids, bars, positions, metre = encoded
                if metre is not None:
                    assumed[metre] = assumed.get(metre, 0) + 1
                seen.add(piece_id)
                ft.write(ids.tobytes())
                fb.write(bars.tobytes())
                fp.write(positions.tobytes())
                piece_ids.append(piece_id)
                offsets.append(offsets[-1] + len(ids))
        np.save(tmp / "offsets.npy", np.asarray(offsets, np.int64))
        (tmp / "piece_ids.json").write_text(json.dumps(piece_ids, ensure_ascii=False))
        save_tokenizer(tokenizer, tmp / "tokenizer.json")
        meta = {
            "format": _STREAMS_FORMAT,
            "version": _STREAMS_VERSION,
            "dtype": dtype.str,
            "bars_dtype": _BARS_DTYPE.str,
            "positions_dtype": _POSITIONS_DTYPE.str,
            "n_pieces": len(piece_ids),
            "n_tokens": offsets[-1],
            "vocab_size": vocab_size,
            "tokenization": type(tokenizer).__name__,
            "trained": tokenizer.is_trained,
            "bos_eos": bos_eos,
            "tokenizer": "tokenizer.json",
            "tokenizer_sha256": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest(),
            "skipped": [list(s) for s in skipped],
            "metre_assumed": {f"1/4 read as {m}": n for m, n in sorted(assumed.items())},
        }
        (tmp / "streams.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        if out_dir.exists():  # overwrite: swap the old folder out, then delete it
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenStreams(out_dir)


class TokenStreams:
    """Read-only view of a folder written by ``write_token_streams`` (numpy memmaps).

    ``len(streams)`` pieces; ``piece(i)``, ``bars(i)``, ``positions(i)`` are array views;
    ``ids`` the piece ids; ``tokens``/``all_bars``/``all_positions`` the whole concatenated
    arrays; ``offsets``; ``skipped`` the ``(piece_id, reason)`` pairs left out when writing.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        meta_path = self.path / "streams.json"
        if not meta_path.is_file():
            raise TokenizerError(f"{self.path}: not a token streams folder (no streams.json)")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{meta_path}: unreadable ({e})") from None
        if self.meta.get("format") != _STREAMS_FORMAT:
            raise TokenizerError(f"{meta_path}: not a partita token streams file")
        try:
            self.offsets = np.load(self.path / "offsets.npy")
            self.ids: list[str] = json.loads((self.path / "piece_ids.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{self.path}: damaged token streams folder ({e})") from None
        n = int(self.meta["n_tokens"])
        if len(self.offsets) != len(self.ids) + 1 or int(self.offsets[-1]) != n:
            raise TokenizerError(f"{self.path}: damaged token streams folder (offsets do not match)")
        self.tokens = self._open("tokens.bin", self.meta["dtype"], n)
        self.all_bars = self._open("bars.bin", self.meta["bars_dtype"], n)
        self.all_positions = self._open("positions.bin", self.meta["positions_dtype"], n)
        self.skipped = [tuple(s) for s in self.meta.get("skipped", [])]
        #: {"1/4 read as 4/4": pieces, ...}: the metres the tokenizer assumed (``assumed_metre``)
        self.metre_assumed: dict[str, int] = dict(self.meta.get("metre_assumed") or {})
        self._index = {pid: i for i, pid in enumerate(self.ids)}

    def _open(self, name: str, dtype: str, n: int) -> np.ndarray:
        path = self.path / name
        dtype = np.dtype(dtype)
        size = path.stat().st_size if path.is_file() else -1
        if size != n * dtype.itemsize:
            raise TokenizerError(f"{path}: expected {n * dtype.itemsize} bytes, found {max(size, 0)}")
        if n == 0:
            return np.zeros(0, dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(n,))

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.ids)

    def _slice(self, i: int) -> slice:
        if not -len(self) <= i < len(self):
            raise IndexError(f"piece {i} out of range ({len(self)} pieces)")
        i %= len(self)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def piece(self, i: int) -> np.ndarray:
        return self.tokens[self._slice(i)]

    def bars(self, i: int) -> np.ndarray:
        return self.all_bars[self._slice(i)]

    def positions(self, i: int) -> np.ndarray:
        return self.all_positions[self._slice(i)]

    def index(self, piece_id: str) -> int:
        """The position of ``piece_id`` in the streams."""
        try:
            return self._index[str(piece_id)]
        except KeyError:
            raise KeyError(f"no piece {piece_id!r} in {self.path}") from None

    def tokenizer(self) -> MusicTokenizer:
        """The tokenizer these streams were written with (its saved copy)."""
        return load_tokenizer(self.path / self.meta.get("tokenizer", "tokenizer.json"))

    def __repr__(self) -> str:
        return f"TokenStreams({str(self.path)!r}: {len(self)} pieces, {int(self.meta['n_tokens'])} tokens)"


def token_streams(corpus) -> "TokenStreams":
    """The corpus's token streams; a missing tokenisation is a one-line error naming the command
    that makes it (training and evaluation never change a corpus)."""
    path = corpus.path / "tokens"
    if not (path / "streams.json").exists():
        raise PartitaError(f"{corpus.path} has no token streams yet: run 'partita data tokenize {corpus.path}' first "
                           f"(after 'partita data tokenizer train {corpus.path}' for a BPE vocabulary)")
    return TokenStreams(path)

