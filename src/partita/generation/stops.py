"""When a sample stops: EOS, a number of tokens, new bars, new seconds, or a silence.

Each rule is an object with one ``check(batch, rows)`` that returns the rows that stop after
their newest token and where each one ends (``{row: length}``, label included); ``Stops`` runs
them in order (EOS, bars, tokens, then the music clock) and keeps their per-row state in step
with the batch when rows leave it.

* ``EosStop``: the model wrote EOS (kept at the end of the ids).
* ``BarStop``: before the first token of the (N+1)-th new bar (that token is not kept). New bars
  are counted with ``token_timing``'s bar index: a prompt with music ends in bar ``b``, whose rest
  may still be filled, and bars ``b+1 .. b+N`` are the new ones; without a prompt ``0 .. N-1``.
  An infilling prompt stops before its first token in the bar where the suffix starts.
* ``TokenStop``: after ``max_new_tokens`` (or the safety cap of a length in bars or seconds).
* ``ClockStop``: the music the sample wrote, decoded at checks (``SecondsClock``: the prompt's
  last bars and the new tokens, tempo changes included). With ``seconds=S`` the ids are cut at
  the shortest prefix whose last *onset* lies ``S`` seconds after the prompt's last onset (a
  binary search over the tokens since the previous check; held notes do not count). With
  ``max_pause=P`` a sample whose new music falls silent (no note sounding) for more than ``P``
  seconds is cut before the silence (stop "pause"): the model wandered off, and a user asked for
  music, not rests. Checks are spaced by the rate so far (``seconds_check_gap``): half way to
  where the seconds per token say ``S`` is reached, 1 to 4 times ``SECONDS_CHECK_EVERY`` tokens
  later.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from partita.generation.repair import decode_safe, decode_tokens, ids_array, repair_tokens
from partita.represent.token_tables import token_tables

__all__ = ["BarStop", "CLOCK_BARS", "ClockStop", "EosStop", "SECONDS_CHECK_EVERY", "SecondsClock", "Stops",
           "TokenStop", "pauses", "seconds_check_gap"]

#: With ``seconds=`` (or ``max_pause``), the samples are decoded and measured 1 to 4 times this
#: many tokens apart (``seconds_check_gap``).
SECONDS_CHECK_EVERY = 16


#: Bars of a prompt's end that ``SecondsClock`` decodes with the new tokens (at least one note).
CLOCK_BARS = 4


class SecondsClock:
    """How many seconds of music a row has, decoding only the prompt's last bars and the new tokens.

    Decoding the whole sequence at every length check made a 30 s request after an hour-long file
    spend most of its time in miditok (41 decodes of 104,000 tokens). For Bar/Position tokenizers
    (REMI) the clock decodes from ``anchor``, the start of a bar at least ``CLOCK_BARS`` bars (and
    one note) before the prompt's end, with the metre and tempo in force there put back at its
    start; time in that frame is the whole piece's time shifted by the anchor's, so
    ``end(ids) - prompt_end`` is what a full decode gives (``tests/test_sampling.py``). Time is
    measured to the last note *onset*: a note held long is not more music. Other
    tokenizers decode from the start (``anchor`` 0, no state to restore).
    """

    def __init__(self, tokenizer: Any, prompt: np.ndarray):
        self.tokenizer = tokenizer
        prompt = ids_array(prompt)
        self.anchor, self.state = 0, []
        table = token_tables(tokenizer)
        g = table.grammar
        if table.has_position and table.lengths[prompt].sum():
            self.anchor, self.state = self._find_anchor(table, g, prompt)
        self.prompt_end = self.end(prompt[self.anchor :])

    @staticmethod
    def _find_anchor(table: Any, g: Any, prompt: np.ndarray) -> tuple[int, list[str]]:
        base, first = table.expand(prompt)
        types = np.asarray(g.types)
        bar_ids = np.flatnonzero((table.lengths[prompt] > 0) & table.is_bar[base[np.minimum(first, len(base) - 1)]])
        is_note = np.isin(types, ("Pitch", "PitchDrum", "NoteOn"))[base]
        notes_after = np.cumsum(is_note[::-1])[::-1]  # notes from each base token to the end
        anchor = 0
        for j in range(len(bar_ids) - CLOCK_BARS, -1, -1):
            if notes_after[first[bar_ids[j]]] > 0:
                anchor = int(bar_ids[j])
                break
        if anchor == 0:
            return 0, []
        before = base[: first[anchor]]
        state = []
        for kind in ("TimeSig", "Tempo"):  # the last of each before the anchor
            hits = np.flatnonzero(types[before] == kind)
            state.append(g.strings[before[hits[-1]]] if len(hits) else None)
        return anchor, state

    def _restore(self, tokens: list[str]) -> list[str]:
        """``tokens`` (from a Bar) with the metre and tempo in force at the anchor put back."""
        if not self.state or not tokens:
            return tokens
        timesig, tempo = self.state
        out = list(tokens)
        at = 1
        if len(out) > 1 and out[1].startswith("TimeSig_"):
            at = 2
        elif timesig:
            out.insert(1, timesig)
            at = 2
        first_pos = next((i for i in range(at, len(out)) if out[i].startswith("Position_")), None)
        own_tempo_at_0 = (first_pos is not None and out[first_pos] == "Position_0" and first_pos + 1 < len(out)
                          and out[first_pos + 1].startswith("Tempo_"))
        if tempo and not own_tempo_at_0:
            out[at:at] = ["Position_0", tempo]
        return out

    def notes(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(onsets, offsets)`` in seconds from the anchor of the notes of ``ids`` (the row's ids
        from the anchor on), sorted by onset."""
        tokens = self._restore(repair_tokens(self.tokenizer, ids))
        try:
            score = decode_tokens(self.tokenizer, tokens)
        except Exception:  # miditok's decoders are tolerant; never let a length check end a run
            score, _ = decode_safe(self.tokenizer, ids, check=False)
        if not score.note_num():
            return np.zeros(0), np.zeros(0)
        arrays = [t.notes.numpy() for t in score.to("second").tracks if len(t.notes)]
        on = np.concatenate([a["time"] for a in arrays]).astype(np.float64)
        off = on + np.concatenate([a["duration"] for a in arrays]).astype(np.float64)
        order = np.argsort(on, kind="stable")
        return on[order], off[order]

    def end(self, ids: np.ndarray) -> float:
        """Seconds from the anchor to the last note onset of ``ids`` (0 without a note): a held
        note is not more music."""
        on, _ = self.notes(ids)
        return float(on[-1]) if len(on) else 0.0


def seconds_check_gap(n_new: int, made: Sequence[float], seconds: float) -> int:
    """Tokens until the next length check of rows that made ``made`` seconds (each short of
    ``seconds``) in ``n_new`` tokens: half of what the rate of the row nearest its length says it
    still needs, between ``SECONDS_CHECK_EVERY`` and 4 times that (a rate read off a row's first
    notes can be far off; a row with no new music yet is checked again soon)."""
    need = [0.5 * (seconds - new) * n_new / new for new in made if new > 0]
    if len(need) < len(made) or not need:
        return SECONDS_CHECK_EVERY
    return int(min(max(SECONDS_CHECK_EVERY, min(need)), 4 * SECONDS_CHECK_EVERY))


class EosStop:
    reason = "eos"

    def __init__(self, eos: int):
        self.eos = eos

    def check(self, batch: Any, rows: Sequence[int]) -> dict[int, int]:
        return {b: batch.L for b in rows if int(batch.last_tokens[b]) == self.eos}

    def select(self, keep: Sequence[int]) -> None:
        pass


class BarStop:
    reason = "bars"

    def __init__(self, limits: list[Optional[int]]):
        self.limits = limits  # per row: the first bar index not kept (None: no limit)

    def check(self, batch: Any, rows: Sequence[int]) -> dict[int, int]:
        bars = batch.last_bars
        return {b: batch.L - 1 for b in rows if self.limits[b] is not None and int(bars[b]) >= self.limits[b]}

    def select(self, keep: Sequence[int]) -> None:
        self.limits = [self.limits[j] for j in keep]


class TokenStop:
    reason = "tokens"

    def __init__(self, cap: int):
        self.cap = cap

    def check(self, batch: Any, rows: Sequence[int]) -> dict[int, int]:
        return {b: batch.L for b in rows} if batch.n_new >= self.cap else {}

    def select(self, keep: Sequence[int]) -> None:
        pass


class ClockStop:
    """``seconds`` of new music and/or no silence longer than ``max_pause`` (module doc)."""

    def __init__(self, clocks: list[SecondsClock], seconds: Optional[float], max_pause: Optional[float]):
        self.clocks, self.seconds, self.max_pause = clocks, seconds, max_pause
        self.reason = "seconds"
        self.last_check, self.next_check = None, SECONDS_CHECK_EVERY
        self._reasons: dict[int, str] = {}

    def reason_of(self, b: int) -> str:
        return self._reasons.pop(b, self.reason)

    def check(self, batch: Any, rows: Sequence[int]) -> dict[int, int]:
        if self.last_check is None:
            self.last_check = batch.L0
        if not rows or batch.n_new < self.next_check:
            return {}
        ends, made = {}, []
        for b in rows:
            end, new = self._cut(batch, b, self.last_check + 1, batch.L)
            if end is None:
                made.append(new)
            else:
                ends[b] = end
        self.last_check = batch.L
        if self.seconds is not None:
            self.next_check = batch.n_new + seconds_check_gap(batch.n_new, made, self.seconds)
        else:
            self.next_check = batch.n_new + 4 * SECONDS_CHECK_EVERY
        return ends

    def _cut(self, batch: Any, b: int, lo: int, hi: int) -> tuple[Optional[int], float]:
        """``(m, new)``: where row ``b`` stops (the shortest length in ``[lo, hi]``, label
        included, that reaches ``seconds`` or holds the music before a silence), or None; ``new``:
        the seconds the whole row adds to its prompt."""
        clock = self.clocks[b]
        row = batch.seq[b].cpu().numpy()[1 + clock.anchor :]
        on, off = clock.notes(row[: hi - 1 - clock.anchor])
        new = (float(on[-1]) if len(on) else 0.0) - clock.prompt_end
        target = None
        if self.max_pause is not None:
            target = self._before_silence(on, off, clock.prompt_end)
            if target is not None:
                self._reasons[b] = "pause"
        if target is None and self.seconds is not None and new >= self.seconds:
            target = clock.prompt_end + self.seconds
        if target is None:
            return None, new

        def long_enough(m: int) -> bool:
            return clock.end(row[: m - 1 - clock.anchor]) >= target - 1e-9

        # a silence may start before the previous check: search all the new tokens
        lo = batch.L0 if self._reasons.get(b) == "pause" else min(lo, hi)
        while lo < hi:
            mid = (lo + hi) // 2
            if long_enough(mid):
                hi = mid
            else:
                lo = mid + 1
        return hi, new

    def _before_silence(self, on: np.ndarray, off: np.ndarray, prompt_end: float) -> Optional[float]:
        """The onset of the last note before the first silence longer than ``max_pause`` that
        ends at a new note (None if there is none)."""
        if len(on) < 2:
            return None
        gaps = pauses(on, off)  # on, off come sorted by onset
        new = on[1:] > prompt_end + 1e-9
        hits = np.flatnonzero(new & (gaps > self.max_pause))
        if not len(hits):
            return None
        return float(on[hits[0]])

    def select(self, keep: Sequence[int]) -> None:
        self.clocks = [self.clocks[j] for j in keep]


class Stops:
    """The stop rules of one batch, run in order after every token."""

    def __init__(self, rules: list[Any]):
        self.rules = rules

    def check(self, batch: Any) -> tuple[list[int], list[tuple[int, int, str]]]:
        """``(alive, stopped)``: rows that go on, and ``(row, length, reason)`` of those that stop."""
        alive = list(range(len(batch.last_tokens)))
        stopped = []
        for rule in self.rules:
            for b, end in sorted(rule.check(batch, alive).items()):
                reason = rule.reason_of(b) if hasattr(rule, "reason_of") else rule.reason
                stopped.append((b, end, reason))
                alive.remove(b)
        return alive, stopped

    def select(self, keep: Sequence[int]) -> None:
        for rule in self.rules:
            rule.select(keep)


def pauses(onsets: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The silences of a piece, in its time unit: for each note after the first, how long nothing
    sounded before it (0 when a note still sounded). ``ClockStop`` cuts a sample at a silence
    longer than ``max_pause``; ``scripts/generation_defaults.py`` reads the data's quantile."""
    order = np.argsort(onsets, kind="stable")
    on, off = np.asarray(onsets, np.float64)[order], np.asarray(offsets, np.float64)[order]
    if len(on) < 2:
        return np.zeros(0)
    sounding = np.maximum.accumulate(off)[:-1]
    return np.maximum(on[1:] - np.maximum(sounding, on[:-1]), 0.0)
