"""Embedding speed from MIDI files, the path `partita embed FOLDER` takes: pieces per second of
the shipped FeatNet (featnet-piano) and SiaViT (siavit-small), next to the feature extractor of the
baseline (read the file, compute ``feature_vector``), in one run.

    python benchmarks/embed_speed.py [--folder ../shared/data/asap] [--pieces 300] [--threads 1 2]

Reads the first ``--pieces`` MIDI files under ``--folder`` (sorted; default: ASAP's performances
if present, else the test fixtures), best of ``--repeat`` runs each.
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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
