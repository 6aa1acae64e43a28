"""Benchmark: prepare + pianoroll, partita against pretty_midi and mido, side by side.

The same work for every contender, on the same files, in the same run:

    read every MIDI file, get its (non-drum) notes, render a 50 ms-frame pianoroll of the whole piece

- ``partita (W workers)``: ``partita.data.prepare.prepare(folder, out, workers=W)`` -- the real
  ``partita data prepare`` path: symusic parsing, sustain pedal, the note store, Parquet and .npy
  files written to disk -- then ``pianoroll(corpus.notes(i), mode=...)`` ([12, 6, T] float32) for
  every piece of the prepared corpus. W=1 is one process, like the peers (apples to apples); W=2
  uses both cores of the reference machine.
- ``pretty_midi``: ``pretty_midi.PrettyMIDI(path).get_piano_roll(fs=20)`` (128 x T; drum tracks
  are zeros, CC64 sustain is applied, as pretty_midi does by default). Its ``MAX_TICK`` sanity cap
  (1e7 ticks) is lifted, or it would refuse the long music21 exports (10080 ticks per quarter) and
  skip their work.
- ``mido``: the hand-written path of Harmonixr-like scripts: ``mido.MidiFile``, walk each track's
  messages accumulating delta times, converted to seconds with the tempo map (``mido.tick2second``),
  pair note-on/note-off per (channel, pitch) skipping channel 10 (drums), then fill a
  [12, 6, T] numpy roll with one Python-level slice assignment per note. (Harmonixr's own
  ``preprocessing.midi_to_array`` loops per *frame* with a ``np.clip`` per cell, uses only the first
  tempo and runs one clock across tracks; this contender is the faster and correct form of it.)

No contender keeps the rolls (each is reduced to a checksum and dropped), so peak memory is the
working set of one piece plus what the tool itself keeps.

Each contender runs in its own fresh subprocess (``--one CONTENDER``), ``--repeats`` times,
interleaved; the best run is reported (the median is in --json). Timing starts after the contender's imports ("work");
"with start-up" is the whole subprocess as seen from outside (interpreter, imports, work). Peak
memory is the RSS high-water mark (``getrusage``) of the contender's process and, for W > 1, of
its largest worker process.

Usage::

    python benchmarks/prepare.py                 # fixtures (+ the bundled corpus when available)
    python benchmarks/prepare.py --files ~/maestro-v3.0.0 --no-bundled --no-fixtures
    python benchmarks/prepare.py --profile       # where partita's time goes (cProfile, W=1)

Writes its section of benchmarks/RESULTS.md unless ``--no-write``. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "midi"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures/midi")
FIXTURE_DIRS = ("performance", "multitrack")
HEADING = "## Prepare + pianoroll (benchmarks/prepare.py)"

FRAME_SECONDS = 0.05  # 50 ms frames: fs = 20 for pretty_midi
LOW, HIGH = 29, 100  # the [12, 6, T] roll's range (F1..E7), as partita and Harmonixr use
TARGET = 50.0  # the goal: at least 50x pretty_midi's throughput


def _peak_mb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished children (workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# --- the contenders (each runs alone in a fresh process) ---------------------------------------


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:160]


def run_pretty_midi(paths: list[str], args) -> dict:
    import pretty_midi
    import pretty_midi.pretty_midi as pm_module

    # pretty_midi refuses files whose last tick is over 1e7 ("likely corrupt"); music21 writes
    # 10080 ticks per quarter, so long quartet movements trip it. Lift the cap (the documented
    # module constant) so that pretty_midi does the same work as the others.
    pm_module.MAX_TICK = 10**12
    notes = frames = failed = 0
    errors: dict = {}
    t0 = time.perf_counter()
    for p in paths:
        try:
            pm = pretty_midi.PrettyMIDI(p)
            roll = pm.get_piano_roll(fs=round(1 / FRAME_SECONDS))
        except Exception as e:
            failed += 1
            errors.setdefault(_one_line(e), p)
            continue
        notes += sum(len(i.notes) for i in pm.instruments if not i.is_drum)
        frames += roll.shape[1]
        del pm, roll
    return {"work_s": time.perf_counter() - t0, "failed": failed, "errors": errors, "notes": notes, "frames": frames}


def _mido_roll(path: str, mode: str):
    """A typical hand-written mido script: the note list, then a [12, 6, T] roll in Python loops.

    Tracks are walked one by one (as Harmonixr does), accumulating delta ticks; ticks become
    seconds through the tempo map gathered from every track, with ``mido.tick2second`` per tempo
    segment. (``for msg in MidiFile(...)``, mido's own seconds iterator, does the same conversion
    but first merges the tracks, copying every message: about twice as slow here, so not used.)
    """
    import bisect

    import mido
    import numpy as np

    mid = mido.MidiFile(path)
    tpb = mid.ticks_per_beat
    changes = {0: 500000}  # tick -> microseconds per quarter; 120 qpm until the first set_tempo
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo":
                changes[tick] = msg.tempo
    ticks = sorted(changes)
    tempos = [changes[t] for t in ticks]
    starts = [0.0]
    for k in range(1, len(ticks)):
        starts.append(starts[-1] + mido.tick2second(ticks[k] - ticks[k - 1], tpb, tempos[k - 1]))

    def seconds(t: int) -> float:
        k = bisect.bisect_right(ticks, t) - 1
        return starts[k] + mido.tick2second(t - ticks[k], tpb, tempos[k])

    notes = []  # (onset, offset, pitch, velocity)
    for track in mid.tracks:
        tick = 0
        sounding: dict = {}  # (channel, pitch) -> [(onset, velocity), ...], first in first out
        for msg in track:
            tick += msg.time
            kind = msg.type
            if kind == "note_on" and msg.velocity > 0:
                if msg.channel != 9:
                    sounding.setdefault((msg.channel, msg.note), []).append((seconds(tick), msg.velocity))
            elif kind == "note_off" or kind == "note_on":
                started = sounding.get((msg.channel, msg.note))
                if started:
                    onset, velocity = started.pop(0)
                    notes.append((onset, seconds(tick), msg.note, velocity))
    end = max((n[1] for n in notes), default=0.0)
    n_frames = int(np.ceil(end / FRAME_SECONDS))
    roll = np.zeros((12, 6, n_frames), np.float32)
    for onset, offset, pitch, velocity in notes:
        if not LOW <= pitch <= HIGH:
            continue
        i = pitch - LOW
        a = int(onset / FRAME_SECONDS)
        b = max(int(np.ceil(offset / FRAME_SECONDS)), a + 1)
        value = 1.0 if mode == "binary" else velocity / 127.0
        cells = roll[i % 12, i // 12, a:b]
        np.maximum(cells, value, out=cells)
    return len(notes), roll


def run_mido(paths: list[str], args) -> dict:
    import mido  # noqa: F401  (imported before the clock starts, like the other contenders)
    import numpy  # noqa: F401

    notes = frames = failed = 0
    errors: dict = {}
    t0 = time.perf_counter()
    for p in paths:
        try:
            n, roll = _mido_roll(p, args.mode)
        except Exception as e:
            failed += 1
            errors.setdefault(_one_line(e), p)
            continue
        notes += n
        frames += roll.shape[-1]
        del roll
    return {"work_s": time.perf_counter() - t0, "failed": failed, "errors": errors, "notes": notes, "frames": frames}


def run_partita(paths: list[str], args, workers: int) -> dict:
    from partita.data.prepare import prepare
    from partita.represent.pianoroll import pianoroll

    out = Path(args.out)
    t0 = time.perf_counter()
    result = prepare(args.source, out, format=args.format, workers=workers)
    t1 = time.perf_counter()
    peak_after_prepare = _peak_mb(resource.RUSAGE_SELF)
    corpus = result.corpus
    notes = frames = 0
    for i in range(len(corpus)):
        n = corpus.notes(i, drums=False)
        roll = pianoroll(n, frame_seconds=FRAME_SECONDS, mode=args.mode)
        notes += len(n)
        frames += roll.shape[-1]
        del roll
    t2 = time.perf_counter()
    return {
        "work_s": t2 - t0,
        "prepare_s": t1 - t0,
        "roll_s": t2 - t1,
        "failed": len(corpus.rows) - len(corpus),
        "errors": {f"{r['reason']}: {r['message']}": r["path"] for r in corpus.rows if r["status"] != "ok"},
        "notes": notes,
        "frames": frames,
        "peak_after_prepare_mb": peak_after_prepare,
        "hours": sum(r["duration"] for r in corpus.pieces) / 3600,
        "corpus_mb": sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 2**20,
    }


def one(args) -> None:
    """``--one CONTENDER``: run one contender in this (fresh) process and print one JSON line."""
    paths = json.loads(Path(args.list).read_text())
    rss0 = _rss_mb()
    t_start = time.perf_counter()
    name = args.one
    if name == "pretty_midi":
        import pretty_midi  # noqa: F401
    elif name == "mido":
        import mido  # noqa: F401
        import numpy  # noqa: F401
    elif name.startswith("partita"):
        import partita.data.prepare  # noqa: F401
        import partita.represent.pianoroll  # noqa: F401
    imports_s = time.perf_counter() - t_start
    rss_imported = _rss_mb()
    cpu0 = _cpu_s()
    if name == "pretty_midi":
        res = run_pretty_midi(paths, args)
    elif name == "mido":
        res = run_mido(paths, args)
    elif name.startswith("partita-w"):
        res = run_partita(paths, args, int(name.split("-w", 1)[1]))
    else:
        raise SystemExit(f"unknown contender {name!r}")
    res.update(
        contender=name,
        cpu_s=_cpu_s() - cpu0,
        files=len(paths),
        imports_s=imports_s,
        rss_start_mb=rss0,
        rss_after_imports_mb=rss_imported,
        peak_mb=_peak_mb(resource.RUSAGE_SELF),
        worker_peak_mb=_peak_mb(resource.RUSAGE_CHILDREN),
    )
    print("RESULT " + json.dumps(res))


# --- workloads ----------------------------------------------------------------------------------


def _mirror(files: list[tuple[str, Path]], root: Path) -> Path:
    """A folder of symlinks ``root/<rel>`` -> file: one folder for prepare, same files for all."""
    for rel, src in files:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(src).resolve(), dst)
    return root


def fixtures_workload(tmp: Path) -> dict:
    files = [
        (f"{d}/{p.name}", p)
        for d in FIXTURE_DIRS
        for p in sorted((FIXTURES / d).iterdir())
        if p.suffix.lower() in (".mid", ".midi")
    ]
    src = _mirror(files, tmp / "fixtures")
    return {"name": "fixtures", "source": str(src), "format": "folder", "desc": "fixtures (performance/ + multitrack/)"}


def bundled_workload(tmp: Path) -> dict:
    from partita.data.sources.bundled import export_bundled

    t0 = time.perf_counter()
    export = export_bundled()
    export_s = time.perf_counter() - t0
    files = [(p.id if p.id.lower().endswith((".mid", ".midi")) else p.id + ".mid", Path(p.path)) for p in export.pieces]
    src = _mirror(files, tmp / "bundled")
    return {
        "name": "bundled",
        "source": str(src),
        "format": "folder",
        "desc": f"bundled corpus (music21 export, default size; export_bundled() took {export_s:.1f} s, not timed below)",
    }


def folder_workload(folder: str) -> dict:
    return {"name": Path(folder).name or folder, "source": str(Path(folder).expanduser().resolve()), "format": None, "desc": f"--files {folder}"}


def list_files(w: dict) -> list[str]:
    """The files partita will read, listed by partita's own scanner: the peers read exactly these."""
    from partita.data.sources import scan

    _, pieces = scan(w["source"], w["format"])
    return [p.path for p in pieces]


def music_hours(paths: list[str]) -> float:
    import symusic

    total = 0.0
    for p in paths:
        try:
            total += float(symusic.Score(p, ttype="second").end())
        except Exception:
            pass
    return total / 3600


# --- driver -------------------------------------------------------------------------------------


def _env(tmp: Path) -> dict:
    # Compiled bytecode is cached (outside the tree) as in a normal install, even where
    # PYTHONDONTWRITEBYTECODE is set: otherwise every fresh process recompiles partita's modules.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


IMPORTS = {
    "pretty_midi": "import pretty_midi",
    "mido": "import mido, numpy",
    "partita": "import partita.data.prepare, partita.represent.pianoroll, pyarrow.dataset",
}


def warm_imports(tmp: Path) -> None:
    """Import every contender once, untimed, so that the bytecode cache is filled for all alike."""
    for code in IMPORTS.values():
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp), check=False, capture_output=True)


def run_sub(contender: str, w: dict, list_file: Path, tmp: Path, args) -> dict:
    out = tmp / f"out-{contender}-{time.monotonic_ns()}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", contender, "--list", str(list_file),
           "--source", w["source"], "--out", str(out), "--mode", args.mode]
    if w["format"]:
        cmd += ["--format", w["format"]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(tmp))
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{contender} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    res["process_s"] = wall
    return res


def contenders(args) -> list[str]:
    return ["pretty_midi", "mido"] + [f"partita-w{w}" for w in args.workers]


def label(c: str) -> str:
    return f"partita, workers={c.split('-w')[1]}" if c.startswith("partita-w") else c


def bench_workload(w: dict, tmp: Path, args) -> dict:
    paths = list_files(w)
    list_file = tmp / f"{w['name']}.json"
    list_file.write_text(json.dumps(paths))
    for p in paths:  # warm the page cache so that the first contender does not pay for the disk
        Path(p).read_bytes()
    hours = music_hours(paths)
    print(f"\n{w['desc']}: {len(paths)} files, {hours:.2f} h of music, "
          f"{sum(Path(p).stat().st_size for p in paths) / 2**20:.1f} MiB", flush=True)
    runs: dict = {c: [] for c in contenders(args)}
    for rep in range(args.repeats):
        for c in contenders(args):  # interleaved, so slow drift hits everyone alike
            r = run_sub(c, w, list_file, tmp, args)
            runs[c].append(r)
            print(f"  run {rep + 1}/{args.repeats} {label(c):<22} work {r['work_s']:7.3f} s   "
                  f"process {r['process_s']:7.3f} s   peak {r['peak_mb']:6.0f} MB", flush=True)
    summary = {}
    for c, rs in runs.items():
        best = min(rs, key=lambda r: r["work_s"])
        summary[c] = {
            **best,
            "work_s_best": best["work_s"],
            "work_s_median": statistics.median(r["work_s"] for r in rs),
            "process_s_best": min(r["process_s"] for r in rs),
            "cpu_s_best": min(r["cpu_s"] for r in rs),
            "peak_mb_max": max(r["peak_mb"] for r in rs),
            "worker_peak_mb_max": max(r["worker_peak_mb"] for r in rs),
        }
    return {"workload": w, "files": len(paths), "hours": hours, "summary": summary, "runs": runs}


def table(result: dict) -> list[str]:
    s = result["summary"]
    files, hours = result["files"], result["hours"]
    pm, mi = s["pretty_midi"], s["mido"]
    rows = [
        "| contender | work s | files/s | h music/s | x pretty_midi | x mido | CPU s | x pretty_midi (CPU) "
        "| with start-up s | files/s | x pretty_midi | peak RSS MB (main / largest worker) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, r in s.items():
        t, tp, cpu = r["work_s_best"], r["process_s_best"], r["cpu_s_best"]
        many = c.startswith("partita-w") and int(c.split("-w")[1]) > 1
        workers = f" / {r['worker_peak_mb_max']:.0f}" if many else ""
        rows.append(
            f"| {label(c)} | {t:.3f} | {files / t:.1f} | {hours / t:.2f} | "
            f"{pm['work_s_best'] / t:.1f} | {mi['work_s_best'] / t:.1f} | {cpu:.3f} | {pm['cpu_s_best'] / cpu:.1f} | "
            f"{tp:.2f} | {files / tp:.1f} | {pm['process_s_best'] / tp:.1f} | {r['peak_mb_max']:.0f}{workers} |"
        )
    return rows


def details(result: dict) -> list[str]:
    s = result["summary"]
    out = []
    for c, r in s.items():
        extra = ""
        if "prepare_s" in r:
            extra = (f"; prepare {r['prepare_s']:.3f} s + pianorolls {r['roll_s']:.3f} s; peak RSS "
                     f"{r['peak_after_prepare_mb']:.0f} MB after prepare; corpus on disk {r['corpus_mb']:.1f} MiB")
        failed = f"{r['failed']} files failed"
        if r.get("errors"):
            failed += " (" + "; ".join(list(r["errors"])[:2]) + (", ..." if len(r["errors"]) > 2 else "") + ")"
        out.append(
            f"- {label(c)}: {r['notes']:,} notes, {r['frames']:,} frames, {failed}; "
            f"imports {r['imports_s']:.2f} s, RSS after imports {r['rss_after_imports_mb']:.0f} MB{extra}"
        )
    return out


def verdict(result: dict, workers: list[int]) -> list[str]:
    s = result["summary"]
    pm = s["pretty_midi"]
    lines = []
    for w in workers:
        c = f"partita-w{w}"
        if c not in s:
            continue
        ratio = pm["work_s_best"] / s[c]["work_s_best"]
        ratio_p = pm["process_s_best"] / s[c]["process_s_best"]
        tag = "apples to apples: one process, like the peers" if w == 1 else f"{w} processes vs the peers' one"
        status = "meets" if ratio >= TARGET else f"misses by {TARGET / ratio:.1f}x (needs {TARGET:.0f}x)"
        lines.append(f"- workers={w} ({tag}): {ratio:.1f}x pretty_midi (work), {ratio_p:.1f}x with start-up: "
                     f"{status} the {TARGET:.0f}x target")
    return lines


def versions() -> list[str]:
    import importlib.metadata as md

    versions = []
    for pkg in ("partita", "numpy", "symusic", "pyarrow", "pretty_midi", "mido"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        commit = f"{commit}{' + uncommitted changes' if dirty else ''}" if commit else "unknown"
    except OSError:
        commit = "unknown"
    return [f"- {', '.join(versions)}; partita tree at {commit}"]


def peer_line(results: list[dict]) -> str:
    """pretty_midi's throughput on each workload of this run, the figure partita is compared with."""
    return "; ".join(f"pretty_midi `get_piano_roll` {r['files'] / r['summary']['pretty_midi']['work_s_best']:.1f} files/s "
                     f"on {r['workload']['desc'].split(' (')[0]}" for r in results)


def profile(args, tmp: Path) -> None:
    """cProfile of the partita contender (workers=1, in this process) on the first workload."""
    import cProfile
    import pstats

    w = workloads(args, tmp)[0]
    paths = list_files(w)
    ns = argparse.Namespace(source=w["source"], format=w["format"], out=str(tmp / "profile-out"), mode=args.mode)
    import partita.data.prepare  # noqa: F401  (imported before the clock, as in the timed runs)
    import partita.represent.pianoroll  # noqa: F401

    prof = cProfile.Profile()
    prof.enable()
    res = run_partita(paths, ns, 1)
    prof.disable()
    print(f"\npartita workers=1 on {w['desc']}: {res['work_s']:.3f} s "
          f"(prepare {res['prepare_s']:.3f} s, pianorolls {res['roll_s']:.3f} s) under cProfile")
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def workloads(args, tmp: Path) -> list[dict]:
    ws = []
    if args.fixtures:
        ws.append(fixtures_workload(tmp))
    for f in args.files or []:
        ws.append(folder_workload(f))
    if args.bundled is not False:
        try:
            ws.append(bundled_workload(tmp))
        except Exception as e:  # not built yet, or music21 missing: say so, run the rest
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            print(f"bundled corpus skipped ({msg})", flush=True)
            if args.bundled:
                raise
            args.bundled_skipped = msg
    return ws


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", action="append", metavar="DIR", help="also benchmark this folder (repeatable)")
    ap.add_argument("--fixtures", action=argparse.BooleanOptionalAction, default=True, help="the real fixtures (default on)")
    ap.add_argument("--bundled", action=argparse.BooleanOptionalAction, default=None,
                    help="the bundled music21 corpus (default: on when partita.data.sources.bundled works)")
    ap.add_argument("--workers", default="1,2", help="partita worker counts to run (default 1,2)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per contender; the best is reported (default 3)")
    ap.add_argument("--mode", default="velocity", choices=("binary", "velocity"), help="pianoroll values (default velocity)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    ap.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    ap.add_argument("--profile", action="store_true", help="profile partita (workers=1) on the first workload and stop")
    # internal: one contender in a fresh process
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--list", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--format", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return one(args)
    args.workers = [int(x) for x in str(args.workers).split(",") if x.strip()]
    args.bundled_skipped = None
    command = "python benchmarks/prepare.py" + "".join(f" {a}" if " " not in a else f" '{a}'" for a in (argv or sys.argv[1:]))

    with tempfile.TemporaryDirectory(prefix="partita-bench-") as t:
        tmp = Path(t)
        if args.profile:
            return profile(args, tmp)
        load_before = os.getloadavg()
        warm_imports(tmp)
        ws = workloads(args, tmp)
        if not ws:
            raise SystemExit("nothing to benchmark (no --files, --no-fixtures and no bundled corpus)")
        results = [bench_workload(w, tmp, args) for w in ws]
        load_after = os.getloadavg()

    lines = [f"Best of {args.repeats} runs per contender, each in a fresh process, contenders interleaved; "
             f"pianoroll mode `{args.mode}`, 50 ms frames.", ""]
    lines += versions()
    lines.append(f"- load average (1 min) {load_before[0]:.1f} before the run, {load_after[0]:.1f} after, on "
                 f"{os.cpu_count()} cores" + (": other processes were busy, so timings are noisy and workers=2 "
                 "cannot show its gain" if max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1) else ""))
    lines += ["", "Same work for every contender: read each file, get its non-drum notes, render a 50 ms pianoroll "
              "of the whole piece (partita: `prepare(folder, out, workers=W)` writing the corpus to disk, then "
              "`pianoroll(corpus.notes(i))` [12,6,T]; pretty_midi: `PrettyMIDI(path).get_piano_roll(fs=20)` 128xT; "
              "mido: a hand-written Harmonixr-style loop with `mido.tick2second` and a per-note fill of a [12,6,T] roll). "
              "\"work\" is wall time inside the process after imports; \"CPU\" is the user + system time of that work "
              "(workers included), less disturbed by other load on the machine; \"with start-up\" is the whole subprocess "
              "(interpreter + imports + work; bytecode cached as in a normal install). Ratios are throughput ratios "
              "(same files, so time ratios). partita and pretty_midi apply the sustain pedal (CC64); the mido script, "
              "like most hand-written ones, does not. pretty_midi's `MAX_TICK` cap (1e7) is lifted so that it reads "
              "long files at 10080 ticks per quarter (music21's exports) instead of refusing them. No contender keeps the rolls, so peak RSS is the tool's "
              "baseline plus one piece's working set."]
    for r in results:
        lines += ["", f"### {r['workload']['desc']}: {r['files']} files, {r['hours']:.2f} h of music", ""]
        lines += table(r)
        lines += [""] + verdict(r, args.workers) + [""] + details(r)
    if args.bundled_skipped:
        lines += ["", f"Bundled corpus not measured in this run: {args.bundled_skipped}."]
    section = "\n".join(lines) + "\n"
    print("\n" + section)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if not args.no_write:
        from results import RESULTS, write_section  # benchmarks/results.py

        write_section(HEADING.removeprefix("## "), command, section, peer_line(results))
        print(f"(section written to {RESULTS.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
