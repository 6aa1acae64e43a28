"""A file's own clock: ticks <-> seconds through its tempo map, and its bar lines from its metre.

These are the one tempo-map conversion and the one bar grid of partita; everything that needs
either (corpora, editing, infilling, plots, the web explorer) calls them.

* Tempo: 120 qpm before the first tempo event (the MIDI default); of several tempo events at one
  tick the last one holds.
* Bars: a bar of ``n/d`` lasts ``n * 4 / d`` quarter notes; 4/4 before the first time signature.
  A time signature that arrives in the middle of a bar starts a new bar there (as notation
  programs read it); of several at one tick the last one holds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bar_of", "bar_starts", "metres", "seconds_at", "tempo_map", "ticks_at", "ticks_to_seconds"]

_DEFAULT_MSPQ = 500_000.0  # microseconds per quarter note at 120 qpm


def tempo_map(score) -> tuple[np.ndarray, np.ndarray]:
    """``(ticks, microseconds per quarter)`` of ``score``'s tempo events (a ``ScoreTick``), sorted."""
    if len(score.tempos) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    t = score.tempos.numpy()
    order = np.argsort(t["time"], kind="stable")
    return t["time"][order].astype(np.int64), t["mspq"][order].astype(np.float64)


def _segments(tempo_ticks, mspq, tpq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start tick, start second and seconds per tick of every constant-tempo stretch."""
    t = np.asarray(tempo_ticks, np.float64)
    m = np.asarray(mspq, np.float64)
    if len(t) == 0 or t[0] > 0:
        t, m = np.concatenate([[0.0], t]), np.concatenate([[_DEFAULT_MSPQ], m])
    sec_per_tick = m / 1e6 / float(tpq)
    start_sec = np.concatenate([[0.0], np.cumsum(np.diff(t) * sec_per_tick[:-1])])
    return t, start_sec, sec_per_tick


def ticks_to_seconds(ticks, tempo_ticks, mspq, tpq: int) -> np.ndarray:
    """Seconds at each of ``ticks`` under the tempo map ``(tempo_ticks, mspq)`` (sorted by tick)."""
    t, start, spt = _segments(tempo_ticks, mspq, tpq)
    ticks = np.asarray(ticks, np.float64)
    k = np.maximum(np.searchsorted(t, ticks, side="right") - 1, 0)
    return start[k] + (ticks - t[k]) * spt[k]


def seconds_at(score, ticks) -> np.ndarray:
    """Seconds from the start of ``score`` (in ticks) at each of ``ticks``, through its tempo map."""
    tt, mspq = tempo_map(score)
    return ticks_to_seconds(ticks, tt, mspq, int(score.ticks_per_quarter))


def ticks_at(score, seconds) -> np.ndarray:
    """The tick (rounded) at each of ``seconds`` from the start of ``score``: the inverse of ``seconds_at``."""
    tt, mspq = tempo_map(score)
    t, start, spt = _segments(tt, mspq, int(score.ticks_per_quarter))
    seconds = np.asarray(seconds, np.float64)
    k = np.maximum(np.searchsorted(start, seconds, side="right") - 1, 0)
    return np.round(t[k] + (seconds - start[k]) / spt[k]).astype(np.int64)


def _time_signatures(score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(score.time_signatures) == 0:
        return np.array([0], np.int64), np.array([4]), np.array([4])
    ts = score.time_signatures.numpy()
    order = np.argsort(ts["time"], kind="stable")
    times = ts["time"][order].astype(np.int64)
    nums, dens = ts["numerator"][order].astype(np.int64), ts["denominator"][order].astype(np.int64)
    last = np.r_[times[1:] != times[:-1], True]  # of several at one tick, the last holds
    times, nums, dens = times[last], nums[last], dens[last]
    if times[0] > 0:
        times, nums, dens = np.r_[0, times], np.r_[4, nums], np.r_[4, dens]
    return times, nums, dens


def bar_starts(score, until: int | None = None, *, bars: int = 0) -> np.ndarray:
    """Tick of every bar line of ``score`` (in ticks) from 0 through the first one after tick
    ``until`` (default: the score's end), and at least ``bars + 1`` of them, following its time
    signatures (module doc). ``starts[k]`` is where bar ``k`` (0-based) begins."""
    tpq = int(score.ticks_per_quarter)
    end = int(score.end()) if until is None else int(until)
    times, nums, dens = _time_signatures(score)
    out: list[np.ndarray] = []
    count = 0
    for k in range(len(times)):
        length = max(int(round(int(nums[k]) * 4 * tpq / max(int(dens[k]), 1))), 1)
        seg_end = int(times[k + 1]) if k + 1 < len(times) else None
        if seg_end is None:  # the last metre runs on until past `end` and `bars` bars
            n = max((end - int(times[k])) // length + 2, bars + 1 - count, 1)
            out.append(int(times[k]) + length * np.arange(n, dtype=np.int64))
        else:
            n = max(-(-(seg_end - int(times[k])) // length), 1)
            out.append(int(times[k]) + length * np.arange(n, dtype=np.int64))
        count += len(out[-1])
    return np.unique(np.concatenate(out))


def bar_of(starts: np.ndarray, ticks) -> np.ndarray:
    """The 0-based bar (of ``bar_starts``) that each of ``ticks`` falls in."""
    return np.searchsorted(starts, np.asarray(ticks), side="right") - 1


def bar_count(score) -> int:
    """Bars of ``score`` in its own metre, through the bar of its last note-off (0 without notes)."""
    from partita.io.midi import last_note_off

    if score.note_num() == 0:
        return 0
    end = last_note_off(score)
    return int(bar_of(bar_starts(score, end), max(end - 1, 0))) + 1


def metres(score) -> tuple[tuple[int, int], ...]:
    """The distinct time signatures ``(numerator, denominator)`` of ``score``; ``((4, 4),)`` when it has none."""
    _, nums, dens = _time_signatures(score)
    return tuple(sorted({(int(a), int(b)) for a, b in zip(nums, dens)}))
