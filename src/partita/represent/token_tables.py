"""Per-tokenizer lookup tables: what every (possibly merged) token id means, as numpy arrays.

Sampling, timing, repair and copy checks read a token sequence thousands of times per second;
asking miditok what each id means would cost a Python call per token. ``token_tables(tokenizer)``
builds the arrays once per tokenizer and shares them: the base tokens of every id, which are
special, bars, positions, metres, time shifts; the token grammar (which type may follow which);
the programs each id writes; and the effect of each id on (bar, position) for incremental timing.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
from miditok import MusicTokenizer

__all__ = ["Grammar", "PositionSteps", "ProgramTable", "TokenTables", "token_tables"]


class TokenTables:
    """What partita needs to know about every id of a tokenizer, as arrays.

    For each id: the base ids it stands for (a merged BPE/Unigram id stands for several; CSR
    layout: ``flat[starts[i] : starts[i] + lengths[i]]``), and for each base id what it does:
    ``base_special``, ``is_bar``, ``position`` (the value of a Position token, else -1), ``ts``
    (numerator, denominator of a TimeSig token), ``shift`` (ticks of a TimeShift token, per
    ticks-per-beat). ``special`` marks the ids that are only special tokens. Built once per
    tokenizer by ``token_tables`` and shared; the derived tables (``grammar``, ``programs``,
    ``steps``) are built on first use; ``memo`` holds tables other modules derive from these.
    """

    def __init__(self, tokenizer: MusicTokenizer):
        self._tokenizer = weakref.ref(tokenizer)
        self._memo: dict[str, Any] = {}
        base_vocab = tokenizer.vocab
        self.key = (len(tokenizer), tokenizer.is_trained, id(tokenizer._model))
        n_base = len(base_vocab)
        if tokenizer.is_trained:
            model = tokenizer._model
            learned = tokenizer._vocab_learned_bytes_to_tokens
            seqs = []
            for i in range(len(tokenizer)):
                toks = learned.get(model.id_to_token(i), [])
                seqs.append([base_vocab[t] for t in toks if t in base_vocab])
        else:
            seqs = [[i] for i in range(n_base)]
        self.lengths = np.array([len(s) for s in seqs], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.flat = np.array([b for s in seqs for b in s], np.int64)
        # Facts about base tokens.
        types = [""] * n_base
        values = [""] * n_base
        for tok, i in base_vocab.items():
            types[i], _, values[i] = tok.partition("_")
        special = {t.split("_")[0] for t in tokenizer.special_tokens}
        self.base_special = np.array([t in special for t in types], bool)
        self.special = np.array(
            [len(s) > 0 and bool(self.base_special[s].all()) for s in seqs], bool
        ) | (self.lengths == 0)
        self.is_bar = np.array([t == "Bar" and v != "End" for t, v in zip(types, values)], bool)
        self.position = np.array([int(v) if t == "Position" else -1 for t, v in zip(types, values)], np.int64)
        self.ts = np.zeros((n_base, 2), np.int64)  # numerator, denominator of TimeSig tokens
        for i, (t, v) in enumerate(zip(types, values)):
            if t == "TimeSig":
                self.ts[i] = [int(x) for x in v.split("/")]
        # Ticks each base token moves time by, per ticks-per-beat value (time-shift tokenizers).
        self.shift: dict[int, np.ndarray] = {}
        for tpb, table in tokenizer._tpb_tokens_to_ticks.items():
            arr = np.zeros(n_base, np.int64)
            for i, (t, v) in enumerate(zip(types, values)):
                if t == "TimeShift" and v in table:
                    arr[i] = table[v]
            self.shift[tpb] = arr
        self.has_shift = any(t == "TimeShift" for t in types)
        self.has_position = any(t == "Position" for t in types)

    def expand(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base ids of ``ids`` and, for each id, the index of its first base token."""
        lengths = self.lengths[ids]
        first = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        idx = np.repeat(self.starts[ids] - first, lengths) + np.arange(total)
        return self.flat[idx], first

    # ------------------------------------------------------------------ derived tables

    def memo(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per tokenizer under ``name`` (tables other modules derive from these)."""
        if name not in self._memo:
            self._memo[name] = build()
        return self._memo[name]

    def _tokenizer_alive(self) -> MusicTokenizer:
        tok = self._tokenizer()
        if tok is None:
            raise RuntimeError("the tokenizer of these tables no longer exists")
        return tok

    @functools.cached_property
    def grammar(self) -> "Grammar":
        return Grammar(self._tokenizer_alive(), self)

    @functools.cached_property
    def programs(self) -> "ProgramTable":
        return ProgramTable(self)

    @functools.cached_property
    def steps(self) -> "PositionSteps":
        return PositionSteps(self)


class Grammar:
    """Which base token types may follow which (miditok's ``tokens_types_graph``), and which types
    leave a note unfinished; ``strings`` and ``types`` of every base id."""

    NOTE_PARTS = {"Program", "Pitch", "PitchDrum", "NoteOn", "DrumOn", "Velocity", "PitchIntervalTime",
                  "PitchIntervalChord"}
    HEADS = {"Program", "Pitch", "PitchDrum", "NoteOn", "DrumOn", "PitchIntervalTime", "PitchIntervalChord"}
    TIME = {"Bar", "Position", "TimeShift", "Rest", "TimeSig", "Tempo"}
    REPLACE = {"Position", "Tempo", "TimeSig"}  # a second one in a row replaces the first

    def __init__(self, tokenizer: MusicTokenizer, table: TokenTables):
        special = {t.split("_")[0] for t in tokenizer.special_tokens}
        graph = {k: {t.split("_")[0] for t in v} - special
                 for k, v in tokenizer.tokens_types_graph.items() if k not in special}
        self.graph = graph
        # a note part after which only note parts may come: the note is not finished
        self.dangling = {t for t, nxt in graph.items() if t in self.NOTE_PARTS and not (nxt & self.TIME)}
        preds: dict[str, set] = {}
        for t, nxt in graph.items():
            for u in nxt:
                preds.setdefault(u, set()).add(t)
        # types that only continue an unfinished note (Velocity, Duration): never first
        self.continuation = {t for t, p in preds.items() if p and p <= self.dangling and t not in self.HEADS}
        inv = {i: s for s, i in tokenizer.vocab.items()}
        self.strings = [inv.get(i, "") for i in range(len(table.base_special))]
        self.types = [s.split("_")[0] for s in self.strings]

    def fits(self, prev: Optional[str], typ: str) -> bool:
        if prev is None:
            return typ not in self.continuation
        return typ in self.graph.get(prev, ())


class ProgramTable:
    """Per id: the programs its base tokens write (``Program_X``), for masking instruments."""

    def __init__(self, table: TokenTables):
        self.table = table
        base_prog = np.full(len(table.base_special), -2, np.int64)  # -2: not a Program token
        for b, s in enumerate(table.grammar.strings):
            if s.startswith("Program_"):
                base_prog[b] = int(s.split("_", 1)[1])
        self.base_program = base_prog
        hits: dict[int, list[int]] = {}
        for i in range(len(table.lengths)):
            for b in table.flat[table.starts[i] : table.starts[i] + table.lengths[i]]:
                if base_prog[b] != -2:
                    hits.setdefault(int(base_prog[b]), []).append(i)
        self.ids_of = {p: np.unique(np.array(v, np.int64)) for p, v in hits.items()}  # program -> ids
        self.n = len(table.lengths)

    def programs_in(self, ids: np.ndarray) -> set:
        """The programs of the notes in ``ids``."""
        base, _ = self.table.expand(np.asarray(ids, np.int64))
        found = self.base_program[base]
        return set(found[found != -2].tolist())

    def banned(self, allowed: Optional[Sequence[int]]) -> np.ndarray:
        """Bool ``[V]``: ids that write a note of a program not in ``allowed`` (None: nothing)."""
        out = np.zeros(self.n, bool)
        if allowed is None or not self.ids_of:
            return out
        for p, ids in self.ids_of.items():
            if p not in allowed:
                out[ids] = True
        return out  # (an id that writes an allowed program and another one is banned)


class PositionSteps:
    """Per id of a Bar/Position tokenizer: what its base tokens do to (bars seen, position)."""

    def __init__(self, table: TokenTables):
        n = len(table.lengths)
        self.first_bar = np.zeros(n, bool)  # the first base token is a Bar
        self.first_pos = np.full(n, -1, np.int64)  # ... a Position (its value)
        self.n_bars = np.zeros(n, np.int64)  # Bar base tokens in the id
        self.last = np.full(n, -1, np.int64)  # value after the id: 0 (Bar), Position value, -1 (none)
        for i in range(n):
            base = table.flat[table.starts[i] : table.starts[i] + table.lengths[i]]
            if len(base) == 0:
                continue
            self.first_bar[i] = table.is_bar[base[0]]
            self.first_pos[i] = table.position[base[0]]
            self.n_bars[i] = int(table.is_bar[base].sum())
            for b in base[::-1]:
                if table.is_bar[b]:
                    self.last[i] = 0
                    break
                if table.position[b] >= 0:
                    self.last[i] = table.position[b]
                    break


_TABLES: dict[int, tuple[weakref.ref, TokenTables]] = {}
_LOCK = threading.Lock()


def token_tables(tokenizer: MusicTokenizer) -> TokenTables:
    """The ``TokenTables`` of ``tokenizer``, built once and shared while the tokenizer lives
    (rebuilt if its vocabulary changed, e.g. after training merges). Kept here, not on the
    tokenizer object."""
    key = (len(tokenizer), tokenizer.is_trained, id(tokenizer._model))
    with _LOCK:
        held = _TABLES.get(id(tokenizer))
        if held is not None and held[0]() is tokenizer and held[1].key == key:
            return held[1]
    tables = TokenTables(tokenizer)
    ident = id(tokenizer)
    with _LOCK:
        _TABLES[ident] = (weakref.ref(tokenizer, lambda _ref, ident=ident: _TABLES.pop(ident, None)), tables)
    return tables
