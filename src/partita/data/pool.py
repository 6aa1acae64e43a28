"""The one crash-isolated process pool: ``prepare`` reads MIDI files with it, ``tokenize`` encodes.

``isolated_map(fn, items)`` yields ``(index, item, fn(item))`` for every item, each computed in a
worker process, even with one worker: a file that crashes its process (a segfault in a C
library, the OOM killer) cannot take the run down. When a worker dies, the items that were in
flight are run again one at a time in a fresh process to find the culprit, whose result is
``on_crash(item)``; the others are computed normally.

``fn`` should turn its own failures into results (an exception it raises ends the run: that is a
bug, not a bad file). Items travel in small batches, since one task per item costs more in
inter-process traffic than a small item's work. Workers ignore Ctrl-C: the main process decides
what to keep, and the pool stops with it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence


def context():
    # fork starts workers in milliseconds with numpy/symusic already imported; elsewhere spawn.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _init_worker(initializer: Callable | None, initargs: tuple) -> None:
    # Ctrl-C goes to the main process, which saves what is done; workers just stop with the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def _run_batch(fn: Callable, items: list) -> list:
    return [fn(item) for item in items]


def isolated_map(
    fn: Callable[[Any], Any],
    items: Sequence,
    *,
    workers: int | None = None,
    on_crash: Callable[[Any], Any],
    initializer: Callable | None = None,
    initargs: tuple = (),
    ordered: bool = False,
    max_batch: int = 32,
) -> Iterator[tuple[int, Any, Any]]:
    """Yield ``(index, item, fn(item))`` for every item of ``items``, computed in ``workers``
    processes (default: all cores), in completion order, or in the order of ``items`` when
    ``ordered``. ``initializer(*initargs)`` runs once in each worker (per-worker state, such as
    a tokenizer, that should not travel with every batch)."""
    workers = max(1, workers or os.cpu_count() or 1)
    batch = max(1, min(max_batch, len(items) // (workers * 16)))
    pending = [list(range(k, min(k + batch, len(items)))) for k in range(0, len(items), batch)][::-1]
    held: dict[int, Any] = {}  # ordered: results that arrived before their turn
    next_out = 0

    def emit(k: int, result: Any):
        nonlocal next_out
        if not ordered:
            yield k, items[k], result
            return
        held[k] = result
        while next_out in held:
            yield next_out, items[next_out], held.pop(next_out)
            next_out += 1

    while pending:
        in_flight: dict = {}
        pool = ProcessPoolExecutor(workers, mp_context=context(), initializer=_init_worker, initargs=(initializer, initargs))
        try:
            while pending or in_flight:
                while pending and len(in_flight) < 2 * workers:
                    ks = pending.pop()
                    in_flight[pool.submit(_run_batch, fn, [items[k] for k in ks])] = ks
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    results = fut.result()  # raises BrokenProcessPool if a worker died
                    for k, result in zip(in_flight.pop(fut), results):
                        yield from emit(k, result)
        except BrokenProcessPool:
            # A worker died. Its item is among those in flight: run each of them alone.
            suspects = sorted(k for ks in in_flight.values() for k in ks)
            pool.shutdown(wait=False, cancel_futures=True)
            for k in suspects:
                yield from emit(k, _run_isolated(fn, items[k], on_crash, initializer, initargs))
            continue
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_isolated(fn: Callable, item: Any, on_crash: Callable, initializer: Callable | None, initargs: tuple) -> Any:
    with ProcessPoolExecutor(1, mp_context=context(), initializer=_init_worker, initargs=(initializer, initargs)) as solo:
        try:
            return solo.submit(fn, item).result()
        except BrokenProcessPool:
            return on_crash(item)
