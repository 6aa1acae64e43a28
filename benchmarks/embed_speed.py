"""Embedding speed from MIDI files, the path `partita embed FOLDER` takes: pieces per second of
the shipped FeatNet (featnet-piano) and SiaViT (siavit-small), next to the feature extractor of the
baseline (read the file, compute ``feature_vector``), in one run.

    python benchmarks/embed_speed.py [--folder ../shared/data/asap] [--pieces 300] [--threads 1 2]
    python benchmarks/embed_speed.py --sizes 300 1000 5000 20000 [--work /tmp/embed-scale]

Reads the first ``--pieces`` MIDI files under ``--folder`` (sorted; default: ASAP's performances
if present, else the test fixtures), best of ``--repeat`` runs each.

``--sizes``: corpus scale. Writes that many piano files into ``--work`` (never into the repo):
excerpts of 30-180 s of ASAP's files, transposed by -3..+3 semitones, seeded; then runs the
command a user runs, ``partita embed FOLDER --index NEW`` (the choice picks featnet-piano), in a
fresh process per size, and reports wall time, files a second and the process's peak memory;
finally it stops one run partway (SIGINT after half its expected time) and runs it again, to show
that it resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def files_in(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.mid") if p.name != "midi_score.mid")
    if not files:
        raise SystemExit(f"no MIDI files under {folder}")
    return files[:n]


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    asap = HERE.parents[1] / "shared" / "data" / "asap"
    ap.add_argument("--folder", type=Path, default=asap if asap.is_dir() else HERE.parent / "tests" / "fixtures" / "midi" / "performance")
    ap.add_argument("--pieces", type=int, default=300)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/embed-scale"))
    args = ap.parse_args()
    if args.sizes:
        return scale(args.folder, args.sizes, args.work)

    from partita.io import load, note_array, preprocess
    from partita.pretrained import FEATNET, SIAVIT, bundle_path
    from partita.represent.features import feature_vector
    from partita.search.embed import _model, embed_files

    files = files_in(args.folder, args.pieces)
    hours = 0.0
    for f in files:
        hours += float(note_array(load(f), unit="second")["onset"].max()) / 3600
    print(f"{len(files)} files from {args.folder} ({hours:.1f} h of music)")

    def features():
        for f in files:
            feature_vector(note_array(preprocess(load(f), sustain=True), unit="second"))

    featnet, siavit = _model(bundle_path(FEATNET)), _model(bundle_path(SIAVIT))
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = {
            "read + feature_vector (the baseline's features)": best_of(args.repeat, features),
            "partita embed, featnet-piano": best_of(args.repeat, lambda: embed_files(featnet, files)),
            "partita embed, siavit-small (8 windows)": best_of(1, lambda: embed_files(siavit, files)),
        }
        base = rows["read + feature_vector (the baseline's features)"]
        print(f"\n{threads} thread(s)")
        for name, seconds in rows.items():
            print(f"  {name:52s} {len(files) / seconds:8.1f} pieces/s  ({base / seconds:.2f}x the feature extractor)")


def make_files(source: Path, n: int, out: Path, seed: int = 0) -> Path:
    """``n`` excerpts of the MIDI files under ``source`` (module doc), written flat into ``out``."""
    import numpy as np
    import symusic

    out.mkdir(parents=True, exist_ok=True)
    have = len(list(out.glob("*.mid")))
    if have >= n:
        return out
    files = sorted(source.rglob("*.mid"))
    rng = np.random.default_rng(seed)
    scores: dict = {}
    for k in range(n):
        f = files[k % len(files)]
        if f not in scores:
            scores[f] = symusic.Score(str(f), ttype="second")
        s = scores[f]
        end = s.end()
        length = rng.uniform(30, 180)
        start = rng.uniform(0, max(0.0, end - length))
        if k >= have:
            s.clip(start, start + length, clip_end=True).shift_pitch(int(rng.integers(-3, 4))).dump_midi(str(out / f"{k:06d}.mid"))
        if len(scores) > 64:
            scores.pop(next(iter(scores)))
    return out


def scale(source: Path, sizes: list[int], work: Path) -> None:
    import json
    import os
    import shutil
    import signal
    import subprocess
    import sys

    # The child runs the CLI in-process and reports its own peak resident memory.
    child = ("import resource, sys; from partita.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\nexcept KeyboardInterrupt:\n    print('interrupted')\n"
             "print('peak_rss_mib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    files = make_files(source, max(sizes), work / "files")
    rows = []
    for n in sizes:
        folder = work / f"set-{n}"
        if not folder.is_dir():
            folder.mkdir()
            for k in range(n):
                os.link(files / f"{k:06d}.mid", folder / f"{k:06d}.mid")
        index = work / f"index-{n}"
        shutil.rmtree(index, ignore_errors=True)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", child, "embed", str(folder), "--index", str(index), "--json", str(work / f"e-{n}.json")],
                           capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        rss = float(p.stdout.strip().split()[-1])
        report = json.loads((work / f"e-{n}.json").read_text())
        rows.append((n, wall, rss, report["added"], len(report["failures"])))
        print(f"{n:7,d} files: {wall:7.1f} s  {n / wall:7.1f} files/s  peak {rss:6.0f} MiB  "
              f"(added {report['added']:,}, skipped {len(report['failures'])}; {report['choice']['reason']})", flush=True)
    # The peer, in the same run: the same 300 files through siavit-small, the model embed used before.
    n0 = sizes[0]
    peer_index = work / f"index-{n0}-siavit"
    shutil.rmtree(peer_index, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", child, "embed", str(work / f"set-{n0}"), "-m", "siavit-small", "--index", str(peer_index)],
                   capture_output=True, text=True, env=env)
    peer_wall = time.perf_counter() - t
    peer = f"siavit-small, the same {n0:,} files, same run: {peer_wall:.1f} s ({n0 / peer_wall:.1f} files/s)"
    print(peer, flush=True)
    # Resume: stop the largest run halfway, then run the same command again.
    n, wall = rows[-1][0], rows[-1][1]
    folder, index = work / f"set-{n}", work / f"index-{n}-resume"
    shutil.rmtree(index, ignore_errors=True)
    cmd = [sys.executable, "-c", child, "embed", str(folder), "--index", str(index), "--json", str(work / "r.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(wall / 2)
    proc.send_signal(signal.SIGINT)
    proc.communicate()
    from partita.search.index import Index

    kept = len(Index.load(index)) if (index / "index.json").is_file() else 0
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, env=env)
    again = time.perf_counter() - t
    r = json.loads((work / "r.json").read_text())
    resume = (f"resume: stopped after {wall / 2:.0f} s with {kept:,} pieces saved; the same command again added "
              f"{r['added']:,} and skipped {r['already_in_index']:,} in {again:.1f} s")
    print(resume)
    sys.path.insert(0, str(HERE))
    # (load on the machine: the 1-minute load average when the sizes ran is in the body)
    from results import write_section

    body = ["| files | seconds | files/s | peak memory (MiB) | embedded | skipped (no notes) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    body += [f"| {n:,} | {w:.1f} | {n / w:.0f} | {m:.0f} | {a:,} | {f} |" for n, w, m, a, f in rows]
    body += ["", f"Files: excerpts of 30-180 s of ASAP's MIDI files, transposed -3..+3 semitones, in {work}; each size "
                 f"in a fresh process, start-up included; the choice picked featnet-piano for every size.",
             "", resume, "", f"1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
             "(other work shared the machine: compare with the peer of the same run)."]
    write_section("partita embed at corpus scale (benchmarks/embed_speed.py --sizes)",
                  command=f"python benchmarks/embed_speed.py --folder {source} --sizes {' '.join(map(str, sizes))}",
                  body="\n".join(body), peer=f"{peer}; the issue's starting point was 21 files/s through siavit-small")


if __name__ == "__main__":
    main()
