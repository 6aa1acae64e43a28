"""Sampling defaults read off a model's training data, written to its bundle's generation.json.

``max_pause``: the ``--quantile`` of the pauses in the data (how long nothing sounds before a
note, over the notes that follow a silence), with the sustain pedal applied as training applied
it. A sample that falls silent for longer is cut there (``partita.generation.stops.ClockStop``).
The default quantile is 0.999: in ASAP's 1,067 performances the 99th percentile is 0.68 s,
a breath between phrases, which a sample may take; 0.999 (2.05 s) is a silence the real music
almost never has.

    python scripts/generation_defaults.py ../shared/data/asap --exclude midi_score.mid \\
        --bundle src/partita/pretrained/gpt-piano --set memory_keys=4096
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from partita.generation.stops import pauses
from partita.io.midi import MidiError, load, preprocess


def silences(paths: list[Path], sustain: bool) -> tuple[np.ndarray, int]:
    out, bad = [], 0
    for path in paths:
        try:
            score = load(path)
        except MidiError:
            bad += 1
            continue
        score = preprocess(score, sustain=sustain).to("second")
        notes = [t.notes.numpy() for t in score.tracks if len(t.notes) and not t.is_drum]
        if not notes:
            continue
        on = np.concatenate([n["time"] for n in notes])
        out.append(pauses(on, on + np.concatenate([n["duration"] for n in notes])))
    return (np.concatenate(out) if out else np.zeros(0)), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--exclude", action="append", default=[], help="file names to leave out")
    ap.add_argument("--quantile", type=float, default=0.999)
    ap.add_argument("--no-sustain", action="store_true")
    ap.add_argument("--bundle", type=Path, help="write the defaults into this bundle's generation.json")
    ap.add_argument("--set", action="append", default=[], help="another default, NAME=JSON")
    a = ap.parse_args()
    paths = sorted(p for p in a.folder.rglob("*.mid") if p.name not in a.exclude)
    gaps, bad = silences(paths, sustain=not a.no_sustain)
    silent = gaps[gaps > 0]
    if not len(silent):
        sys.exit("no pause between notes in these files")
    q = float(np.quantile(silent, a.quantile))
    print(f"{len(paths)} files ({bad} unreadable), {len(gaps)} notes, {len(silent)} after a pause; pause quantiles "
          f"0.99: {np.quantile(silent, 0.99):.2f} s, {a.quantile}: {q:.2f} s; longest {silent.max():.2f} s")
    defaults = {"max_pause": round(q, 2)}
    for item in a.set:
        name, _, value = item.partition("=")
        defaults[name] = json.loads(value)
    if a.bundle:
        target = a.bundle / "generation.json"
        old = json.loads(target.read_text()) if target.is_file() else {}
        target.write_text(json.dumps({**old, **defaults}, indent=2) + "\n")
        print(f"wrote {target}: {json.dumps({**old, **defaults})}")
    else:
        json.dump(defaults, sys.stdout)
        print()


if __name__ == "__main__":
    main()
