"""Audio rendering and musical-metric speed, best of 3, one thread.

python benchmarks/show.py [--metrics-dir DIR] [--render FILE ...]

- render: partita's SoundFont rendering (44.1 kHz stereo) as a real-time factor (seconds of audio
  per second of compute) on real fixture files;
- metrics: partita's 17 per-piece features (`score_metrics`, loading included) against the path a
  user would otherwise take, MGEval's feature extraction over pretty_midi (6 of its features,
  loading included), on the same files.
"""
import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

import pretty_midi  # noqa: E402
import symusic  # noqa: E402

from partita.evaluate.metrics import score_metrics  # noqa: E402
from partita.io.audio import render  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "midi"


def best(fn, repeat=3):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def mgeval_features(paths):
    """MGEval's per-piece features as its code computes them, over pretty_midi."""
    out = []
    for path in paths:
        pm = pretty_midi.PrettyMIDI(path)
        notes = sorted((n for i in pm.instruments if not i.is_drum for n in i.notes), key=lambda n: (n.start, n.pitch))
        if not notes:
            continue
        pitches = np.array([n.pitch for n in notes])
        starts = np.array([n.start for n in notes])
        out.append(dict(
            total_used_pitch=len(np.unique(pitches)),
            pitch_range=pitches.max() - pitches.min(),
            pitch_class_histogram=pm.get_pitch_class_histogram(),
            pitch_class_transition_matrix=sum(i.get_pitch_class_transition_matrix() for i in pm.instruments if not i.is_drum),
            avg_pitch_shift=np.mean(np.abs(np.diff(pitches))) if len(pitches) > 1 else 0.0,
            avg_ioi=np.mean(np.diff(np.unique(starts))) if len(np.unique(starts)) > 1 else 0.0,
        ))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics-dir", type=Path, default=FIXTURES / "multitrack",
                    help="folder of MIDI files for the metric comparison")
    ap.add_argument("--render", nargs="*", default=[str(FIXTURES / "edge" / "fur-elise.mid"),
                                                     str(FIXTURES / "performance" / "Maestro_1.mid")])
    args = ap.parse_args()

    lines = ["Render (44.1 kHz stereo, partita's SoundFont path):", "",
             "| file | audio s | compute s | x real time |", "| --- | ---: | ---: | ---: |"]
    for path in args.render:
        seconds, audio = best(lambda: render(path, sample_rate=44100))
        duration = audio.shape[1] / 44100
        lines.append(f"| {Path(path).name} | {duration:.1f} | {seconds:.2f} | {duration / seconds:.0f}x |")
        print(lines[-1], flush=True)

    files = sorted(glob.glob(str(args.metrics_dir / "*.mid")))
    notes = sum(symusic.Score(f).note_num() for f in files)
    t_partita, _ = best(lambda: [score_metrics(f) for f in files])
    t_mgeval, _ = best(lambda: mgeval_features(files))
    lines += ["", f"Musical metrics on {len(files)} files of `{args.metrics_dir.name}` ({notes:,} notes), loading included:", "",
              "| tool | features | s | x partita's time |", "| --- | ---: | ---: | ---: |",
              f"| partita `score_metrics` | 17 | {t_partita:.2f} | 1.00 |",
              f"| pretty_midi, MGEval's extraction | 6 | {t_mgeval:.2f} | {t_mgeval / t_partita:.1f} |"]
    lines += ["", f"Best of 3 per row, one process; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end."]
    print("\n".join(lines))
    from results import write_section  # benchmarks/results.py

    command = "python benchmarks/show.py" + "".join(f" {a}" for a in sys.argv[1:])
    write_section("Musical metrics (benchmarks/show.py)", command, "\n".join(lines),
                  f"pretty_midi + MGEval's feature extraction: 6 features of {len(files)} files in {t_mgeval:.2f} s")


if __name__ == "__main__":
    main()
