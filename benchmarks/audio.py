"""Audio rendering: TinySoundFont (partita.io.audio now) against the hand-written SF2 sampler it replaced.

python benchmarks/audio.py [--seconds 60] [--long FILE ...] [--soundfont FILE.sf2]

The old renderer is partita/io/audio.py as it was at commit OLD_COMMIT, read with `git show` into a
temporary module, so both run in this one process on the same files, font and settings.

- speed: every tests/fixtures/midi file partita can read, its first --seconds (0: whole files;
  default 60), 44.1 kHz stereo, in memory (`render`); the two renderers take turns file by file,
  the SoundFont already loaded (its load time is reported once, apart);
- memory: each --long file written to a WAV (old: `render(path, out)`, one buffer; new:
  `render_file(path, out)`, in blocks), each case in a fresh subprocess: peak traced Python/numpy
  memory (tracemalloc) and the process's peak resident memory (VmHWM, reset after the SoundFont is loaded) above
  the resident memory at the start of the rendering.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "midi"
#: The last commit whose partita/io/audio.py was the hand-written sampler.
OLD_COMMIT = "5bce8860f543ba637223dc0e55bdd992a9f41ae5"
DEFAULT_LONG = [str(FIXTURES / "performance" / "Maestro_6.mid"), str(FIXTURES / "performance" / "Chopin, Frédéric, Études, Op.10, g0hoN6_HDVU.mid")]


def old_module():
    """partita.io.audio at OLD_COMMIT, as a module named ``partita_old_audio``."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:src/partita/io/audio.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="partita-old-audio-")) / "partita_old_audio.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("partita_old_audio", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["partita_old_audio"] = module
    spec.loader.exec_module(module)
    return module


def renderers():
    from partita.io import audio as new

    old = old_module()
    return {
        "old": (lambda x, font, s, out=None: old.render(x, out, soundfont=font, seconds=s, engine="sampler"),
                lambda font: old.load_soundfont(font)),
        "new": (lambda x, font, s, out=None: new.render_file(x, out, soundfont=font, seconds=s) if out else new.render(x, soundfont=font, seconds=s),
                lambda font: new.load_soundfont(font)),
    }


def speed(args, font):
    from partita.errors import PartitaError
    from partita.io import load

    impl = renderers()
    for name, (_, load_font) in impl.items():
        start = time.perf_counter()
        load_font(font)
        print(f"{name}: SoundFont load {time.perf_counter() - start:.2f} s")
    files = []
    for path in sorted(glob.glob(str(FIXTURES / "**" / "*.mid"), recursive=True)):
        try:
            load(path)
        except PartitaError:
            continue
        files.append(path)
    seconds = args.seconds or None
    totals = {name: [0.0, 0.0] for name in impl}
    rows = []
    for path in files:
        row = {"file": str(Path(path).relative_to(FIXTURES))}
        try:
            for name, (render, _) in impl.items():
                start = time.perf_counter()
                audio = render(path, font, seconds)
                row[name] = (audio.shape[1] / 44100, time.perf_counter() - start)
        except PartitaError as e:
            print(f"{row['file']}: left out, {name} refused it: {e}")
            continue
        for name in impl:
            totals[name][0] += row[name][0]
            totals[name][1] += row[name][1]
        rows.append(row)
        print(f"{row['file']}: " + ", ".join(f"{n} {a:.1f} s audio in {t:.2f} s" for n, (a, t) in ((n, row[n]) for n in impl)), flush=True)
    table = ["| renderer | files | audio s | compute s | x real time |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, (audio_s, compute_s) in totals.items():
        table.append(f"| {name} | {len(rows)} | {audio_s:.0f} | {compute_s:.1f} | {audio_s / compute_s:.0f}x |")
    table += ["", f"new / old speed: {totals['old'][1] / totals['new'][1]:.2f}x"]
    print("\n" + "\n".join(table))
    return table, totals


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_case(name: str, path: str, font: str) -> dict:
    """One rendering to a WAV, in this (fresh) process: peak traced memory and resident memory."""
    import tracemalloc

    impl = renderers()
    render, load_font = impl[name]
    load_font(font)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM) to the current one
    base = _status_kb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        start = time.perf_counter()
        render(path, font, None, Path(tmp) / "out.wav")
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        size = (Path(tmp) / "out.wav").stat().st_size
    rss = _status_kb("VmHWM") - base
    return {"renderer": name, "file": Path(path).name, "wav_mb": size / 1e6, "seconds": took,
            "traced_peak_mb": peak / 1e6, "rss_growth_mb": rss / 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="Render each file's first S seconds (0: whole files).")
    ap.add_argument("--long", nargs="*", default=DEFAULT_LONG, help="Files for the memory comparison (rendered whole).")
    ap.add_argument("--soundfont", default=None, help="SoundFont (default: the one partita finds).")
    ap.add_argument("--case", nargs=2, metavar=("RENDERER", "FILE"), help=argparse.SUPPRESS)  # one memory case, in a subprocess
    args = ap.parse_args()
    from partita.io.audio import find_soundfont

    font = str(find_soundfont(args.soundfont))
    if args.case:
        print(json.dumps(memory_case(args.case[0], args.case[1], font)))
        return
    print(f"SoundFont {font}; old = partita/io/audio.py at {OLD_COMMIT[:7]} (engine='sampler'), new = tinysoundfont")
    speed_table, totals = speed(args, font)
    memory = ["| file | renderer | audio min | WAV MB | compute s | traced peak MB | RSS growth MB |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    print("\n" + "\n".join(memory))
    for path in args.long:
        for name in ("old", "new"):
            cmd = [sys.executable, __file__, "--case", name, path, "--soundfont", font]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
            if done.returncode != 0:
                memory.append(f"| {Path(path).name} | {name} | refused: {done.stderr.strip().splitlines()[-1][:120]} | | | | |")
                print(memory[-1], flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            minutes = r["wav_mb"] * 1e6 / (44100 * 4) / 60
            memory.append(f"| {r['file']} | {name} | {minutes:.1f} | {r['wav_mb']:.0f} | {r['seconds']:.1f} | {r['traced_peak_mb']:.1f} | {r['rss_growth_mb']:.0f} |")
            print(memory[-1], flush=True)
    from results import write_section  # benchmarks/results.py

    audio_s, compute_s = totals["old"]
    body = "\n".join([f"SoundFont `{Path(font).name}`; old = `partita/io/audio.py` at {OLD_COMMIT[:7]} (the hand-written sampler), "
                      "new = TinySoundFont. Speed: each fixture's first "
                      f"{args.seconds:g} s, in memory; memory: whole pieces written to WAV, each case in a fresh process.", "",
                      *speed_table, "", *memory])
    command = f"python benchmarks/audio.py --seconds {args.seconds:g}" + (f" --long {' '.join(args.long)}" if args.long != DEFAULT_LONG else "")
    write_section("Audio (benchmarks/audio.py)", command, body,
                  f"the hand-written SF2 sampler it replaced: {audio_s / compute_s:.0f}x real time in this run")


if __name__ == "__main__":
    main()
