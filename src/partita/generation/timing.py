"""Bar and position-in-bar of each new token, one token at a time (the bar embeddings' inputs)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from partita.represent.token_tables import token_tables
from partita.represent.tokens import TokenizerError, token_timing

__all__ = ["IncrementalTiming"]


class IncrementalTiming:
    """``token_timing`` one token at a time for a batch of rows: ``push(ids)`` gives the bar index
    and position in bar of each row's next token, equal to ``token_timing`` on the whole sequence.

    ``start(prompts)`` reads the prompts (one per row) and returns their ``token_timing``. The
    state is O(1) per row: (bars seen, last position) for Bar/Position tokenizers (REMI),
    (tick, metre) for time-shift ones (TSD, MIDILike, Structured). A token made of no base token
    (never sampled: such ids count as special) takes the running values.
    """

    def __init__(self, tokenizer: Any):
        token_timing(tokenizer, np.zeros(0, np.int64))  # validates the tokenizer (no Rest tokens...)
        self.tokenizer = tokenizer
        self.table = table = token_tables(tokenizer)
        if table.has_position:
            self.kind = "position"
            self.pos_table = table.steps
        elif table.has_shift:
            self.kind = "shift"
            self.tpq = int(tokenizer.time_division)
            self.res = int(tokenizer.config.max_num_pos_per_beat)
            self.tpb_per_ts = dict(tokenizer._tpb_per_ts)
            self.default_shift = table.shift[next(iter(table.shift))]
        else:
            raise TokenizerError(f"{type(tokenizer).__name__} has neither Position nor TimeShift tokens")
        self.state: Any = None

    def _base(self, i: int) -> np.ndarray:
        t = self.table
        return t.flat[t.starts[i] : t.starts[i] + t.lengths[i]]

    def start(self, prompts: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        timings = [token_timing(self.tokenizer, p) for p in prompts]
        if self.kind == "position":
            t = self.table
            nb = np.zeros(len(prompts), np.int64)
            cp = np.zeros(len(prompts), np.int64)
            for r, p in enumerate(prompts):
                if len(p) == 0:
                    continue
                base, _ = t.expand(np.asarray(p, np.int64))
                is_bar = t.is_bar[base]
                nb[r] = int(is_bar.sum())
                marks = np.flatnonzero(is_bar | (t.position[base] >= 0))
                if len(marks):
                    m = marks[-1]
                    cp[r] = 0 if is_bar[m] else t.position[base[m]]
            self.state = [nb, cp]
        else:
            self.state = []
            for p in prompts:
                st = [0, 0, 0, 4, 4]  # tick, tick of the last metre change, bars before it, num, den
                for i in np.asarray(p, np.int64):
                    for b in self._base(int(i)):
                        self._shift_base(st, int(b))
                self.state.append(st)
        return timings

    def _shift_base(self, st: list, b: int) -> tuple[int, int]:
        """Bar and position of base token ``b`` (time-shift tokenizers); advances ``st``."""
        tick, ts_tick, bar_at_ts, num, den = st
        tpq = self.tpq
        ts = self.table.ts[b]
        if ts[1] > 0:  # a TimeSig token: a new metre from here (token_timing's segments)
            bar_at_ts += -(-(tick - ts_tick) // (num * tpq * 4 // den))
            ts_tick = tick
            num, den = int(ts[0]), int(ts[1])
        tpb = self.tpb_per_ts.get(den, tpq)
        ticks_per_bar = max(num * tpq * 4 // den, 1)
        ticks_per_pos = max(tpb // self.res, 1)
        rel = tick - ts_tick
        bar, pos = bar_at_ts + rel // ticks_per_bar, (rel % ticks_per_bar) // ticks_per_pos
        tick += int(self.table.shift.get(tpb, self.default_shift)[b])
        st[:] = [tick, ts_tick, bar_at_ts, num, den]
        return bar, pos

    def push(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Bar and position of each row's next token ``ids [B]``; advances every row."""
        ids = np.asarray(ids, np.int64).ravel()
        if self.kind == "position":
            nb, cp = self.state
            t = self.pos_table
            fb = t.first_bar[ids]
            bars = np.maximum(nb + fb - 1, 0)
            pos = np.where(fb, 0, np.where(t.first_pos[ids] >= 0, t.first_pos[ids], cp))
            last = t.last[ids]
            self.state = [nb + t.n_bars[ids], np.where(last >= 0, last, cp)]
            return bars, pos
        bars = np.zeros(len(ids), np.int64)
        pos = np.zeros(len(ids), np.int64)
        for r, i in enumerate(ids):
            st = self.state[r]
            base = self._base(int(i))
            if len(base) == 0:
                bars[r], pos[r] = self._shift_peek(st)
                continue
            for k, b in enumerate(base):
                bp = self._shift_base(st, int(b))
                if k == 0:
                    bars[r], pos[r] = bp
        return bars, pos

    def _shift_peek(self, st: list) -> tuple[int, int]:
        tick, ts_tick, bar_at_ts, num, den = st
        tpb = self.tpb_per_ts.get(den, self.tpq)
        ticks_per_bar = max(num * self.tpq * 4 // den, 1)
        rel = tick - ts_tick
        return bar_at_ts + rel // ticks_per_bar, (rel % ticks_per_bar) // max(tpb // self.res, 1)

    def select(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order)."""
        rows = list(rows)
        if self.kind == "position":
            self.state = [s[rows] for s in self.state]
        else:
            self.state = [self.state[r] for r in rows]
