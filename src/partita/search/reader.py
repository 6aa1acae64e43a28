"""A composer readout over descriptor crops: attribution that generalises to new works, calibrated,
length-aware about "unknown", and explainable feature by feature.

A piece is read as ``CROPS`` excerpts spread evenly over it (``crop_descriptors``: 30-90 s each,
the whole piece when shorter) plus the whole piece, each described by ``piano_descriptor``. The
readout is one multinomial logistic regression on the standardised descriptors (scikit-learn),
trained on augmented crops of the training works (``partita.represent.features.augmented_crop``:
transposed up to ``TRANSPOSE`` semitones, tempo, dropped notes, velocities), each class weighted
to the same total so that the composer with the most works is not the default answer. A piece's
log-probabilities are the mean of its crops' (test-time augmentation), re-normalised.

Calibration: a temperature on those log-probabilities, fitted on held-out works. "Unknown":
split conformal prediction per length bin (``LENGTH_BINS``): in each bin the threshold is the
``1 - ALPHA`` quantile (finite-sample corrected) of the held-out works' nonconformity
``-log p(top composer)``, so about ``ALPHA`` of pieces by known composers of that length are
called unknown, short ones no more often than long ones.

Why a decision was made: the readout is linear in the standardised descriptor, so the difference
between the logits of the predicted and the runner-up composer is exactly a sum over the
descriptor's features of ``(w_pred - w_runner) * x``: :meth:`Readout.explain` lists the features
that pulled most, by name (``DESCRIPTOR_NAMES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from partita.errors import PartitaError
from partita.represent.features import augmented_crop, piano_descriptor

__all__ = ["ALPHA", "CROPS", "LENGTH_BINS", "Readout", "conformal_thresholds", "crop_descriptors", "fit_readout",
           "length_bins", "load_reader", "fit_reader", "piece_views"]

CROPS = 8
CROP_SECONDS = (30.0, 90.0)
TRANSPOSE = 3
ALPHA = 0.05
#: Training pieces the novelty of a query is measured against (its nearest ones).
NEIGHBOURS = 5
READER_FILE, READER_WEIGHTS = "reader.json", "reader.safetensors"
#: Upper edges (seconds) of the length bins of the "unknown" threshold; the last bin is open.
LENGTH_BINS = (60.0, 180.0, 360.0)
BIN_NAMES = ("< 1 min", "1-3 min", "3-6 min", ">= 6 min")


def length_bins(seconds: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(LENGTH_BINS), np.asarray(seconds, np.float64), side="right")


def crop_descriptors(notes: np.ndarray, *, seed: int = 0, crops: int = CROPS, transpose: int = 0,
                     chord_tolerance: float = 0.05) -> np.ndarray:
    """``(k, D)`` descriptors of up to ``crops`` excerpts of a piece. ``transpose=0``: excerpts
    evenly spread, not augmented (what a query is read with; ``seed`` unused); else augmented
    crops drawn with ``seed`` (training views). A piece too short for a crop is described whole."""
    from partita.io.midi import pitched

    notes = pitched(notes, sort=True)
    if len(notes) < 2:
        raise PartitaError("fewer than 2 pitched notes to describe")
    out = []
    if transpose:
        rng = np.random.default_rng(seed)
        for _ in range(crops):
            try:
                out.append(piano_descriptor(augmented_crop(notes, rng, crop_seconds=CROP_SECONDS, transpose=transpose),
                                            chord_tolerance=chord_tolerance))
            except ValueError:
                continue
    else:
        onset = notes["onset"].astype(np.float64)
        length = float(np.mean(CROP_SECONDS))
        first, last = float(onset[0]), float(onset[-1])
        if last - first > length:
            for start in np.linspace(first, last - length, crops):
                keep = (onset >= start) & (onset < start + length)
                if keep.sum() >= 2:
                    out.append(piano_descriptor(notes[keep], chord_tolerance=chord_tolerance))
    if not out:
        out.append(piano_descriptor(notes, chord_tolerance=chord_tolerance))
    return np.stack(out).astype(np.float32)


def conformal_thresholds(nonconformity: np.ndarray, bins: np.ndarray, *, alpha: float = ALPHA,
                         min_per_bin: int = 20) -> np.ndarray:
    """Per length bin, the split-conformal threshold: the ``ceil((n + 1)(1 - alpha)) / n``
    quantile of the bin's held-out nonconformity. A bin with fewer than ``min_per_bin`` pieces
    borrows the threshold of all pieces together."""
    nonconformity, bins = np.asarray(nonconformity, np.float64), np.asarray(bins)

    def q(x):
        n = len(x)
        if n == 0:
            return np.inf
        level = min(1.0, np.ceil((n + 1) * (1 - alpha)) / n)
        return float(np.quantile(x, level, method="higher"))

    overall = q(nonconformity)
    return np.array([q(nonconformity[bins == b]) if (bins == b).sum() >= min_per_bin else overall
                     for b in range(len(LENGTH_BINS) + 1)])


@dataclass
class Readout:
    """Standardisation + a multinomial linear readout over descriptors (module doc)."""

    labels: list[str]
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (L, D) on standardised descriptors
    bias: np.ndarray  # (L,)
    temperature: float = 1.0
    references: Optional[np.ndarray] = None  # (N, D) standardised mean views of the training pieces
    thresholds: Optional[np.ndarray] = None  # per length bin, of the novelty; None: never unknown
    fitted: dict = field(default_factory=dict)

    def _z(self, descriptors: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(np.asarray(descriptors, np.float64)) - self.mean) / self.scale

    def logits(self, descriptors: np.ndarray) -> np.ndarray:
        return self._z(descriptors) @ self.weight.T + self.bias

    def log_proba(self, crops: np.ndarray, whole: Optional[np.ndarray] = None) -> np.ndarray:
        """A piece's log-probabilities (before the temperature): the mean over its crops (and
        its whole descriptor) of each view's log-softmax, re-normalised."""
        views = np.asarray(crops, np.float64) if whole is None else np.vstack([crops, np.atleast_2d(whole)])
        z = self.logits(views)
        z = z - z.max(1, keepdims=True)
        logp = (z - np.log(np.exp(z).sum(1, keepdims=True))).mean(0)
        return logp - np.log(np.exp(logp - logp.max()).sum()) - logp.max()

    def probabilities(self, logp: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(logp) / self.temperature
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def explain(self, crops: np.ndarray, whole: Optional[np.ndarray], a: int, b: int, top: int = 5) -> list[dict]:
        """The descriptor features that moved the decision between labels ``a`` (chosen) and
        ``b`` (runner-up) most, in either direction: ``(w_a - w_b) * z`` of the mean
        standardised view, which sums (with the biases) to the two labels' mean logit gap."""
        from partita.represent.features import DESCRIPTOR_NAMES

        views = np.asarray(crops, np.float64) if whole is None else np.vstack([crops, np.atleast_2d(whole)])
        z = self._z(views).mean(0)
        contribution = (self.weight[a] - self.weight[b]) * z
        order = np.argsort(-np.abs(contribution))[:top]
        return [{"feature": DESCRIPTOR_NAMES[j], "toward": self.labels[a] if contribution[j] > 0 else self.labels[b],
                 "logit": round(float(contribution[j]), 3), "value_sd": round(float(z[j]), 2)} for j in order]

    def novelty(self, crops: np.ndarray, whole: Optional[np.ndarray] = None) -> float:
        """Root mean squared distance of the piece's mean standardised view to its ``NEIGHBOURS``
        nearest training pieces: music unlike any piece the readout learnt from is far."""
        views = np.asarray(crops, np.float64) if whole is None else np.vstack([crops, np.atleast_2d(whole)])
        return float(_knn_distance(self._z(views).mean(0, keepdims=True), self.references)[0])

    def attribute(self, crops: np.ndarray, whole: Optional[np.ndarray], seconds: float, k: int = 3,
                  explain: int = 5) -> dict:
        """One piece: ``verdict`` (a label or "unknown composer"), ``known``, ``novelty`` and the
        ``threshold`` of its length bin, ``top`` (k labels, calibrated probabilities) and ``why``
        (the features between the top two labels, :meth:`explain`)."""
        p = self.probabilities(self.log_proba(crops, whole))[0]
        order = np.argsort(-p, kind="stable")
        nov = self.novelty(crops, whole)
        b = int(length_bins(np.array([seconds]))[0])
        limit = float(self.thresholds[b]) if self.thresholds is not None else float("inf")
        known = nov <= limit
        return {
            "verdict": self.labels[order[0]] if known else "unknown composer", "known": bool(known),
            "novelty": round(nov, 4), "threshold": limit if np.isfinite(limit) else None, "length_bin": BIN_NAMES[b],
            "top": [{"label": self.labels[j], "probability": float(p[j])} for j in order[:k]],
            "why": {"between": [self.labels[order[0]], self.labels[order[1]]],
                    "features": self.explain(crops, whole, int(order[0]), int(order[1]), top=explain)} if len(order) > 1 else None,
        }

    # ---------------------------------------------------------------- files
    def save(self, folder) -> None:
        """``reader.safetensors`` (the arrays) and ``reader.json`` (labels, temperature,
        thresholds and how they were fitted) in ``folder``."""
        import json
        from pathlib import Path

        from safetensors.numpy import save_file

        from partita.io.files import atomic_path, atomic_write

        folder = Path(folder)
        arrays = {"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                  "weight": self.weight.astype(np.float32), "bias": np.maximum(self.bias, -1e4).astype(np.float32),
                  "references": self.references.astype(np.float16)}
        with atomic_path(folder / READER_WEIGHTS) as tmp:
            save_file(arrays, str(tmp))
        atomic_write(folder / READER_FILE, json.dumps({
            "method": "multinomial logistic regression on standardised piano descriptors of crops, class-balanced; "
                      "probabilities: mean crop log-probability / temperature; unknown: split-conformal threshold per "
                      "length bin on the distance to the nearest training pieces",
            "labels": self.labels, "temperature": self.temperature, "neighbours": NEIGHBOURS,
            "length_bins": list(LENGTH_BINS), "thresholds": None if self.thresholds is None else self.thresholds.tolist(),
            "fitted": self.fitted}, indent=1, ensure_ascii=False) + "\n")


def load_reader(folder) -> Optional[Readout]:
    """The readout saved in an index folder, or None when it has none."""
    from pathlib import Path

    folder = Path(folder)
    if not (folder / READER_FILE).is_file() or not (folder / READER_WEIGHTS).is_file():
        return None
    from safetensors.numpy import load_file

    from partita.search.index import read_json

    d = read_json(folder / READER_FILE, "composer readout")
    try:
        a = load_file(str(folder / READER_WEIGHTS))
        return Readout(labels=list(d["labels"]), mean=a["mean"].astype(np.float64), scale=a["scale"].astype(np.float64),
                       weight=a["weight"].astype(np.float64), bias=a["bias"].astype(np.float64),
                       temperature=float(d["temperature"]), references=a["references"].astype(np.float32),
                       thresholds=None if d.get("thresholds") is None else np.asarray(d["thresholds"], np.float64),
                       fitted=dict(d.get("fitted") or {}))
    except Exception as e:  # a damaged file: one line, never a traceback
        raise PartitaError(f"{folder}: corrupt composer readout ({type(e).__name__}); run 'partita embed' on the index again") from None


def _knn_distance(queries: np.ndarray, references: np.ndarray, k: int = None) -> np.ndarray:
    k = min(k or NEIGHBOURS, len(references))
    r = np.asarray(references, np.float32)
    q = np.asarray(queries, np.float32)
    d2 = (q * q).sum(1)[:, None] - 2 * q @ r.T + (r * r).sum(1)[None, :]
    return np.sqrt(np.maximum(np.sort(d2, axis=1)[:, :k], 0).mean(1) / q.shape[1])


def fit_readout(train_crops: Sequence[np.ndarray], whole: Sequence[np.ndarray], y: np.ndarray, n_labels: int, *,
                labels: Optional[list[str]] = None, C: float = 0.05, seed: int = 0) -> Readout:
    """A readout from the training pieces' crops and whole descriptors (rows of ``y``), each class
    weighted to the same total (every piece's views together weigh one piece)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    xs, ys, ws = [], [], []
    per_class = np.bincount(y, minlength=n_labels).astype(np.float64)
    for c, w, label in zip(train_crops, whole, y):
        views = np.vstack([c, np.atleast_2d(w)])
        xs.append(views)
        ys.append(np.full(len(views), label))
        ws.append(np.full(len(views), 1.0 / (len(views) * per_class[label])))
    x, t, sw = np.vstack(xs).astype(np.float64), np.concatenate(ys), np.concatenate(ws)
    sw *= len(y) / sw.sum()
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-6] = 1.0
    clf = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit((x - mean) / scale, t, sample_weight=sw)
    weight = np.zeros((n_labels, x.shape[1]))
    bias = np.full(n_labels, -1e9)
    weight[clf.classes_] = clf.coef_
    bias[clf.classes_] = clf.intercept_
    return Readout(labels=labels or [str(i) for i in range(n_labels)], mean=mean, scale=scale, weight=weight, bias=bias)


def piece_views(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A piece's (crops, whole) descriptors, as the readout reads a query."""
    return crop_descriptors(notes), piano_descriptor(notes)


def fit_reader(notes: Sequence[np.ndarray], labels: Sequence[Optional[str]], groups: Sequence[Optional[str]], *,
               min_works: int = 5, folds: int = 5, seed: int = 0, progress=None) -> Optional[Readout]:
    """A calibrated readout of the labels with at least ``min_works`` works (``groups``; a piece
    without a group is its own work), or None when fewer than 2 labels have that many.

    Temperature and "unknown" thresholds come from held-out works: ``folds``-fold cross-fitting
    grouped by work (no work on both sides), and the numbers it saw (top-1, per-composer recall,
    ECE, unknown rate per length bin) are recorded in ``fitted``; the final readout is then fit on
    every piece."""
    from sklearn.model_selection import GroupKFold

    from partita.search.attribute import expected_calibration_error, fit_temperature

    groups = [g if g is not None else f"piece-{i}" for i, g in enumerate(groups)]
    works: dict = {}
    for lab, g in zip(labels, groups):
        if lab is not None:
            works.setdefault(lab, set()).add(g)
    names = sorted(lab for lab, w in works.items() if len(w) >= min_works)
    if len(names) < 2:
        return None
    rows = [i for i, lab in enumerate(labels) if lab in names]
    y = np.array([names.index(labels[i]) for i in rows])
    g = np.array([groups[i] for i in rows])
    L = len(names)
    views, train, seconds = [], [], []
    for k, i in enumerate(rows):
        n = notes[i]
        views.append(piece_views(n))
        train.append(crop_descriptors(n, seed=seed * 1_000_003 + k, transpose=TRANSPOSE))
        seconds.append(float((n["onset"] + n["duration"]).max()))
        if progress:
            progress(k + 1, len(rows))
    seconds = np.array(seconds)
    whole = [w for _, w in views]
    splits = list(GroupKFold(n_splits=min(folds, len(set(g)))).split(rows, y, g))
    logp = np.zeros((len(rows), L))
    novelty = np.zeros(len(rows))
    for tr, te in splits:
        r = fit_readout([train[i] for i in tr], [whole[i] for i in tr], y[tr], L, seed=seed)
        r.references = _references(r, [views[i] for i in tr])
        for i in te:
            logp[i] = r.log_proba(*views[i])
            novelty[i] = r.novelty(*views[i])
    t = fit_temperature(logp, y)
    z = np.exp(logp / t - (logp / t).max(1, keepdims=True))
    probs = z / z.sum(1, keepdims=True)
    bins = length_bins(seconds)
    thresholds = conformal_thresholds(novelty, bins)
    pred = probs.argmax(1)
    unknown = np.zeros(len(rows), bool)  # each fold against thresholds from the others
    for tr, te in splits:
        unknown[te] = novelty[te] > conformal_thresholds(novelty[tr], bins[tr])[bins[te]]
    fitted = {
        "pieces": len(rows), "works": len(set(g)), "folds": len(splits), "min_works": min_works,
        "held_out": "cross-fitted, grouped by work",
        "top1": round(float((pred == y).mean()), 4),
        "balanced_top1": round(float(np.mean([(pred[y == c] == c).mean() for c in range(L)])), 4),
        "recall": {names[c]: round(float((pred[y == c] == c).mean()), 4) for c in range(L)},
        "ece": round(expected_calibration_error(probs, y), 4),
        "unknown_by_length": {BIN_NAMES[b]: [int((bins == b).sum()), round(float(unknown[bins == b].mean()), 4)]
                              for b in range(len(BIN_NAMES)) if (bins == b).any()},
        "alpha": ALPHA,
    }
    final = fit_readout(train, whole, y, L, labels=names, seed=seed)
    final.references = _references(final, views)
    final.temperature, final.thresholds, final.fitted = float(t), thresholds, fitted
    return final


def _references(readout: Readout, views: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.stack([readout._z(np.vstack([c, np.atleast_2d(w)])).mean(0) for c, w in views]).astype(np.float32)


def attribute_files(index, readout: Readout, files: Sequence, *, k: int = 3, nearest: int = 3) -> tuple[list, list]:
    """Attribute MIDI files with an index's readout: ``(results, failures)``. Each result is
    :meth:`Readout.attribute`'s dict with ``query`` and ``nearest``: the ``nearest`` closest pieces
    of the index (its embedder) by the predicted and by the runner-up composer, so a reader sees
    what the decision leaned on. Unusable files are ``(path, one-line reason)`` failures."""
    from partita.io import MidiError, load, note_array, preprocess
    from partita.search.index import embed_queries

    vecs, kept, failures = embed_queries(index, files)
    labels = index.column("label")
    results = []
    hits_all = index.search(vecs, len(index)) if len(kept) and nearest > 0 else [[] for _ in kept]
    for path, hits in zip(kept, hits_all):
        try:
            notes = note_array(preprocess(load(path), sustain=True), unit="second")
            views = piece_views(notes)
        except (MidiError, PartitaError, ValueError) as e:
            failures.append((str(path), str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        seconds = float((notes["onset"] + notes["duration"]).max())
        r = readout.attribute(*views, seconds, k=k)
        wanted = [t["label"] for t in r["top"][:2]]
        r["nearest"] = {lab: _distinct_titles([h for h in hits if labels[h.row] == lab], nearest) for lab in wanted}
        results.append({"query": str(path), "seconds": round(seconds, 1), **r})
    return results, failures


def _distinct_titles(hits: list, n: int) -> list[dict]:
    """The first ``n`` hits of distinct titles (the other performances of a work add nothing)."""
    out, seen = [], set()
    for h in hits if n > 0 else ():
        title = h.piece.get("title")
        if title in seen:
            continue
        seen.add(title)
        out.append({"title": title, "id": h.piece.get("id"), "distance": round(h.distance, 4)})
        if len(out) == n:
            break
    return out
