"""Feature baselines on ASAP, against the reference figures of ../shared/data/README.md.

python benchmarks/asap_baselines.py [--corpus /tmp/asap-corpus] [--asap ../shared/data/asap] [-j 2] [--json out.json]

Prepares ASAP into ``--corpus`` when it is not a prepared corpus yet (``partita data prepare``'s
own function, sustain pedal applied), then measures, with ``partita.represent.features`` and the
functions of ``partita.evaluate.baselines``:

- composer attribution: the composers with at least 5 works, their performances only, 5-fold
  cross-validation grouped by work (no work on both sides), standardised features + logistic
  regression (C = 1): top-1, top-3, the majority floor;
- retrieval across renditions: every performance queries the scores of all works (and, a second
  figure, the other performances), cosine of the features standardised over all pieces: R@1, R@5.

Reference (data README): top-1 0.72 (majority 0.29) on 1,000 performances of 219 works by 8
composers; performance -> score R@1 0.82, R@5 0.96 (1,067 queries, 235 scores).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from partita.data.corpus import Corpus
from partita.evaluate.baselines import corpus_features, grouped_attribution, rendition_retrieval, standardised_unit

REFERENCE = {"top1": 0.72, "majority": 0.29, "performance -> score R@1": 0.82, "performance -> score R@5": 0.96}
HERE = Path(__file__).resolve().parent


def prepared(corpus_dir: Path, asap: Path, workers: int) -> Corpus:
    if (corpus_dir / "corpus.json").exists():
        return Corpus(corpus_dir)
    from partita.data.prepare import prepare

    print(f"preparing {asap} -> {corpus_dir}")
    return prepare(asap, corpus_dir, workers=workers).corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/asap-corpus"), help="prepared ASAP corpus (made if absent)")
    ap.add_argument("--asap", type=Path, default=HERE.parents[1] / "shared" / "data" / "asap", help="the ASAP folder")
    ap.add_argument("-j", "--workers", type=int, default=2)
    ap.add_argument("--min-works", type=int, default=5, help="composers with at least this many works")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    corpus = prepared(args.corpus, args.asap, args.workers)
    rows = corpus.pieces
    if not any(r.get("kind") for r in rows):
        raise SystemExit(f"{corpus.path}: no performance/score kinds; prepare it from the ASAP folder (format asap)")
    t0 = time.perf_counter()
    x = corpus_features(corpus, range(len(rows)))
    seconds = time.perf_counter() - t0
    kinds = np.array([r["kind"] for r in rows], object)
    labels = np.array([r["label"] for r in rows], object)
    groups = np.array([r["group"] for r in rows], object)

    perf = kinds == "performance"
    works = defaultdict(set)
    for label, group in zip(labels[perf], groups[perf]):
        works[label].add(group)
    composers = sorted(c for c, w in works.items() if len(w) >= args.min_works)
    chosen = perf & np.isin(labels, composers)
    attribution = grouped_attribution(x[chosen], labels[chosen], groups[chosen], folds=args.folds)
    counts = {c: int(np.sum(labels[chosen] == c)) for c in composers}
    attribution["largest_share"] = max(counts.values()) / int(chosen.sum())
    retrieval = rendition_retrieval(standardised_unit(x), groups, kinds)

    print(f"{len(rows)} pieces ({int(perf.sum())} performances, {int((kinds == 'score').sum())} scores); "
          f"{x.shape[1]} features in {seconds:.1f} s")
    print(f"\ncomposer attribution: {len(composers)} composers with >= {args.min_works} works, "
          f"{attribution['n']} performances of {attribution['n_groups']} works, {args.folds}-fold CV grouped by work")
    print(f"  {'':28s} {'partita':>8s} {'reference':>9s}")
    print(f"  {'top-1 (features + LR)':28s} {attribution['top1']:8.3f} {REFERENCE['top1']:9.2f}")
    print(f"  {'top-3':28s} {attribution['top3']:8.3f} {'':>9s}")
    print(f"  {'most common composer':28s} {attribution['largest_share']:8.3f} {REFERENCE['majority']:9.2f}")
    print(f"  {'majority of training folds':28s} {attribution['majority']:8.3f} {'':>9s}")
    for label, row in attribution["per_label"].items():
        print(f"    {label:26s} {row['top1']:8.3f}  ({row['n']} performances; most often named {row['named']})")
    print("\nretrieval, cosine of standardised features")
    for task, r in retrieval.items():
        ref1, ref5 = REFERENCE.get(f"{task} R@1"), REFERENCE.get(f"{task} R@5")
        refs = f"  (reference R@1 {ref1:.2f}, R@5 {ref5:.2f})" if ref1 else ""
        print(f"  {task:28s} R@1 {r['R@1']:.3f}  R@5 {r['R@5']:.3f}  "
              f"({r['queries']} queries, {r['gallery']} in the gallery){refs}")
    if args.json:
        args.json.write_text(json.dumps({"composers": composers, "per_composer": counts, "attribution": attribution,
                                         "retrieval": retrieval, "reference": REFERENCE}, indent=1))


if __name__ == "__main__":
    main()
