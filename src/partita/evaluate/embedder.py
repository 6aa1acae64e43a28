"""``partita eval embedder``: an embedder (SiaViT or FeatNet) against feature baselines on held-out pieces.

Pieces: the *reference* set is the train split (the pieces a deployed model would know), the
*validation* split picks thresholds, and every number is measured on the evaluated split (test by
default). Only labels the model was trained on count as known; pieces of labels it never saw
(its card's ``unseen_labels``, or the corpus's ``unseen`` split) are the "unknown" set.

Representations compared, each a unit vector per piece:

* every model given (the SiaViT, a Harmonixr-faithful run, ...): piece embeddings
  (``partita.search.embed``: ``windows`` evenly spread windows, averaged);
* the feature baselines (``evaluate.baselines``): ``represent.features.feature_vector``
  (pitch-class, interval, duration, IOI histograms, range, density, polyphony, velocity, chord
  intervals) standardised on the reference set, compared by cosine ("features (cosine)"), and a
  logistic regression trained on the reference set ("features + LR"), whose vector is ``sqrt(p)``
  of the predicted label probabilities (unit length: cosine = Bhattacharyya coefficient).

Metrics, per task (a set of labels; pieces of other labels are left out everywhere):

* pair accuracy: a threshold on the distance is chosen on validation pairs (best balanced
  accuracy), then applied to a balanced set of test pairs (all same-label pairs, as many
  different-label pairs drawn with a seed); ROC-AUC over all test pairs;
* top-1 / top-3 attribution: a model names the label whose reference centroid is nearest
  (``centroid``), or a logistic regression on its embeddings (``+ LR``); the baseline uses its LR;
* retrieval mAP@10: each test piece queries the reference set; relevant = same label;
* silhouette of the test pieces' label clusters (cosine distance);
* calibration: the expected calibration error (ECE) of the top-1 probability, for centroids with
  ``softmax(cosine / T)``, ``T`` fit on the valid split as ``partita attribute`` does;
* per label: the share of its test pieces each representation names right (top-1);
* retrieval across renditions, where the corpus says which pieces are performances and which the
  score of a work (ASAP's ``kind``): within the evaluated split, each performance queries the
  scores ("performance -> score") and the other performances ("performance -> performance");
  recall at 1 and 5, a hit being a piece of the same work (``group``). Splits keep a work whole,
  so every rendition of a test work is in the test split and none in the reference;
* unknown detection (when there are unseen-label pieces): the score of a piece is its best
  cosine to a known label centroid (the baseline: its largest LR probability); the threshold
  accepts 95% of the known validation pieces; reported: the share of unseen-label pieces called
  unknown and the share of known test pieces wrongly called unknown, and the ROC-AUC of the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.evaluate.baselines import (
    feature_classifier,
    per_label_top1,
    rendition_retrieval,
    standardised_unit,
    topk_accuracy,
)
from partita.evaluate.pairs import all_pairs, balanced_pairs, best_threshold, distances, roc_auc, silhouette

#: Default task: every known label. Callers pass ``tasks`` for subsets ({name: [labels]}).
TASKS: dict[str, list[str] | None] = {"all labels": None}
FEATURES_COSINE = "features (cosine)"
FEATURES_LR = "features + LR (baseline)"
ACCEPT_KNOWN = 0.95


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def _lr(x: np.ndarray, y: np.ndarray, seed: int):
    return feature_classifier(x, y, C=1.0, seed=seed)


def map_at_k(queries: np.ndarray, q_labels: np.ndarray, ref: np.ndarray, r_labels: np.ndarray, k: int = 10) -> float:
    """Mean average precision at ``k`` (AP normalised by min(k, relevant in the reference))."""
    sims = queries @ ref.T
    top = np.argsort(-sims, axis=1)[:, :k]
    aps = []
    for q, row in enumerate(top):
        rel = r_labels[row] == q_labels[q]
        n_rel = int(np.sum(r_labels == q_labels[q]))
        if n_rel == 0:
            continue
        hits = np.cumsum(rel)
        precision = hits / np.arange(1, len(row) + 1)
        aps.append(float(np.sum(precision * rel) / min(k, n_rel)))
    return float(np.mean(aps)) if aps else float("nan")


def task_metrics(vec: dict[str, np.ndarray], lab: dict[str, np.ndarray], *, attribution: Callable, seed: int,
                 probabilities: bool = False) -> dict:
    """Pair, attribution, calibration, retrieval and cluster metrics of one representation on one task.

    ``vec``/``lab``: unit vectors and label ids for "ref", "valid", "test"; ``attribution(split)``
    returns ``(scores [n, n_classes], classes)`` for that split's pieces: probabilities when
    ``probabilities``, else similarities, turned into probabilities by ``softmax(s / T)`` with the
    temperature fit on the valid split (what ``partita attribute`` does) for the ECE. ``per_label``
    holds the label ids' top-1 (``per_label_top1``).
    """
    out: dict = {"n_test": int(len(lab["test"]))}
    iv, jv, yv = balanced_pairs(lab["valid"], np.random.default_rng([seed, 11]))
    threshold = best_threshold(distances(vec["valid"], iv, jv), yv) if len(yv) else 1.0
    it, jt, yt = balanced_pairs(lab["test"], np.random.default_rng([seed, 12]))
    dt = distances(vec["test"], it, jt)
    out["pair_acc"] = float(np.mean((dt < threshold) == (yt == 1))) if len(yt) else float("nan")
    ia, ja, ya = all_pairs(lab["test"])
    out["pair_auc"] = roc_auc(-distances(vec["test"], ia, ja), ya) if len(ya) else float("nan")
    out["threshold"] = float(threshold)
    scores, classes = attribution("test")
    out.update(topk_accuracy(scores, classes, lab["test"], ks=(1, 3)))
    out["per_label"] = per_label_top1(scores, classes, lab["test"])
    out["ece"] = _ece(scores, classes, lab["test"], None if probabilities else attribution("valid"), lab["valid"])
    out["map@10"] = map_at_k(vec["test"], lab["test"], vec["ref"], lab["ref"])
    out["silhouette"] = silhouette(vec["test"], lab["test"])
    return out


def _ece(scores: np.ndarray, classes: np.ndarray, labels: np.ndarray, valid: Optional[tuple], valid_labels) -> float:
    """Expected calibration error of the test probabilities (module doc of ``task_metrics``)."""
    from partita.search.attribute import expected_calibration_error, fit_temperature

    column = {int(c): k for k, c in enumerate(np.asarray(classes).tolist())}
    keep = np.array([int(y) in column for y in labels], bool)
    if not keep.any():
        return float("nan")
    target = np.array([column[int(y)] for y in labels[keep]])
    probs = np.asarray(scores, np.float64)[keep]
    if valid is not None:
        v_scores, _ = valid
        v_keep = np.array([int(y) in column for y in valid_labels], bool)
        if not v_keep.any():
            return float("nan")
        t = fit_temperature(np.asarray(v_scores, np.float64)[v_keep], np.array([column[int(y)] for y in valid_labels[v_keep]]))
        z = probs / t
        z = np.exp(z - z.max(1, keepdims=True))
        probs = z / z.sum(1, keepdims=True)
    return expected_calibration_error(probs, target)


def _centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(labels)
    return _unit(np.stack([vectors[labels == c].mean(0) for c in classes])), classes


def evaluate_embedder(
    model_path: str | Path | None,
    corpus_dir: str | Path,
    *,
    split: str = "test",
    compare: Optional[dict[str, str | Path]] = None,
    tasks: Optional[dict[str, list[str] | None]] = None,
    windows: int = 8,
    batch_size: int = 32,
    seed: int = 0,
    progress: Optional[Callable[[str], Callable[[int, int], None] | None]] = None,
) -> dict:
    """Metrics of the model (and ``compare`` models) and the feature baseline on ``split`` (module doc).

    ``model_path`` None: the shipped model. ``progress(name)`` may return a ``callback(done, total)``.
    """
    from partita.bundle import load
    from partita.represent.features import feature_vector
    from partita.search.embed import embed_corpus

    corpus = Corpus(corpus_dir)
    from partita.pretrained import SIAVIT
    from partita.search.embed import EMBEDDERS

    bundles = {}
    for k, path in enumerate([model_path, *(compare or {}).values()]):
        b = load(path, EMBEDDERS, default=SIAVIT)
        name = {"siavit": "SiaViT", "featnet": "FeatNet"}[b.family] if k == 0 else list(compare)[k - 1]
        bundles[name] = b
    card = next(iter(bundles.values())).card
    unseen = set(card.get("unseen_labels") or [])
    known = [l for l in (card.get("labels") or corpus.labels) if l not in unseen and l in corpus.labels]
    if len(known) < 2:
        raise PartitaError(f"{corpus.path}: fewer than 2 of the model's labels are in this corpus")
    index = {l: k for k, l in enumerate(known)}
    rows = corpus.pieces
    sets = {
        "ref": [i for i, r in enumerate(rows) if r["split"] == "train" and r["label"] in index],
        "valid": [i for i, r in enumerate(rows) if r["split"] == "valid" and r["label"] in index],
        "test": [i for i, r in enumerate(rows) if r["split"] == split and r["label"] in index],
        "unseen": [i for i, r in enumerate(rows) if r["label"] is not None and r["label"] not in index
                   and (r["label"] in unseen or r["split"] == "unseen")],
    }
    if not sets["test"]:
        raise PartitaError(f"{corpus.path}: no {split} pieces of the model's labels")
    if not sets["valid"]:
        raise PartitaError(f"{corpus.path}: no validation pieces to choose thresholds on")
    everything = sorted({i for s in sets.values() for i in s})

    reps: dict[str, dict[int, np.ndarray]] = {}
    for name, b in bundles.items():
        cb = progress(f"embedding with {name}") if progress else None
        vectors, kept, _failures = embed_corpus(b.model, corpus, everything, windows=windows, batch_size=batch_size,
                                                progress=cb)
        reps[name] = dict(zip(kept, vectors))
    feats = {i: feature_vector(corpus.notes(i)).astype(np.float64) for i in everything}
    usable = set(everything)
    for r in reps.values():
        usable &= set(r)
    sets = {k: [i for i in v if i in usable] for k, v in sets.items()}
    label_of = {i: rows[i]["label"] for i in everything}
    # The cosine baseline: features standardised with the reference set's statistics.
    kept = sorted(usable)
    if kept and sets["ref"]:
        fit = np.stack([feats[i] for i in sets["ref"]])
        reps[FEATURES_COSINE] = dict(zip(kept, standardised_unit(np.stack([feats[i] for i in kept]), fit)))

    def arr(rep: dict, idx: list[int]) -> np.ndarray:
        return np.stack([rep[i] for i in idx]) if idx else np.zeros((0, 1), np.float32)

    results: dict = {"split": split, "known_labels": known, "unseen_labels": sorted({label_of[i] for i in sets["unseen"]}),
                     "pieces": {k: len(v) for k, v in sets.items()}, "windows": windows, "tasks": {}}
    chosen = TASKS if tasks is None else tasks
    for task, labels in chosen.items():
        labels = known if labels is None else [l for l in labels if l in index]
        if len(labels) < 2:
            continue
        sub = {k: [i for i in sets[k] if label_of[i] in labels] for k in ("ref", "valid", "test")}
        if not sub["test"] or not sub["valid"] or len({label_of[i] for i in sub["ref"]}) < 2:
            continue
        lab = {k: np.array([index[label_of[i]] for i in v]) for k, v in sub.items()}
        task_rows: dict = {}
        for name, rep in reps.items():
            vec = {k: arr(rep, v) for k, v in sub.items()}
            cents, classes = _centroids(vec["ref"], lab["ref"])
            centroid = task_metrics(
                vec, lab, attribution=lambda s, v=vec, c=cents, k=classes: (v[s] @ c.T, k), seed=seed)
            if name == FEATURES_COSINE:  # its logistic regression is the "features + LR" row
                task_rows[name] = centroid
                continue
            task_rows[f"{name} (centroid)"] = centroid
            clf = _lr(vec["ref"], lab["ref"], seed)
            row = task_metrics(vec, lab, attribution=lambda s, v=vec, m=clf: (m.predict_proba(v[s]), m.classes_),
                               seed=seed, probabilities=True)
            task_rows[f"{name} + LR"] = {k: row[k] for k in ("n_test", "top1", "top3", "ece", "per_label")}
        fx = {k: arr(feats, v) for k, v in sub.items()}
        clf = _lr(fx["ref"], lab["ref"], seed)
        fvec = {k: _unit(np.sqrt(clf.predict_proba(fx[k]))) for k in fx}
        task_rows[FEATURES_LR] = task_metrics(
            fvec, lab, attribution=lambda s, m=clf: (m.predict_proba(fx[s]), m.classes_), seed=seed, probabilities=True)
        for row in task_rows.values():  # label ids -> names
            row["per_label"] = {known[int(k)]: {**v, "named": known[int(v["named"])]} for k, v in row["per_label"].items()}
        results["tasks"][task] = {"labels": labels, "test_per_label": {l: sum(label_of[i] == l for i in sub["test"]) for l in labels},
                                  "rows": task_rows}

    # Retrieval across renditions of a work, within the evaluated split (module doc).
    test = sets["test"]
    groups = [rows[i].get("group") or f"id:{rows[i]['id']}" for i in test]
    kinds = [rows[i].get("kind") for i in test]
    renditions = {name: rendition_retrieval(arr(rep, test), groups, kinds) for name, rep in reps.items()}
    if any(renditions.values()):
        results["renditions"] = {name: r for name, r in renditions.items() if r}
        results["renditions_works"] = len({g for g, k in zip(groups, kinds) if k == "performance"})

    if sets["unseen"]:
        results["unknown"] = _unknown(reps, feats, sets, label_of, index, seed)
    return results


def _unknown(reps, feats, sets, label_of, index, seed) -> dict:
    """Unknown-label detection for every representation (module doc)."""
    lab_ref = np.array([index[label_of[i]] for i in sets["ref"]])
    out = {}

    def report(score_valid, score_test, score_unseen):
        t = float(np.quantile(score_valid, 1 - ACCEPT_KNOWN))
        y = np.r_[np.zeros(len(score_test)), np.ones(len(score_unseen))]
        return {"threshold": t, "unknown_rate_unseen": float(np.mean(score_unseen < t)),
                "unknown_rate_known_test": float(np.mean(score_test < t)),
                "auc": roc_auc(-np.r_[score_test, score_unseen], y), "n_unseen": int(len(score_unseen))}

    for name, rep in reps.items():
        ref = np.stack([rep[i] for i in sets["ref"]])
        cents, _ = _centroids(ref, lab_ref)
        score = lambda key: np.stack([rep[i] for i in sets[key]]) @ cents.T
        out[name] = report(score("valid").max(1), score("test").max(1), score("unseen").max(1))
    clf = _lr(np.stack([feats[i] for i in sets["ref"]]), lab_ref, seed)
    prob = lambda key: clf.predict_proba(np.stack([feats[i] for i in sets[key]])).max(1)
    out["features + LR (baseline)"] = report(prob("valid"), prob("test"), prob("unseen"))
    return out
