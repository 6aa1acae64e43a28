"""A composer readout over descriptor crops: attribution that generalises to new works, calibrated,
length-aware about "unknown", and explainable feature by feature.

A piece is read as ``CROPS`` excerpts spread evenly over it (``crop_descriptors``: 30-90 s each,
the whole piece when shorter) plus the whole piece, each described by ``piano_descriptor``. The
readout is one multinomial logistic regression on the standardised descriptors (scikit-learn),
trained on augmented crops of the training works (``partita.represent.features.augmented_crop``:
transposed up to ``TRANSPOSE`` semitones, tempo, dropped notes, velocities), each class weighted
to the same total so that the composer with the most works is not the default answer. A piece's
log-probabilities are the mean of its crops' (test-time augmentation), re-normalised.

Calibration: a temperature on those log-probabilities, fitted on held-out works.

"Unknown" (novelty): how far a piece is from the pieces the readout learnt from, measured twice
and combined: (1) the root mean squared distance of its mean standardised view, each feature
clipped to +-``CLIP`` sd (so one extreme histogram bin cannot dominate), to its ``NEIGHBOURS``
nearest training pieces; (2) where the index's vectors are given, the mean cosine distance of
its embedding (the index's own embedder: what ``similar`` ranks by) to its ``NEIGHBOURS`` nearest
training pieces. Short pieces are farther from everything (fewer notes, noisier descriptors), so
each log-distance is normalised for length: a location-scale model linear in log seconds
(:class:`LengthModel`), fitted on the held-out works' distances, turns it into a standard score
whatever the length. The novelty is the mean of those scores, and the threshold the split-
conformal ``1 - ALPHA`` quantile (finite-sample corrected) of the held-out works' novelty: about
``ALPHA`` of pieces by known composers are called unknown, short ones no more often than long
ones, and the threshold of the few short pieces borrows strength from all the others.

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

__all__ = ["ALPHA", "CROPS", "LENGTH_BINS", "LengthModel", "Readout", "calibrate_novelty", "conformal_threshold",
           "crop_descriptors", "fit_readout", "length_bins", "load_reader", "fit_reader", "novelty_score", "piece_views"]

CROPS = 8
CROP_SECONDS = (30.0, 90.0)
TRANSPOSE = 3
ALPHA = 0.05
#: Training pieces the novelty of a query is measured against (its nearest ones).
NEIGHBOURS = 5
#: Standardised descriptor values are clipped to +-CLIP sd before distances are taken.
CLIP = 3.0
#: Distances below this count as this (the float16 precision of the stored references).
FLOOR = 1e-3
READER_FILE, READER_WEIGHTS = "reader.json", "reader.safetensors"
#: Upper edges (seconds) of the length bins "unknown" is reported by; the last bin is open.
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


def conformal_threshold(scores: np.ndarray, *, alpha: float = ALPHA) -> float:
    """The split-conformal threshold of held-out scores: their ``ceil((n + 1)(1 - alpha)) / n``
    quantile, so a new exchangeable score exceeds it with probability at most ``alpha``."""
    x = np.asarray(scores, np.float64)
    n = len(x)
    if n == 0:
        return float("inf")
    level = min(1.0, np.ceil((n + 1) * (1 - alpha)) / n)
    return float(np.quantile(x, level, method="higher"))


@dataclass
class LengthModel:
    """A location-scale model of a log-distance against log seconds: ``log d = a + b log s +
    exp(c + e log s) * r``; :meth:`score` returns the residual ``r`` standardised by its held-out
    mean and sd. Lengths are clipped to the range it was fitted on (no extrapolation), distances
    below ``FLOOR`` count as ``FLOOR`` (the precision of the float16 references)."""

    location: tuple  # (b, a): slope and intercept of log d on log seconds
    scale: tuple  # (e, c): the same for log |residual|
    mean: float
    sd: float
    log_seconds: tuple  # (min, max) of the fit

    @classmethod
    def fit(cls, distances: np.ndarray, seconds: np.ndarray) -> "LengthModel":
        ls = np.log(np.maximum(np.asarray(seconds, np.float64), 1.0))
        ld = np.log(np.maximum(np.asarray(distances, np.float64), FLOOR))
        A = np.vander(ls, 2)
        loc = np.linalg.lstsq(A, ld, rcond=None)[0]
        res = ld - A @ loc
        sca = np.linalg.lstsq(A, np.log(np.abs(res) + 1e-6), rcond=None)[0]
        r = res / np.exp(A @ sca)
        return cls(tuple(float(x) for x in loc), tuple(float(x) for x in sca), float(r.mean()),
                   float(max(r.std(), 1e-6)), (float(ls.min()), float(ls.max())))

    def score(self, distances, seconds) -> np.ndarray:
        ls = np.clip(np.log(np.maximum(np.asarray(seconds, np.float64), 1.0)), *self.log_seconds)
        ld = np.log(np.maximum(np.asarray(distances, np.float64), FLOOR))
        A = np.vander(np.atleast_1d(ls), 2)
        r = (np.atleast_1d(ld) - A @ np.asarray(self.location)) / np.exp(A @ np.asarray(self.scale))
        return (r - self.mean) / self.sd

    def to_dict(self) -> dict:
        return {"location": list(self.location), "scale": list(self.scale), "mean": self.mean, "sd": self.sd,
                "log_seconds": list(self.log_seconds)}

    @classmethod
    def from_dict(cls, d: dict) -> "LengthModel":
        return cls(tuple(d["location"]), tuple(d["scale"]), float(d["mean"]), float(d["sd"]), tuple(d["log_seconds"]))


def novelty_score(models: dict, distances: dict, seconds) -> np.ndarray:
    """The mean of the length-normalised scores of the distances ``models`` has a model for."""
    return np.mean([models[k].score(distances[k], seconds) for k in models], axis=0)


def calibrate_novelty(distances: dict, seconds: np.ndarray, *, alpha: float = ALPHA) -> tuple[dict, float]:
    """Length models of held-out ``distances`` (name -> array) and the split-conformal threshold
    of the novelty they give: ``(models, threshold)``."""
    models = {k: LengthModel.fit(v, seconds) for k, v in distances.items()}
    return models, conformal_threshold(novelty_score(models, distances, seconds), alpha=alpha)


@dataclass
class Readout:
    """Standardisation + a multinomial linear readout over descriptors (module doc)."""

    labels: list[str]
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (L, D) on standardised descriptors
    bias: np.ndarray  # (L,)
    temperature: float = 1.0
    references: Optional[np.ndarray] = None  # (N, D) clipped standardised mean views of the training pieces
    embedded: Optional[np.ndarray] = None  # (N, E) the training pieces' unit vectors by the index's embedder
    embedded_ids: Optional[list] = None  # their piece ids in the index (saved instead of the vectors: bind())
    embedder: Optional[str] = None  # that embedder's fingerprint
    length_models: dict = field(default_factory=dict)  # "descriptor" / "embedder" -> LengthModel
    threshold: Optional[float] = None  # of the novelty; None: never unknown
    fitted: dict = field(default_factory=dict)
    #: The cross-fitted held-out distances and lengths it was calibrated on (fit_reader; not saved).
    held_out: Optional[dict] = None

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

    def distances(self, crops: np.ndarray, whole: Optional[np.ndarray] = None, vector: Optional[np.ndarray] = None) -> dict:
        """The raw distances the novelty combines: ``descriptor`` (RMS distance of the piece's mean
        clipped standardised view to its ``NEIGHBOURS`` nearest training pieces) and, for a readout
        with the index's vectors, ``embedder`` (mean cosine distance of ``vector`` to its
        ``NEIGHBOURS`` nearest training pieces)."""
        views = np.asarray(crops, np.float64) if whole is None else np.vstack([crops, np.atleast_2d(whole)])
        out = {"descriptor": float(_knn_distance(_mean_view(self, views)[None], self.references)[0])}
        if self.embedded is None and self.embedded_ids:
            raise PartitaError("this readout reads its pieces' vectors from its index: call bind(index) first")
        if self.embedded is not None:
            if vector is None:
                raise PartitaError("this readout measures novelty with the index's embedder too: pass the piece's vector")
            out["embedder"] = float(_cosine_knn(np.atleast_2d(vector), self.embedded)[0])
        return out

    def novelty(self, crops: np.ndarray, whole: Optional[np.ndarray] = None, seconds: float = 60.0,
                vector: Optional[np.ndarray] = None) -> float:
        """How unlike every training piece a piece is, in held-out standard scores for its length
        (module doc); a readout without length models gives the raw descriptor distance."""
        d = self.distances(crops, whole, vector)
        if not self.length_models:
            return d["descriptor"]
        return float(novelty_score(self.length_models, d, np.array([seconds]))[0])

    def attribute(self, crops: np.ndarray, whole: Optional[np.ndarray], seconds: float, k: int = 3,
                  explain: int = 5, vector: Optional[np.ndarray] = None) -> dict:
        """One piece: ``verdict`` (a label or "unknown composer"), ``known``, ``novelty`` and the
        ``threshold`` it is held to, the raw ``distances``, ``top`` (k labels, calibrated
        probabilities) and ``why`` (the features between the top two labels, :meth:`explain`).
        ``vector``: the piece's embedding by the index's embedder (needed when the readout has
        the index's vectors)."""
        p = self.probabilities(self.log_proba(crops, whole))[0]
        order = np.argsort(-p, kind="stable")
        d = self.distances(crops, whole, vector)
        nov = float(novelty_score(self.length_models, d, np.array([seconds]))[0]) if self.length_models else d["descriptor"]
        b = int(length_bins(np.array([seconds]))[0])
        limit = float(self.threshold) if self.threshold is not None else float("inf")
        known = nov <= limit
        return {
            "verdict": self.labels[order[0]] if known else "unknown composer", "known": bool(known),
            "novelty": round(nov, 4), "threshold": round(limit, 4) if np.isfinite(limit) else None, "length_bin": BIN_NAMES[b],
            "distances": {key: round(v, 4) for key, v in d.items()},
            "top": [{"label": self.labels[j], "probability": float(p[j])} for j in order[:k]],
            "why": {"between": [self.labels[order[0]], self.labels[order[1]]],
                    "features": self.explain(crops, whole, int(order[0]), int(order[1]), top=explain)} if len(order) > 1 else None,
        }

    def bind(self, index) -> "Readout":
        """Read the training pieces' vectors from the index they came from (a saved readout of an
        index names its pieces instead of copying their vectors)."""
        if self.embedded is None and self.embedded_ids:
            rows = [index.row_of(i) for i in self.embedded_ids]
            if any(r is None for r in rows):
                raise PartitaError(f"{index.path}: the composer readout names pieces the index lacks; "
                                   f"run 'partita embed' on the index again")
            self.embedded = _unit(index.vectors(rows))
        return self

    # ---------------------------------------------------------------- files
    def save(self, folder, index=None) -> None:
        """``reader.safetensors`` (the arrays: the references in 8 bits, the index's vectors in 16)
        and ``reader.json`` (labels, temperature,
        threshold, length models and how they were fitted) in ``folder``."""
        import json
        from pathlib import Path

        from safetensors.numpy import save_file

        from partita.io.files import atomic_path, atomic_write

        folder = Path(folder)
        arrays = {"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                  "weight": self.weight.astype(np.float32), "bias": np.maximum(self.bias, -1e4).astype(np.float32),
                  # clipped to +-CLIP: 8 bits a value (steps of CLIP / 127 sd) lose nothing a distance notices
                  "references_int8": np.round(np.clip(self.references, -CLIP, CLIP) * (127 / CLIP)).astype(np.int8)}
        by_id = (self.embedded is not None and self.embedded_ids is not None and index is not None
                 and all(index.row_of(i) is not None for i in self.embedded_ids))
        if self.embedded is not None and not by_id:
            arrays["embedded"] = self.embedded.astype(np.float16)
        with atomic_path(folder / READER_WEIGHTS) as tmp:
            save_file(arrays, str(tmp))
        atomic_write(folder / READER_FILE, json.dumps({
            "method": "multinomial logistic regression on standardised piano descriptors of crops, class-balanced; "
                      "probabilities: mean crop log-probability / temperature; unknown: split-conformal threshold on "
                      "the novelty, the mean of length-normalised log-distances to the nearest training pieces (clipped "
                      "standardised descriptors" + ("; the index's embedder" if self.embedded is not None else "") + ")",
            "format": 2, "labels": self.labels, "temperature": self.temperature, "neighbours": NEIGHBOURS, "clip": CLIP,
            "embedder_fingerprint": self.embedder, "embedded_ids": self.embedded_ids if by_id else None,
            "length_models": {k: m.to_dict() for k, m in self.length_models.items()},
            "threshold": self.threshold, "length_bins": list(LENGTH_BINS), "fitted": self.fitted}, indent=1, ensure_ascii=False) + "\n")


def load_reader(folder) -> Optional[Readout]:
    """The readout saved in an index folder, or None when it has none."""
    from pathlib import Path

    folder = Path(folder)
    if not (folder / READER_FILE).is_file() or not (folder / READER_WEIGHTS).is_file():
        return None
    from safetensors.numpy import load_file

    from partita.search.index import read_json

    d = read_json(folder / READER_FILE, "composer readout")
    if d.get("format") != 2:
        raise PartitaError(f"{folder}: the composer readout is of an older partita; run 'partita embed' on the index again")
    try:
        a = load_file(str(folder / READER_WEIGHTS))
        return Readout(labels=list(d["labels"]), mean=a["mean"].astype(np.float64), scale=a["scale"].astype(np.float64),
                       weight=a["weight"].astype(np.float64), bias=a["bias"].astype(np.float64),
                       temperature=float(d["temperature"]),
                       references=a["references_int8"].astype(np.float32) * np.float32(float(d.get("clip", CLIP)) / 127),
                       embedded=a["embedded"].astype(np.float32) if "embedded" in a else None,
                       embedded_ids=None if "embedded" in a else d.get("embedded_ids"),
                       embedder=d.get("embedder_fingerprint"),
                       length_models={k: LengthModel.from_dict(m) for k, m in (d.get("length_models") or {}).items()},
                       threshold=None if d.get("threshold") is None else float(d["threshold"]),
                       fitted=dict(d.get("fitted") or {}))
    except Exception as e:  # a damaged file: one line, never a traceback
        raise PartitaError(f"{folder}: corrupt composer readout ({type(e).__name__}); run 'partita embed' on the index again") from None


def _mean_view(readout: "Readout", views: np.ndarray) -> np.ndarray:
    return np.clip(readout._z(views), -CLIP, CLIP).mean(0)


def _cosine_knn(queries: np.ndarray, references: np.ndarray, k: int = None) -> np.ndarray:
    """Mean cosine distance of each query to its ``k`` nearest references (unit rows)."""
    k = min(k or NEIGHBOURS, len(references))
    q = np.asarray(queries, np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d = 1.0 - q @ np.asarray(references, np.float32).T
    return np.sort(d, axis=1)[:, :k].mean(1)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(len(v), -1)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


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
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # scikit-learn keeps one row for two classes: the logit of the second
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight[clf.classes_] = coef
    bias[clf.classes_] = intercept
    return Readout(labels=labels or [str(i) for i in range(n_labels)], mean=mean, scale=scale, weight=weight, bias=bias)


def piece_views(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A piece's (crops, whole) descriptors, as the readout reads a query."""
    return crop_descriptors(notes), piano_descriptor(notes)


def fit_reader(notes: Sequence[np.ndarray], labels: Sequence[Optional[str]], groups: Sequence[Optional[str]], *,
               vectors: Optional[Sequence[np.ndarray]] = None, embedder: Optional[str] = None,
               ids: Optional[Sequence[str]] = None,
               min_works: int = 5, folds: int = 5, seed: int = 0, alpha: float = ALPHA,
               progress=None) -> Optional[Readout]:
    """A calibrated readout of the labels with at least ``min_works`` works (``groups``; a piece
    without a group is its own work), or None when fewer than 2 labels have that many.
    ``vectors``: the pieces' embeddings by the index's embedder (``embedder``: its fingerprint),
    for the second novelty distance (module doc); without them the novelty is the descriptor's.
    ``ids``: the pieces' ids in that index, so that a saved readout names them instead of copying
    their vectors.

    Temperature, length models and the "unknown" threshold come from held-out works:
    ``folds``-fold cross-fitting grouped by work (no work on both sides), and the numbers it saw
    (top-1, per-composer recall, ECE, unknown rate per length bin, each fold held to a threshold
    calibrated on the other folds) are recorded in ``fitted``; the final readout is then fit on
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
    emb = _unit([vectors[i] for i in rows]) if vectors is not None else None
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
    dist = {"descriptor": np.zeros(len(rows))}
    if emb is not None:
        dist["embedder"] = np.zeros(len(rows))
    for tr, te in splits:
        r = fit_readout([train[i] for i in tr], [whole[i] for i in tr], y[tr], L, seed=seed)
        r.references = _references(r, [views[i] for i in tr])
        r.embedded = None if emb is None else emb[tr]
        for i in te:
            logp[i] = r.log_proba(*views[i])
            for key, v in r.distances(*views[i], None if emb is None else emb[i]).items():
                dist[key][i] = v
    t = fit_temperature(logp, y)
    z = np.exp(logp / t - (logp / t).max(1, keepdims=True))
    probs = z / z.sum(1, keepdims=True)
    bins = length_bins(seconds)
    models, threshold = calibrate_novelty(dist, seconds, alpha=alpha)
    pred = probs.argmax(1)
    unknown = np.zeros(len(rows), bool)  # each fold against length models and a threshold from the others
    for tr, te in splits:
        m, th = calibrate_novelty({k: v[tr] for k, v in dist.items()}, seconds[tr], alpha=alpha)
        unknown[te] = novelty_score(m, {k: v[te] for k, v in dist.items()}, seconds[te]) > th
    fitted = {
        "pieces": len(rows), "works": len(set(g)), "folds": len(splits), "min_works": min_works,
        "held_out": "cross-fitted, grouped by work",
        "top1": round(float((pred == y).mean()), 4),
        "balanced_top1": round(float(np.mean([(pred[y == c] == c).mean() for c in range(L)])), 4),
        "recall": {names[c]: round(float((pred[y == c] == c).mean()), 4) for c in range(L)},
        "ece": round(expected_calibration_error(probs, y), 4),
        "novelty_from": sorted(dist),
        "unknown_by_length": {BIN_NAMES[b]: [int((bins == b).sum()), round(float(unknown[bins == b].mean()), 4)]
                              for b in range(len(BIN_NAMES)) if (bins == b).any()},
        "alpha": alpha,
    }
    final = fit_readout(train, whole, y, L, labels=names, seed=seed)
    final.references = _references(final, views)
    final.embedded, final.embedder = emb, (embedder if emb is not None else None)
    final.embedded_ids = [str(ids[i]) for i in rows] if emb is not None and ids is not None else None
    final.temperature, final.length_models, final.threshold, final.fitted = float(t), models, threshold, fitted
    final.held_out = {"distances": dist, "seconds": seconds}
    return final


def _references(readout: Readout, views: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.stack([_mean_view(readout, np.vstack([c, np.atleast_2d(w)])) for c, w in views]).astype(np.float32)


def attribute_files(index, readout: Readout, files: Sequence, *, k: int = 3, nearest: int = 3) -> tuple[list, list]:
    """Attribute MIDI files with an index's readout: ``(results, failures)``. Each result is
    :meth:`Readout.attribute`'s dict with ``query`` and ``nearest``: the ``nearest`` closest pieces
    of the index (its embedder) by the predicted and by the runner-up composer, so a reader sees
    what the decision leaned on. Unusable files are ``(path, one-line reason)`` failures."""
    from partita.io import MidiError, load, note_array, preprocess
    from partita.search.index import embed_queries

    if readout.embedder and readout.embedder != index.model.get("fingerprint"):
        raise PartitaError(f"{index.path}: the composer readout belongs to another embedder; run 'partita embed' on the index again")
    readout.bind(index)
    vecs, kept, failures = embed_queries(index, files)
    labels = index.column("label")
    results = []
    hits_all = index.search(vecs, len(index)) if len(kept) and nearest > 0 else [[] for _ in kept]
    for path, hits, vec in zip(kept, hits_all, vecs):
        try:
            notes = note_array(preprocess(load(path), sustain=True), unit="second")
            views = piece_views(notes)
        except (MidiError, PartitaError, ValueError) as e:
            failures.append((str(path), str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        seconds = float((notes["onset"] + notes["duration"]).max())
        r = readout.attribute(*views, seconds, k=k, vector=vec)
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
