"""Benchmark: ``partita data tokenize`` with 1 and 2 workers against the single process it replaced.

The same work for every contender, in the same run: encode every piece of a prepared corpus with
REMI (partita's defaults) into token streams on disk (``write_token_streams``: ids, bar and
position of every token).

- ``one process (before)``: what ``partita data tokenize`` did before the worker pool, in the
  calling process: ``write_token_streams(((id, corpus.score(i)) ...), tok, out)``.
- ``pool, workers=W``: what it does now: ``write_token_streams([(id, corpus.score_ref(i)) ...],
  tok, out, workers=W)`` -- the pieces are built from the note store and encoded in W processes
  of partita's crash-isolated pool (``partita.data.pool``), written in corpus order.

The corpus is the fixtures' performance/ and multitrack/ files, copied ``--repeat`` times (so that
one long piece is not most of the work). Contenders take turns within each round (``--rounds``),
so the machine's changing load falls on all of them; the best round is reported. Every output is
checked byte for byte against the single process's. "CPU" is user + system time of the work,
worker processes included.

Usage::

    python benchmarks/tokenizing.py                   # writes its section of benchmarks/RESULTS.md
    python benchmarks/tokenizing.py --repeat 2 --rounds 1 --no-write

Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "midi"
HEADING = "## Tokenize: the worker pool (benchmarks/tokenizing.py)"
TARGET = 1.8  # the goal: 2 workers at least 1.8x the single process


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_corpus(work: Path, repeat: int):
    from partita.data.prepare import prepare

    src = work / "midi"
    for k in range(repeat):
        for d in ("performance", "multitrack"):
            dest = src / f"copy{k}" / d
            dest.mkdir(parents=True)
            for f in sorted((FIXTURES / d).glob("*.mid")):
                shutil.copy(f, dest / f.name)
    return prepare(src, work / "corpus", workers=2).corpus


def run_one(name: str, corpus, tok, out: Path) -> dict:
    from partita.represent.tokens import write_token_streams

    if out.exists():
        shutil.rmtree(out)
    t0, c0 = time.perf_counter(), _cpu()
    if name == "before":
        streams = write_token_streams(((r["id"], corpus.score(i)) for i, r in enumerate(corpus.pieces)), tok, out)
    else:
        workers = int(name.split("=")[1])
        refs = [(r["id"], corpus.score_ref(i)) for i, r in enumerate(corpus.pieces)]
        streams = write_token_streams(refs, tok, out, workers=workers)
    return {"s": time.perf_counter() - t0, "cpu": _cpu() - c0, "tokens": int(streams.offsets[-1]), "pieces": len(streams)}


def _bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=4, help="copies of the fixture files (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported (default 3)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    from partita.represent.tokens import make_tokenizer

    contenders = ["before", "workers=1", "workers=2"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = build_corpus(work, args.repeat)
        hours = sum(r["duration"] for r in corpus.pieces) / 3600
        tok = make_tokenizer()
        runs: dict[str, list] = {c: [] for c in contenders}
        for _ in range(args.rounds):
            for c in contenders:
                runs[c].append(run_one(c, corpus, tok, work / c))
                print(f"{c:>10}: {runs[c][-1]['s']:.2f} s", flush=True)
        reference = _bytes(work / "before")
        identical = {c: _bytes(work / c) == reference for c in contenders}
    load_after = os.getloadavg()[0]

    best = {c: min(runs[c], key=lambda r: r["s"]) for c in contenders}
    base = best["before"]["s"]
    rows = []
    for c in contenders:
        b = best[c]
        label = "one process (before)" if c == "before" else f"pool, {c}"
        rows.append(
            f"| {label} | {b['s']:.2f} | {b['tokens'] / b['s']:,.0f} | {b['pieces'] / b['s']:.1f} | "
            f"{base / b['s']:.2f} | {b['cpu']:.2f} | {'yes' if identical[c] else 'NO'} |"
        )
    ratio = base / best["workers=2"]["s"]
    verdict = "meets the target" if ratio >= TARGET else "misses the target"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    from importlib.metadata import version

    command = f"python benchmarks/tokenizing.py --repeat {args.repeat} --rounds {args.rounds}"
    section = "\n".join(
        [
            f"Best of {args.rounds} rounds, contenders taking turns within each round; every output checked byte for byte against the single process's.",
            "",
            f"- miditok {version('miditok')}, symusic {version('symusic')}; partita tree at {commit}",
            f"- load average (1 min) {load_before:.1f} before the run, {load_after:.1f} after, on {os.cpu_count()} cores"
            + (": other processes were busy, so the 2-worker ratio is held down" if max(load_before, load_after) > 0.5 else ""),
            f"- corpus: the fixtures' performance/ + multitrack/ files x {args.repeat}: {best['before']['pieces']} pieces, {hours:.2f} h of music, {best['before']['tokens']:,} REMI tokens",
            "",
            "| contender | s | tokens/s | pieces/s | x before | CPU s | same bytes |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"- 2 workers: {ratio:.2f}x the single process (target {TARGET}x): {verdict}",
            f"- CPU: 2 workers spend {best['workers=2']['cpu'] / best['before']['cpu']:.2f}x the single process's CPU time"
            f" (starting workers, sending pieces and tokens, the writer), so two idle cores give at most"
            f" {2 * best['before']['cpu'] / best['workers=2']['cpu']:.2f}x",
            f"- all rounds (s): " + "; ".join(f"{c} " + ", ".join(f"{r['s']:.2f}" for r in runs[c]) for c in contenders),
            "",
        ]
    )
    print(section)
    if not args.no_write:
        from results import RESULTS, write_section  # benchmarks/results.py

        peer = f"one process (the tokenizer before the pool): {best['before']['tokens'] / base:,.0f} tokens/s"
        write_section(HEADING.removeprefix("## "), command, section, peer)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
