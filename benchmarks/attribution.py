"""Composer attribution of unseen works: leave-works-out across ASAP, next to the feature baseline.

    partita data prepare ../shared/data/asap --out /tmp/asap -j 2
    partita data prepare bundled --max-per-label 200 --out /tmp/corpus
    python benchmarks/attribution.py --corpus /tmp/asap [--folds 5] [--pop ../shared/data/pop909] \
        [--bundled-corpus /tmp/corpus] [--json out.json]

The composers with at least 5 works in ASAP (8: Bach, Beethoven, Chopin, Haydn, Liszt, Mozart,
Schubert, Schumann). Folds are grouped by work (``group``, ASAP's ``folder``): no performance or
score of a test work is trained on. Every method is scored on the held-out works' performances
and, separately, on their scores (quantised, flat velocities: the closest thing here to the
sequenced MIDI of a new work), with per-composer recall and the confusion matrix:

- ``features + LR``: the baseline, standardised ``feature_vector`` (73 values) + logistic
  regression (C = 1), whole pieces;
- ``descriptor + LR``: the same on FeatNet's 360-value ``piano_descriptor``;
- ``readout (partita attribute)``: ``partita.search.reader.fit_reader`` run on the training works
  alone (what ``partita embed`` does for a FeatNet index): logistic regression on augmented crops
  (8 a piece, 30-90 s, transposed up to 3 semitones), classes weighted to the same total, a piece
  scored by the mean log-probability over its crops and itself; its temperature and "unknown"
  thresholds from cross-fitting inside the training works (nested: the test fold is never seen);
- ``featnet-piano centroids``: the shipped embedder's composer centroids (cosine), for reference
  only: featnet-piano was trained on ASAP's train split, so its folds are not all unseen works.

Probabilities: expected calibration error and reliability of the readout's calibrated
probabilities on the held-out works. "Unknown" (``partita.search.reader``: the mean of two
length-normalised log-distances to the nearest training pieces, clipped standardised descriptors
and featnet-piano's embedding as in the piano index, one split-conformal threshold at alpha 0.05,
all calibrated on held-out ASAP works only): the rate by length bin on the outer folds' held-out
works, and, for a readout of every piece, on ASAP's other composers, the bundled corpus's
held-out pieces (not keyboard music) and POP909 songs, out-of-domain test sets that set nothing;
and the same with the descriptor distance alone (an ablation, recalibrated the same way).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/asap"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--min-works", type=int, default=5)
    ap.add_argument("--pop", type=Path, default=None, help="a POP909 folder: songs scored as out-of-domain music")
    ap.add_argument("--pop-songs", type=int, default=300)
    ap.add_argument("--bundled-corpus", type=Path, default=None,
                    help="the bundled corpus prepared (partita data prepare bundled --max-per-label 200): its test split "
                         "attributed by the shipped bundled index's readout and by its centroids")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--report-only", type=Path, default=None,
                    help="write the RESULTS section from a --json file of an earlier run (same arguments), computing nothing")
    args = ap.parse_args()
    if args.report_only is not None:
        _write_results(json.loads(args.report_only.read_text()), args)
        return

    from sklearn.model_selection import GroupKFold

    from partita.data.corpus import Corpus
    from partita.evaluate.baselines import feature_classifier
    from partita.represent.features import feature_vector, piano_descriptor
    from partita.search import reader as R
    from partita.search.attribute import expected_calibration_error

    t0 = time.time()
    corpus = Corpus(args.corpus)
    works: dict[str, set] = {}
    for p in corpus.pieces:
        if p["label"]:
            works.setdefault(p["label"], set()).add(p["group"])
    composers = sorted(c for c, w in works.items() if len(w) >= args.min_works)
    rows = [i for i, p in enumerate(corpus.pieces) if p["label"] in composers]
    y = np.array([composers.index(corpus.pieces[i]["label"]) for i in rows])
    groups = np.array([corpus.pieces[i]["group"] for i in rows])
    is_score = np.array([str(corpus.pieces[i]["path"]).endswith("midi_score.mid") for i in rows])
    seconds = np.array([float(corpus.pieces[i]["duration"]) for i in rows])
    notes = [corpus.notes(i) for i in rows]
    feats = np.stack([feature_vector(n) for n in notes])
    whole = np.stack([piano_descriptor(n) for n in notes])
    crops = [R.crop_descriptors(n, seed=k) for k, n in enumerate(notes)]  # test-time crops
    from partita.bundle import load
    from partita.search.embed import embed_notes
    from partita.search.index import fingerprint
    from partita.pretrained import bundle_path

    featnet_bundle = load("featnet-piano")
    emb = embed_notes(featnet_bundle.model, notes)  # what the piano index stores and embeds queries with
    stamp = fingerprint(bundle_path("featnet-piano"))
    print(f"{len(rows)} pieces ({is_score.sum()} scores) of {len(set(groups))} works by {len(composers)} composers; "
          f"descriptors in {time.time() - t0:.0f} s")

    folds = list(GroupKFold(n_splits=args.folds).split(rows, y, groups))
    L = len(composers)
    oof = {name: np.zeros((len(rows), L)) for name in ("features + LR", "descriptor + LR", "readout (partita attribute)")}
    known = np.zeros(len(rows), bool)
    known_descriptor = np.zeros(len(rows), bool)  # the ablation: the descriptor distance alone
    for k, (tr, te) in enumerate(folds):
        clf = feature_classifier(feats[tr], y[tr])
        oof["features + LR"][te] = _full(clf.predict_log_proba(feats[te]), clf.classes_, L)
        clf = feature_classifier(whole[tr], y[tr], C=0.05)
        oof["descriptor + LR"][te] = _full(clf.predict_log_proba(whole[te]), clf.classes_, L)
        # The whole procedure 'partita embed' runs, on the training works only: inner cross-fitting
        # for the temperature and the unknown thresholds, then the readout on all of them.
        # (min_works 4: Mozart's 6 works leave 4 or 5 in a training fold)
        readout = R.fit_reader([notes[i] for i in tr], [composers[c] for c in y[tr]], list(groups[tr]), min_works=4,
                               vectors=emb[tr], embedder=stamp)
        for i in te:
            r = readout.attribute(crops[i], whole[i], seconds[i], k=L, vector=emb[i])
            known_descriptor[i] = _known_by_descriptor(readout, crops[i], whole[i], seconds[i])
            p = {t["label"]: t["probability"] for t in r["top"]}
            oof["readout (partita attribute)"][i] = np.log(np.maximum([p.get(c, 0.0) for c in composers], 1e-12))
            known[i] = r["known"]
        print(f"fold {k + 1}/{len(folds)} done ({time.time() - t0:.0f} s)")

    # featnet-piano, for reference (trained on ASAP's train split: not all folds are unseen works).
    cos = np.zeros((len(rows), L))
    for tr, te in folds:
        cents = np.stack([emb[tr][y[tr] == c].mean(0) for c in range(L)])
        cents /= np.linalg.norm(cents, axis=1, keepdims=True)
        cos[te] = emb[te] @ cents.T
    oof["featnet-piano centroids (leaky)"] = cos

    report: dict = {"composers": composers, "pieces": len(rows), "scores": int(is_score.sum()), "works": len(set(groups)),
                    "folds": args.folds, "majority": float(np.bincount(y).max() / len(y)), "methods": {}}
    for name, s in oof.items():
        pred = s.argmax(1)
        m = {}
        for what, mask in (("all", np.ones(len(y), bool)), ("performances", ~is_score), ("scores", is_score)):
            m[f"top1 {what}"] = round(float((pred[mask] == y[mask]).mean()), 4)
        m["balanced top1"] = round(float(np.mean([(pred[y == c] == c).mean() for c in range(L)])), 4)
        m["recall"] = {composers[c]: round(float((pred[y == c] == c).mean()), 3) for c in range(L)}
        m["confusion (rows: true, cols: predicted)"] = np.bincount(y * L + pred, minlength=L * L).reshape(L, L).tolist()
        report["methods"][name] = m
    probs = np.exp(oof["readout (partita attribute)"])
    probs /= probs.sum(1, keepdims=True)
    raw = np.exp(oof["features + LR"])
    report["calibration"] = {
        "readout ece (its own temperature, fitted on its training works)": round(expected_calibration_error(probs, y), 4),
        "features + LR ece": round(expected_calibration_error(raw / raw.sum(1, keepdims=True), y), 4),
        "readout reliability (bin, pieces, confidence, accuracy)": _reliability(probs, y),
    }
    bins = R.length_bins(seconds)
    report["unknown"] = {"alpha": R.ALPHA, "held-out works by length bin": {
        R.BIN_NAMES[b]: {"pieces": int((bins == b).sum()), "unknown": round(float(1 - known[bins == b].mean()), 4)}
        for b in range(len(R.BIN_NAMES)) if (bins == b).any()}}
    report["unknown"]["held-out works, all"] = round(float(1 - known.mean()), 4)
    report["unknown"]["descriptor distance only (ablation), held-out works by length bin"] = {
        R.BIN_NAMES[b]: {"pieces": int((bins == b).sum()), "unknown": round(float(1 - known_descriptor[bins == b].mean()), 4)}
        for b in range(len(R.BIN_NAMES)) if (bins == b).any()}
    readout = R.fit_reader(notes, [composers[c] for c in y], list(groups), vectors=emb, embedder=stamp)
    report["unknown"]["readout of every piece, held out inside (cross-fitted)"] = readout.fitted["unknown_by_length"]
    others = [corpus.notes(i) for i, p in enumerate(corpus.pieces) if p["label"] and p["label"] not in composers]
    report["unknown"]["ASAP composers not in the readout"] = _unknown_rate(readout, others, featnet_bundle.model)
    from partita.demo import DEMO_SET

    report["unknown"]["bundled corpus's held-out pieces (chorales, madrigals, quartets, folk)"] = _unknown_rate(
        readout, _files(sorted(Path(DEMO_SET).rglob("*.mid"))), featnet_bundle.model)
    if args.pop is not None:
        report["unknown"]["pop909"] = _unknown_rate(readout, _files(sorted(Path(args.pop).rglob("*.mid"))[:args.pop_songs]),
                                                    featnet_bundle.model)
    if args.bundled_corpus is not None:
        report["bundled index"] = _bundled_index(args.bundled_corpus, corpus)
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    _write_results(report, args)


def _write_results(report: dict, args) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import write_section

    methods = report["methods"]
    comps = report["composers"]
    lines = [f"{report['pieces']:,} pieces ({report['scores']} scores) of {report['works']} works by the "
             f"{len(comps)} composers with >= 5 works; {report['folds']}-fold cross-validation grouped by work; "
             f"majority {report['majority']:.3f}.", "",
             "| method | top-1 | performances | scores (held-out works) | balanced | " + " | ".join(comps) + " |",
             "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in comps) + " |"]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['top1 all']:.3f} | {m['top1 performances']:.3f} | {m['top1 scores']:.3f} | "
                     f"{m['balanced top1']:.3f} | " + " | ".join(f"{m['recall'][c]:.2f}" for c in comps) + " |")
    conf = methods["readout (partita attribute)"]["confusion (rows: true, cols: predicted)"]
    lines += ["", "Confusion of the readout (rows: true composer, columns: predicted):", "",
              "| | " + " | ".join(c[:5] for c in comps) + " |", "| --- | " + " | ".join("---:" for _ in comps) + " |"]
    lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(comps, conf)]
    cal = report["calibration"]
    lines += ["", f"Calibration (held-out works): readout ECE {cal['readout ece (its own temperature, fitted on its training works)']:.3f}, "
                  f"features + LR ECE {cal['features + LR ece']:.3f}. Readout reliability (confidence bin, pieces, mean "
                  f"confidence, accuracy): " + "; ".join(f"{b} {n} {c:.2f} {a:.2f}" for b, n, c, a in
                                                       cal["readout reliability (bin, pieces, confidence, accuracy)"]) + ".",
              "", "Called \"unknown composer\" (alpha 0.05; length-normalised novelty, descriptor and featnet-piano "
                  "distances; calibrated on held-out ASAP works only, the out-of-domain sets set nothing):", ""]
    u = report["unknown"]
    lines += [f"- held-out works, {b}: {v['unknown']:.1%} of {v['pieces']}" for b, v in u["held-out works by length bin"].items()]
    for key, v in u.items():
        if isinstance(v, dict) and "pieces" in v:
            lines.append(f"- {key}: {v['unknown']:.1%} of {v['pieces']}")
    abl = u["descriptor distance only (ablation), held-out works by length bin"]
    lines += ["", "Ablation, the descriptor distance alone (no embedding distance; length-normalised, same threshold rule): "
                  "held-out works " + ", ".join(f"{b} {v['unknown']:.1%}" for b, v in abl.items()) + "; " +
              "; ".join(f"{key} {v['unknown_descriptor_only']:.1%}" for key, v in u.items()
                        if isinstance(v, dict) and "unknown_descriptor_only" in v) + "."]
    if "bundled index" in report:
        b = report["bundled index"]
        lines += ["", f"The shipped bundled index (siavit-small, {b['labels']} labels) on the bundled corpus's test split "
                      f"({b['test']['pieces']} pieces, never used): readout top-1 {b['test']['readout top1']:.3f}, called unknown "
                      f"{b['test']['readout unknown']:.1%}; its centroids top-1 {b['test']['centroids top1']:.3f}, unknown "
                      f"{b['test']['centroids unknown']:.1%}. ASAP's test split ({b['asap']['pieces']} piano pieces, out of domain "
                      f"there): readout unknown {b['asap']['readout unknown']:.1%}, centroids {b['asap']['centroids unknown']:.1%}."]
    lines += ["", "featnet-piano centroids are leaky here (it was trained on ASAP's train split), shown for scale only. "
                  "The novelty's embedding distance uses featnet-piano too, so for held-out works of ASAP's train split it "
                  "is not a measurement on unseen works (on the test split, which featnet-piano never saw, the shipped "
                  "readout calls 2.5% of 122 pieces unknown)."]
    peer = (f"standardised features + logistic regression, top-1 {methods['features + LR']['top1 all']:.3f} "
            f"(data README reference 0.72 on performances)")
    write_section("Composer attribution of unseen works (benchmarks/attribution.py)",
                  command=f"python benchmarks/attribution.py --corpus {args.corpus}" + (f" --pop {args.pop}" if args.pop else "")
                  + (f" --bundled-corpus {args.bundled_corpus}" if args.bundled_corpus else ""),
                  body="\n".join(lines), peer=peer)


def _bundled_index(bundled_corpus: Path, asap) -> dict:
    """The shipped bundled index's readout next to its centroids, on pieces it never saw."""
    import partita
    from partita.data.corpus import Corpus
    from partita.search import reader as R
    from partita.search.attribute import load_attribution
    from partita.search.embed import embed_notes
    from partita.search.index import Index, resolve_model, shipped_index

    index = Index.load(shipped_index("bundled"))
    readout = R.load_reader(index.path).bind(index)
    centroids = load_attribution(index.path)
    model = partita.load(str(resolve_model(index.model)[0])).model
    windows = int(index.embed.get("windows", 8))

    def run(corpus, rows) -> dict:
        hits, unknown, c_hits, c_unknown = [], [], [], []
        for i in rows:
            n = corpus.notes(i)
            try:
                vec = embed_notes(model, [n], windows=windows)[0]
                views = R.piece_views(n)
            except Exception:
                continue
            r = readout.attribute(*views, float((n["onset"] + n["duration"]).max()), vector=vec)
            c = centroids.attribute(vec[None], k=1)[0]
            label = corpus.pieces[i]["label"]
            hits.append(r["top"][0]["label"] == label)
            unknown.append(not r["known"])
            c_hits.append(c["top"][0]["label"] == label)
            c_unknown.append(not c["known"])
        return {"pieces": len(hits), "readout top1": round(float(np.mean(hits)), 4), "readout unknown": round(float(np.mean(unknown)), 4),
                "centroids top1": round(float(np.mean(c_hits)), 4), "centroids unknown": round(float(np.mean(c_unknown)), 4)}

    bundled = Corpus(bundled_corpus)
    return {"labels": len(readout.labels),
            "test": run(bundled, [i for i, p in enumerate(bundled.pieces) if p["split"] == "test" and p["label"] in readout.labels]),
            "asap": run(asap, [i for i, p in enumerate(asap.pieces) if p["split"] == "test"])}


def _files(paths):
    from partita.io import load, note_array, preprocess

    for f in paths:
        try:
            yield note_array(preprocess(load(f), sustain=True), unit="second")
        except Exception:
            continue


_DESCRIPTOR_ONLY: dict = {}  # id(readout) -> (length models, threshold) of the descriptor distance alone


def _known_by_descriptor(readout, crops, whole, seconds: float) -> bool:
    """The ablation: known by the descriptor distance alone, its length model and threshold
    recalibrated on the same cross-fitted held-out distances as the readout's own."""
    from partita.search import reader as R

    if id(readout) not in _DESCRIPTOR_ONLY:
        _DESCRIPTOR_ONLY[id(readout)] = R.calibrate_novelty({"descriptor": readout.held_out["distances"]["descriptor"]},
                                                            readout.held_out["seconds"])
    models, threshold = _DESCRIPTOR_ONLY[id(readout)]
    d = readout.distances(crops, whole, np.zeros(readout.embedded.shape[1], np.float32))["descriptor"]
    return bool(R.novelty_score(models, {"descriptor": np.array([d])}, np.array([seconds]))[0] <= threshold)


def _unknown_rate(readout, notes_iter, embedder) -> dict:
    from partita.search import reader as R
    from partita.search.embed import embed_notes

    flags, flags_d = [], []
    for n in notes_iter:
        try:
            views = R.piece_views(n)
            vec = embed_notes(embedder, [n])[0]
        except Exception:
            continue
        seconds = float((n["onset"] + n["duration"]).max())
        flags.append(not readout.attribute(*views, seconds, vector=vec)["known"])
        flags_d.append(not _known_by_descriptor(readout, *views, seconds))
    return {"pieces": len(flags), "unknown": round(float(np.mean(flags)), 4) if flags else None,
            "unknown_descriptor_only": round(float(np.mean(flags_d)), 4) if flags else None}


def _full(logp: np.ndarray, classes: np.ndarray, L: int) -> np.ndarray:
    out = np.full((len(logp), L), -1e9)
    out[:, classes] = logp
    return out


def _reliability(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> list:
    conf, right = probs.max(1), probs.argmax(1) == y
    out = []
    for lo in np.linspace(0, 1, bins, endpoint=False):
        m = (conf > lo) & (conf <= lo + 1 / bins)
        if m.any():
            out.append([f"{lo:.1f}-{lo + 1 / bins:.1f}", int(m.sum()), round(float(conf[m].mean()), 3), round(float(right[m].mean()), 3)])
    return out


if __name__ == "__main__":
    main()
