"""Composer attribution of unseen works: leave-works-out across ASAP, next to the feature baseline.

    partita data prepare ../shared/data/asap --out /tmp/asap -j 2
    python benchmarks/attribution.py --corpus /tmp/asap [--folds 5] [--pop ../shared/data/pop909] [--json out.json]

The composers with at least 5 works in ASAP (8: Bach, Beethoven, Chopin, Haydn, Liszt, Mozart,
Schubert, Schumann). Folds are grouped by work (``group``, ASAP's ``folder``): no performance or
score of a test work is trained on. Every method is scored on the held-out works' performances
and, separately, on their scores (quantised, flat velocities: the closest thing here to the
sequenced MIDI of a new work), with per-composer recall and the confusion matrix:

- ``features + LR``: the baseline, standardised ``feature_vector`` (73 values) + logistic
  regression (C = 1), whole pieces;
- ``descriptor + LR``: the same on FeatNet's 360-value ``piano_descriptor``;
- ``crops + LR``: ``partita.search.reader``'s readout: trained on augmented crops of the
  training works (``CROPS`` a piece, 30-90 s, transposed up to 3 semitones) with classes weighted
  to the same total, a piece scored by the mean log-probability over its crops and itself;
- ``featnet-piano centroids``: the shipped embedder's composer centroids (cosine), for reference
  only: featnet-piano was trained on ASAP's train split, so its folds are not all unseen works.

Probabilities: expected calibration error of the raw readout and after temperature scaling fitted
on the other folds' held-out predictions; the "unknown" threshold is set by split conformal
prediction on held-out works per length bin, and the unknown rate is reported by length bin on
held-out works and on POP909 songs (out of domain).
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
    ap.add_argument("--pop-songs", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from sklearn.model_selection import GroupKFold

    from partita.data.corpus import Corpus
    from partita.evaluate.baselines import feature_classifier
    from partita.represent.features import feature_vector, piano_descriptor
    from partita.search import reader as R
    from partita.search.attribute import expected_calibration_error, fit_temperature

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
    train_crops = [R.crop_descriptors(n, seed=10_000 + k, transpose=R.TRANSPOSE) for k, n in enumerate(notes)]
    print(f"{len(rows)} pieces ({is_score.sum()} scores) of {len(set(groups))} works by {len(composers)} composers; "
          f"descriptors in {time.time() - t0:.0f} s")

    folds = list(GroupKFold(n_splits=args.folds).split(rows, y, groups))
    L = len(composers)
    oof = {name: np.zeros((len(rows), L)) for name in ("features + LR", "descriptor + LR", "crops + LR")}
    for k, (tr, te) in enumerate(folds):
        clf = feature_classifier(feats[tr], y[tr])
        oof["features + LR"][te] = _full(clf.predict_log_proba(feats[te]), clf.classes_, L)
        clf = feature_classifier(whole[tr], y[tr], C=0.05)
        oof["descriptor + LR"][te] = _full(clf.predict_log_proba(whole[te]), clf.classes_, L)
        readout = R.fit_readout([train_crops[i] for i in tr], [whole[i] for i in tr], y[tr], L)
        oof["crops + LR"][te] = np.stack([readout.log_proba(crops[i], whole[i]) for i in te])
        print(f"fold {k + 1}/{len(folds)} done ({time.time() - t0:.0f} s)")

    # featnet-piano, for reference (trained on ASAP's train split: not all folds are unseen works).
    import torch

    from partita.bundle import load

    featnet = load("featnet-piano").model.eval()
    with torch.no_grad():
        emb = featnet(torch.from_numpy(whole)).numpy().astype(np.float64)
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
    # Calibration of the readout: raw, and temperature fitted on the other folds' held-out scores.
    logp = oof["crops + LR"]
    raw = np.exp(logp - logp.max(1, keepdims=True))
    raw /= raw.sum(1, keepdims=True)
    cal = np.zeros_like(raw)
    temps = []
    for tr, te in folds:
        t = fit_temperature(logp[tr], y[tr])
        temps.append(t)
        z = logp[te] / t
        z = np.exp(z - z.max(1, keepdims=True))
        cal[te] = z / z.sum(1, keepdims=True)
    report["calibration"] = {
        "ece raw": round(expected_calibration_error(raw, y), 4),
        "ece temperature-scaled (cross-fitted)": round(expected_calibration_error(cal, y), 4),
        "temperatures": [round(t, 3) for t in temps],
        "reliability (bin, pieces, confidence, accuracy)": _reliability(cal, y),
    }
    # Conformal "unknown": per length bin, the (1 - alpha) quantile of held-out nonconformity,
    # cross-fitted (thresholds from the other folds), scored on the held-out fold.
    nonconf = -np.log(np.maximum(cal.max(1), 1e-12))
    bins = R.length_bins(seconds)
    unknown = np.zeros(len(y), bool)
    for tr, te in folds:
        th = R.conformal_thresholds(nonconf[tr], bins[tr], alpha=R.ALPHA)
        unknown[te] = nonconf[te] > th[bins[te]]
    report["unknown"] = {"alpha": R.ALPHA, "held-out works by length bin": {
        R.BIN_NAMES[b]: {"pieces": int((bins == b).sum()), "unknown": round(float(unknown[bins == b].mean()), 4)}
        for b in range(len(R.BIN_NAMES)) if (bins == b).any()}}
    report["unknown"]["held-out works, all"] = round(float(unknown.mean()), 4)
    if args.pop is not None:
        report["unknown"]["pop909"] = _pop(args.pop, args.pop_songs, whole, train_crops, y, L, nonconf, bins, seconds)
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def _pop(folder, n, whole, train_crops, y, L, nonconf, bins, seconds) -> dict:
    """Unknown rate on POP909 songs against a readout of every ASAP piece (thresholds from all
    the held-out nonconformity above)."""
    from partita.io import load, note_array, preprocess
    from partita.search import reader as R

    readout = R.fit_readout(train_crops, list(whole), y, L)
    # the temperature: fit on the held-out log-probabilities is what a shipped reader does; here
    # the cross-fitted mean stands in for it.
    files = sorted(Path(folder).rglob("*.mid"))[:n]
    th = R.conformal_thresholds(nonconf, bins, alpha=R.ALPHA)
    flagged, lens = [], []
    for f in files:
        try:
            notes = note_array(preprocess(load(f), sustain=True), unit="second")
            lp = readout.log_proba(R.crop_descriptors(notes, seed=0), R.piano_descriptor(notes))
        except Exception:
            continue
        p = np.exp(lp - lp.max())
        p /= p.sum()
        length = float((notes["onset"] + notes["duration"]).max())
        b = R.length_bins(np.array([length]))[0]
        flagged.append(-np.log(p.max()) > th[b])
        lens.append(length)
    return {"songs": len(flagged), "unknown": round(float(np.mean(flagged)), 4) if flagged else None}


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
