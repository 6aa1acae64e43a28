"""Embedding throughput of the SiaViT on the CPU: pieces per second, next to the feature baseline.

    python benchmarks/embedder.py --data corpora/bundled [--model BUNDLE] [--pieces 200] [--threads 1]

Embeds the first ``--pieces`` pieces of the corpus with ``partita.search.embed.embed_corpus``
(``--windows`` windows per piece, batched), best of ``--repeat`` runs, and computes
``represent.features.feature_vector`` for the same pieces (what the baseline costs). Also embeds
the piano performance fixtures (``../shared/fixtures/midi/performance``) from MIDI files, as a
smoke test of the whole path on performed piano music.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None, help="a siavit bundle (default: the shipped one)")
    ap.add_argument("--pieces", type=int, default=200)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from partita.bundle import load_bundle
    from partita.data.corpus import Corpus
    from partita.pretrained import SIAVIT, bundle_path
    from partita.represent.features import feature_vector
    from partita.search.embed import embed_corpus, embed_files

    corpus = Corpus(args.data)
    bundle = load_bundle(args.model or bundle_path(SIAVIT))
    indices = list(range(min(args.pieces, len(corpus))))
    seconds = float(sum(corpus.pieces[i]["duration"] for i in indices))
    embed_corpus(bundle.model, corpus, indices[:4], windows=args.windows)  # warm-up
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        vectors, kept, failures = embed_corpus(bundle.model, corpus, indices, windows=args.windows,
                                               batch_size=args.batch_size)
        best = min(best, time.perf_counter() - t)
    t = time.perf_counter()
    for i in indices:
        feature_vector(corpus.notes(i))
    feat = time.perf_counter() - t

    fixtures = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "midi" / "performance"
    files = sorted(fixtures.glob("*.mid"))
    t = time.perf_counter()
    fv, fkept, ffail = embed_files(bundle.model, files, windows=args.windows, batch_size=args.batch_size)
    files_s = time.perf_counter() - t

    result = {
        "threads": args.threads,
        "pieces": len(kept),
        "music_hours": round(seconds / 3600, 2),
        "windows_per_piece": args.windows,
        "siavit_pieces_per_s": round(len(kept) / best, 1),
        "siavit_windows_per_s": round(len(kept) * args.windows / best, 1),
        "features_pieces_per_s": round(len(indices) / feat, 1),
        "performance_fixtures": {"files": len(files), "embedded": len(fkept), "failures": len(ffail),
                                 "seconds": round(files_s, 2), "all_unit_length": bool(np.allclose(np.linalg.norm(fv, axis=1), 1, atol=1e-4))},
        "parameters": int(sum(p.numel() for p in bundle.model.parameters())),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
