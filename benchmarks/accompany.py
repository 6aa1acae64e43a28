"""How fast is ``partita accompany``? A whole pop melody, start-up included, against real time.

For the first ``--songs`` held-out POP909 songs (numbers ending in 9) whose melody lasts at least
``--min-seconds`` (default 170 s: a three-minute song), the MELODY track alone (with the song's
tempo and metre) is written to a file and accompanied by the ``partita accompany`` command in a
fresh process (Python start-up, imports and model loading included, as a user runs it): ``--style
pop`` (the shipped chord tagger ``pop-chords``, its chords as arpeggios), ``--style pop --model``
with a transformer you trained (``--model``; the row is left out without one), and ``--style
folk`` (the rule). The held-out Bach chorales (``partita.generation.chorale``, the tune split) are
harmonized with ``--style chorale`` the same way. Reported: wall seconds, the music's seconds and
their ratio (seconds of music per second of work; above 1 is faster than real time).

    python benchmarks/accompany.py --pop ../shared/data/pop909 [--songs 3] [--model BUNDLE] [--chorales 5]

Writes the "Accompaniment speed" section of benchmarks/RESULTS.md (``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def melody_file(song: Path, out: Path) -> tuple[Path, float]:
    from partita.generation.accompany import melody_only
    from partita.io.midi import duration_seconds, load

    score = load(song)
    track = next(i for i, t in enumerate(score.tracks) if t.name.strip().upper() == "MELODY")
    melody = melody_only(score, track)
    path = out / f"{song.stem}-melody.mid"
    melody.dump_midi(str(path))
    return path, float(duration_seconds(melody))


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "partita", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"partita {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pop", required=True, help="the POP909 folder")
    ap.add_argument("--songs", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=170.0)
    ap.add_argument("--model", default=None, help="a transformer accompaniment bundle (partita train gpt --accompany) for a pop+model row")
    ap.add_argument("--chorales", type=int, default=5)
    ap.add_argument("--rows", default=None, help="write the rows here as JSON; with --report-only, read them from here")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the RESULTS section from --rows")
    args = ap.parse_args()
    if args.report_only:
        import json

        return report(args, [tuple(r) for r in json.loads(Path(args.rows).read_text())])

    from partita.data.accompany import song_files, song_split
    from partita.generation.chorale import chorale_files, chorale_voices, split_chorales
    from partita.io.midi import duration_seconds, load

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        picked = []
        for f in song_files(args.pop):
            if song_split(f.stem) != "test":
                continue
            path, seconds = melody_file(f, tmp)
            if seconds >= args.min_seconds:
                picked.append((f.stem, path, seconds))
            if len(picked) == args.songs:
                break
        runs = [("pop", ["--style", "pop"])] + ([("pop+model", ["--style", "pop", "--model", args.model])] if args.model else [])
        for stem, path, seconds in picked:
            for style, extra in (*runs, ("folk", ["--style", "folk"])):
                wall = timed(["accompany", str(path), *extra, "-o", str(tmp / "out")])
                rows.append((f"POP909 {stem} melody", style, seconds, wall))
                print(rows[-1], flush=True)
        test = split_chorales(chorale_files("bundled"))[0]["test"][: args.chorales]
        for f in test:
            score = load(f)
            soprano = score.copy()
            soprano.tracks = [score.tracks[chorale_voices(score)[0]]]
            path = tmp / f"{f.stem}-soprano.mid"
            soprano.dump_midi(str(path))
            wall = timed(["accompany", str(path), "--style", "chorale", "-o", str(tmp / "out")])
            rows.append((f"chorale {f.stem} soprano", "chorale", float(duration_seconds(soprano)), wall))
            print(rows[-1], flush=True)

    if args.rows:
        import json

        Path(args.rows).write_text(json.dumps(rows))
    report(args, rows)


def report(args, rows: list) -> None:
    lines = ["| melody | style | music (s) | wall, start-up included (s) | music / wall |", "|---|---|---|---|---|"]
    for name, style, seconds, wall in rows:
        lines.append(f"| {name} | {style} | {seconds:.0f} | {wall:.1f} | {seconds / wall:.1f}x |")
    for style in ("pop", "pop+model", "folk", "chorale"):
        mine = [(s, w) for _, st, s, w in rows if st == style]
        if mine:
            lines.append(f"| **all** | {style} | {sum(s for s, _ in mine):.0f} | {sum(w for _, w in mine):.1f} | "
                         f"{sum(s for s, _ in mine) / sum(w for _, w in mine):.1f}x |")
    threads = os.environ.get("OMP_NUM_THREADS", "all cores")
    model = ""
    if args.model:
        model = f"; pop+model is {args.model}"
        try:
            import json

            card = json.loads((Path(args.model) / "card.json").read_text())
            model += f" ({card.get('parameters', 0):,} parameters, {card.get('steps')} steps of `{card.get('command', '?')}`)"
        except (OSError, ValueError):
            pass
    body = ("\n".join(lines) + f"\n\nEach row is one `partita accompany` process (threads: {threads}); pop is the shipped "
            f"pop-chords tagger's chords played as arpeggios{model}. The issue's bar: a three-minute pop melody accompanied "
            "in under a minute on 2 CPU cores, start-up included.\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import write_section

    command = "python benchmarks/accompany.py --pop ../shared/data/pop909" + (f" --model {args.model}" if args.model else "")
    write_section("Accompaniment speed (benchmarks/accompany.py)", command, body, "real time (music seconds per wall second)")


if __name__ == "__main__":
    main()
