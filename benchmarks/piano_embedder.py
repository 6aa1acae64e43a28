"""Piano embeddings on ASAP's held-out test works: the shipped FeatNet (or --model) next to the
feature baselines, on the reference tasks of ../shared/data/README.md.

    partita data prepare ../shared/data/asap --out /tmp/asap -j 2
    python benchmarks/piano_embedder.py --corpus /tmp/asap [--model BUNDLE] [--compare NAME=BUNDLE] [--json out.json]

Everything is measured on the corpus's test split (whole works: no performance or score of a test
work was trained on or chose a checkpoint), in the reference's set-up:

- composer: the composers with >= 5 works in ASAP, test performances; the embedder names the
  nearest composer centroid (centroids of the train split's pieces, as ``partita attribute``
  does); baselines: standardised features + logistic regression trained on the train split's
  performances (``feature_vector``, 73 dimensions, the reference's recipe; and FeatNet's own
  360-dimensional ``piano_descriptor``);
- retrieval: every test performance against all scores of the corpus (train, valid and test):
  R@1, R@5; baselines: cosine of the standardised features / descriptors;
- same-composer pair ROC-AUC over the test performances (cosine similarity as the score);
- attribution with the shipped piano index (``partita attribute``'s calibrated probabilities and
  "unknown composer"), all composers, test performances: top-1, top-3, how many are called
  unknown, expected calibration error; and how many random-note pieces are called unknown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/asap"))
    ap.add_argument("--model", type=Path, default=None, help="a featnet or siavit bundle (default: the shipped featnet-piano)")
    ap.add_argument("--compare", action="append", default=[], help="NAME=BUNDLE, another embedder side by side")
    ap.add_argument("--min-works", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from partita.data.corpus import Corpus
    from partita.evaluate.baselines import corpus_features, feature_classifier, recall_at_k, standardised_unit
    from partita.evaluate.pairs import roc_auc
    from partita.pretrained import FEATNET, bundle_path
    from partita.represent.features import piano_descriptor
    from partita.search.embed import embed_corpus

    corpus = Corpus(args.corpus)
    rows = corpus.pieces
    label = np.array([r["label"] for r in rows], object)
    group = np.array([r["group"] for r in rows], object)
    kind = np.array([r.get("kind") for r in rows], object)
    split = np.array([r["split"] for r in rows], object)
    works = {c: len(set(group[label == c])) for c in set(label)}
    composers = sorted(c for c, n in works.items() if n >= args.min_works)
    perf = kind == "performance"
    test_q = np.flatnonzero((split == "test") & perf & np.isin(label, composers))
    train_ref = np.flatnonzero((split == "train") & np.isin(label, composers))
    train_perf = np.flatnonzero((split == "train") & perf & np.isin(label, composers))
    scores = np.flatnonzero(kind == "score")
    queries = np.flatnonzero((split == "test") & perf)
    everything = list(range(len(rows)))

    def centroid_top1(v):
        cent = np.stack([v[train_ref][label[train_ref] == c].mean(0) for c in composers])
        cent /= np.linalg.norm(cent, axis=1, keepdims=True)
        guess = np.array(composers)[np.argmax(v[test_q] @ cent.T, 1)]
        return float(np.mean(guess == label[test_q]))

    def pair_auc(v):
        sub = test_q
        sims = v[sub] @ v[sub].T
        iu = np.triu_indices(len(sub), 1)
        same = (label[sub][:, None] == label[sub][None, :])[iu]
        return roc_auc(sims[iu], same.astype(np.int64))

    def retrieval(v):
        return recall_at_k(v[queries], v[scores], group[queries], group[scores], (1, 5))

    results: dict = {"corpus": str(corpus.path), "composers": composers, "test_performances": len(test_q),
                     "test_works": int(len(set(group[test_q]))), "retrieval_queries": int(len(queries)),
                     "gallery_scores": int(len(scores)), "rows": {}}
    models = {"FeatNet" if args.model is None else args.model.name: args.model or bundle_path(FEATNET)}
    for item in args.compare:
        name, _, path = item.partition("=")
        models[name] = Path(path)
    for name, path in models.items():
        vecs, kept, failures = embed_corpus(path, corpus, everything)
        if failures:
            raise SystemExit(f"{name}: {len(failures)} pieces failed to embed: {failures[:2]}")
        r = retrieval(vecs)
        results["rows"][name] = {"composer_top1": centroid_top1(vecs), "pair_auc": pair_auc(vecs),
                                 "R@1": r["R@1"], "R@5": r["R@5"]}
    features = corpus_features(corpus, everything)
    descriptors = np.stack([piano_descriptor(corpus.notes(i)) for i in everything]).astype(np.float64)
    for name, x in (("features (73), standardised", features), ("descriptor (360), standardised", descriptors)):
        clf = feature_classifier(x[train_perf], label[train_perf])
        unit = standardised_unit(x)
        r = retrieval(unit)
        results["rows"][name] = {"composer_top1_lr": float(np.mean(clf.predict(x[test_q]) == label[test_q])),
                                 "composer_top1": centroid_top1(unit), "pair_auc": pair_auc(unit),
                                 "R@1": r["R@1"], "R@5": r["R@5"]}
    results["attribution"] = attribution(corpus, queries, label)
    print(f"{results['test_performances']} test performances of {results['test_works']} works by "
          f"{len(composers)} composers; retrieval: {len(queries)} test performances against {len(scores)} scores")
    print(f"{'':36s} {'top-1 centroid':>15s} {'top-1 LR':>9s} {'pair AUC':>9s} {'R@1':>7s} {'R@5':>7s}")
    for name, r in results["rows"].items():
        lr = r.get("composer_top1_lr")
        print(f"{name:36s} {r['composer_top1']:15.3f} {'' if lr is None else f'{lr:.3f}':>9s} {r['pair_auc']:9.3f} "
              f"{r['R@1']:7.3f} {r['R@5']:7.3f}")
    a = results["attribution"]
    print(f"piano index, {a['labels']} composers, {a['n']} test performances: top-1 {a['top1']:.3f}, top-3 {a['top3']:.3f}, "
          f"called unknown {a['unknown']:.3f}, ECE {a['ece']:.3f}; random-note pieces called unknown {a['random_unknown']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def attribution(corpus, queries, label, n_random: int = 50) -> dict:
    from partita.search.attribute import expected_calibration_error, load_attribution
    from partita.search.embed import embed_corpus, embed_notes
    from partita.search.index import Index, resolve_model, shipped_index

    folder = shipped_index("piano")
    att = load_attribution(folder)
    model, _ = resolve_model(Index.load(folder).model)
    vecs, kept, _ = embed_corpus(model, corpus, list(queries))
    truth = label[kept]
    res = att.attribute(vecs, k=3)
    probs = att.probabilities(vecs)
    target = np.array([att.labels.index(y) for y in truth])
    rng = np.random.default_rng(0)
    noise = []
    for _ in range(n_random):  # uniformly random pitches, onsets and durations over a minute
        n = 400
        notes = np.zeros(n, [("onset", "f8"), ("duration", "f8"), ("pitch", "i1"), ("velocity", "i1"), ("program", "i1"),
                             ("is_drum", "?"), ("track", "i2")])
        notes["onset"] = np.sort(rng.uniform(0, 60, n))
        notes["duration"] = rng.uniform(0.05, 1.0, n)
        notes["pitch"] = rng.integers(21, 109, n)
        notes["velocity"] = rng.integers(30, 110, n)
        noise.append(notes)
    random_res = att.attribute(embed_notes(model, noise), k=1)
    return {"labels": len(att.labels), "n": len(kept),
            "top1": float(np.mean([r["top"][0]["label"] == y for r, y in zip(res, truth)])),
            "top3": float(np.mean([y in [t["label"] for t in r["top"]] for r, y in zip(res, truth)])),
            "unknown": float(np.mean([not r["known"] for r in res])),
            "ece": float(expected_calibration_error(probs, target)),
            "random_unknown": float(np.mean([not r["known"] for r in random_res]))}


if __name__ == "__main__":
    main()
