"""Composer attribution from an index: label centroids, calibrated probabilities, "unknown".

A label's embedding is the centroid of its pieces' unit vectors (re-normalised), built from the
index's train-split pieces. A query's score for a label is its cosine similarity to the centroid;
probabilities are ``softmax(similarity / T)``. Cosine similarities live in [-1, 1], so the raw
softmax (T = 1) is nearly uniform whatever the model believes: the temperature ``T`` is what
turns them into probabilities, and it is fit by minimising the negative log-likelihood of the
true labels of held-out pieces (temperature scaling, Guo et al. 2017: one parameter, so ~100
pieces are enough and it cannot overfit the ranking, which it does not change).

"Unknown composer": cosine distance to the nearest centroid is a poor novelty score, because the
embedding packs much of what it has never seen into a region near some composer (uniformly random
notes land next to the densest label). Instead the novelty of a query is its Mahalanobis distance
to the nearest label mean, with one covariance shared by all labels (fit on the train pieces'
offsets from their own label's mean, Ledoit-Wolf shrinkage so a 128-d covariance from ~1000
pieces is well conditioned): Lee et al. 2018's detector. It measures how far a query is in the
directions in which pieces of one composer do *not* vary, which is where unfamiliar music goes. A
query whose novelty exceeds ``threshold`` is attributed to nobody. The threshold is the
``quantile`` (default 0.95) of the novelty of held-out pieces *of known composers*: about 5% of
pieces by a known composer are called unknown, by construction. There is no "unknown" data to fit
on, so this is a false-alarm budget, not a tuned detector; attribution.json records it.

Held-out pieces are the index's valid split (centroids, means and covariance from train,
calibration on valid, the test split never touched). An index without a valid split (a folder of
files) is calibrated leave-one-out: each labelled piece is scored against centroids and means
built without it (the shared covariance keeps it: one piece barely moves it). Either way the
choice and its numbers are written to ``attribution.json`` next to the index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from partita.errors import PartitaError
from partita.io.files import atomic_write

__all__ = ["Attribution", "UNKNOWN", "fit_attribution", "fit_from_arrays", "load_attribution"]

ATTRIBUTION_FILE = "attribution.json"
UNKNOWN = "unknown composer"
DEFAULT_QUANTILE = 0.95


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(sims: np.ndarray, target: np.ndarray, t: float) -> float:
    z = sims / t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(target)), target].mean())


def fit_temperature(sims: np.ndarray, target: np.ndarray) -> float:
    """The temperature minimising the NLL of ``target`` under softmax(sims / T): a log-spaced grid,
    then golden-section search around its best point (the NLL is smooth and unimodal in log T
    for practical data; the grid guards against the rare case it is not)."""
    grid = np.exp(np.linspace(np.log(5e-3), np.log(10.0), 121))
    losses = [_nll(sims, target, t) for t in grid]
    j = int(np.argmin(losses))
    lo, hi = np.log(grid[max(j - 1, 0)]), np.log(grid[min(j + 1, len(grid) - 1)])
    g = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(40):
        c, d = b - g * (b - a), a + g * (b - a)
        if _nll(sims, target, np.exp(c)) <= _nll(sims, target, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-1 probability: |accuracy - confidence| averaged over equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == target
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


@dataclass
class Attribution:
    """Label centroids with a temperature and an "unknown" distance threshold."""

    labels: list[str]
    centroids: np.ndarray  # (L, dim), unit rows
    counts: list[int]  # pieces behind each centroid
    temperature: float
    threshold: float  # novelty (Mahalanobis distance to the nearest label mean) above which: unknown
    means: Optional[np.ndarray] = None  # (L, dim) label means of the unit vectors (not re-normalised)
    precision: Optional[np.ndarray] = None  # (dim, dim) inverse of the shared covariance
    fitted: dict = field(default_factory=dict)  # how and on what it was chosen, with its numbers
    model_fingerprint: Optional[str] = None

    def similarities(self, vectors: Any) -> np.ndarray:
        v = _unit(np.atleast_2d(np.asarray(vectors, dtype=np.float64)))
        if v.shape[1] != self.centroids.shape[1]:
            raise PartitaError(f"query vectors have {v.shape[1]} dimensions, the label centroids {self.centroids.shape[1]}")
        return v @ self.centroids.T

    def probabilities(self, vectors: Any) -> np.ndarray:
        return _softmax(self.similarities(vectors) / self.temperature)

    def novelty(self, vectors: Any) -> np.ndarray:
        """Mahalanobis distance of each query to the nearest label mean (shared covariance)."""
        v = _unit(np.atleast_2d(np.asarray(vectors, dtype=np.float64)))
        return _mahalanobis(v, self.means, self.precision).min(axis=1)

    def attribute(self, vectors: Any, k: int = 3) -> list[dict]:
        """Per query: ``verdict`` (a label or UNKNOWN), ``known``, ``novelty`` and the
        ``threshold`` it is held to, ``distance`` (1 - cosine) to the nearest centroid, and
        ``top``: the k most likely labels with probability and distance."""
        if k < 1:
            raise PartitaError(f"-k must be at least 1, not {k}")
        sims = self.similarities(vectors)
        probs = _softmax(sims / self.temperature)
        novelty = self.novelty(vectors)
        out = []
        for s, p, nov in zip(sims, probs, novelty):
            order = np.argsort(-p, kind="stable")[:k]
            known = nov <= self.threshold
            out.append({
                "verdict": self.labels[int(np.argmax(p))] if known else UNKNOWN,
                "known": bool(known),
                "novelty": float(nov),
                "threshold": self.threshold if np.isfinite(self.threshold) else None,
                "distance": float(1.0 - s.max()),
                "top": [{"label": self.labels[j], "probability": float(p[j]), "distance": float(1.0 - s[j])} for j in order],
            })
        return out

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {
            "method": "cosine similarity to label centroids; probabilities softmax(similarity / temperature)",
            "labels": self.labels,
            "counts": self.counts,
            "temperature": self.temperature,
            "threshold": self.threshold if np.isfinite(self.threshold) else None,  # None: never unknown
            "fitted": self.fitted,
            "model_fingerprint": self.model_fingerprint,
            "centroids": [[round(float(x), 7) for x in row] for row in self.centroids],
            "means": [[round(float(x), 7) for x in row] for row in self.means],
            "precision": [[float(f"{x:.7g}") for x in row] for row in self.precision],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Attribution":
        try:
            return cls(
                labels=[str(x) for x in d["labels"]],
                centroids=_unit(np.asarray(d["centroids"], dtype=np.float64)),
                counts=[int(x) for x in d["counts"]],
                temperature=float(d["temperature"]),
                threshold=float("inf") if d["threshold"] is None else float(d["threshold"]),
                means=np.asarray(d["means"], dtype=np.float64),
                precision=np.asarray(d["precision"], dtype=np.float64),
                fitted=dict(d.get("fitted", {})),
                model_fingerprint=d.get("model_fingerprint"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PartitaError(f"corrupt attribution.json ({type(e).__name__}: {e}); run 'partita embed' on the index again") from None

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / ATTRIBUTION_FILE
        return atomic_write(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")


def load_attribution(folder: str | os.PathLike) -> Attribution:
    path = Path(folder) / ATTRIBUTION_FILE
    if not path.is_file():
        raise PartitaError(
            f"{folder}: the index has no attribution.json (it needs labelled pieces); "
            f"embed a labelled corpus or folder with 'partita embed ... --index {folder}'"
        )
    from partita.search.index import read_json

    return Attribution.from_dict(read_json(path, "attribution"))


def _mahalanobis(v: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N, L) Mahalanobis distances of rows of ``v`` to each mean under one precision matrix."""
    d = v[:, None, :] - means[None, :, :]
    return np.sqrt(np.maximum(np.einsum("nld,de,nle->nl", d, precision, d), 0.0))


def _shared_precision(offsets: np.ndarray) -> np.ndarray:
    """Inverse of the covariance of the offsets from their label means, shrunk (Ledoit-Wolf)."""
    from sklearn.covariance import LedoitWolf

    if len(offsets) < 2:  # nothing to estimate a spread from: plain Euclidean distance
        return np.eye(offsets.shape[1])
    return LedoitWolf(assume_centered=True).fit(offsets).precision_


def _centroids(vectors: np.ndarray, codes: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    sums = np.zeros((n_labels, vectors.shape[1]))
    np.add.at(sums, codes, vectors)
    counts = np.bincount(codes, minlength=n_labels)
    return sums, counts


def fit_from_arrays(
    vectors: Any,
    labels: Sequence[Optional[str]],
    splits: Sequence[Optional[str]],
    *,
    quantile: float = DEFAULT_QUANTILE,
    model_fingerprint: Optional[str] = None,
) -> Optional[Attribution]:
    """Fit centroids, temperature and threshold from vectors with labels and splits (see the
    module docstring for which pieces play which part). None when no piece has a label.
    Test-split (and unseen-split) pieces are never used."""
    if not 0.0 < quantile <= 1.0:
        raise PartitaError(f"the unknown-composer quantile must be in (0, 1], not {quantile}")
    v = _unit(np.asarray(vectors, dtype=np.float64))
    labels = list(labels)
    splits = list(splits)
    # Pieces without a split (files added to an index) count as training pieces; test and unseen
    # pieces (held out for evaluation) are never used.
    usable = [i for i, (lab, sp) in enumerate(zip(labels, splits)) if lab is not None and sp in ("train", "valid", None)]
    if not usable:
        return None
    train = [i for i in usable if splits[i] != "valid"]
    names = sorted({labels[i] for i in (train or usable)})
    code = {name: j for j, name in enumerate(names)}
    valid = [i for i in usable if splits[i] == "valid" and labels[i] in code] if train else []

    if train and valid:
        how = "valid split"
        base = np.array(train)
        base_codes = np.array([code[labels[i]] for i in base])
        sums, counts = _centroids(v[base], base_codes, len(names))
        cents = _unit(sums)
        means = sums / counts[:, None]
        precision = _shared_precision(v[base] - means[base_codes])
        cal = np.array(valid)
        target = np.array([code[labels[i]] for i in cal])
        sims = v[cal] @ cents.T
        novelty = _mahalanobis(v[cal], means, precision).min(axis=1)
    else:
        how = "leave-one-out"
        base = np.array(usable)
        base_codes = np.array([code[labels[i]] for i in base])
        sums, counts = _centroids(v[base], base_codes, len(names))
        cents = _unit(sums)
        means = sums / counts[:, None]
        precision = _shared_precision(v[base] - means[base_codes])
        # Each piece against centroids without it: subtract it from its own label's sum. A piece
        # that is its label's only one has no held-out centroid and is left out of calibration.
        ok = counts[base_codes] > 1
        cal, target = base[ok], base_codes[ok]
        sims = v[cal] @ cents.T
        novelty = np.zeros(0)
        if len(cal):
            own = _unit(sums[target] - v[cal])
            sims[np.arange(len(cal)), target] = np.einsum("ij,ij->i", v[cal], own)
            dist = _mahalanobis(v[cal], means, precision)
            own_mean = (sums[target] - v[cal]) / (counts[target] - 1)[:, None]
            off = v[cal] - own_mean
            dist[np.arange(len(cal)), target] = np.sqrt(np.maximum(np.einsum("nd,de,ne->n", off, precision, off), 0.0))
            novelty = dist.min(axis=1)

    fitted: dict = {"calibration": how, "n_calibration": int(len(cal)), "centroids_from": "train split (and pieces without a split)" if how == "valid split" else "all labelled train/valid pieces"}
    if len(cal) >= 2 and len(names) >= 2:
        t = fit_temperature(sims, target)
        probs = _softmax(sims / t)
        ranks = (-probs).argsort(axis=1)
        fitted.update({
            "temperature_by": "minimum negative log-likelihood of the calibration pieces' labels",
            "nll": round(_nll(sims, target, t), 4),
            "nll_uniform": round(float(np.log(len(names))), 4),
            "ece": round(expected_calibration_error(probs, target), 4),
            "top1": round(float((ranks[:, 0] == target).mean()), 4),
            "top3": round(float((ranks[:, :3] == target[:, None]).any(axis=1).mean()), 4),
        })
    else:
        t = 0.05  # nothing to fit on: a temperature typical of unit-vector similarities
        fitted["temperature_by"] = "default (fewer than 2 calibration pieces or labels)"
    if len(cal):
        threshold = float(np.quantile(novelty, quantile, method="higher"))
        fitted.update({
            "threshold_by": f"{quantile:g} quantile of the calibration pieces' novelty (Mahalanobis distance to the "
                            f"nearest label mean, shared Ledoit-Wolf covariance)",
            "quantile": quantile,
            "false_unknown_rate": round(float((novelty > threshold).mean()), 4),
            "novelty_percentiles": {str(q): round(float(np.quantile(novelty, q / 100)), 4) for q in (50, 90, 95, 99)},
        })
    else:
        threshold = float("inf")  # nothing held out: never say unknown rather than guess
        fitted["threshold_by"] = "none (no held-out labelled piece): unknown is never answered"
    return Attribution(
        labels=names, centroids=cents, counts=[int(c) for c in counts], temperature=t, threshold=threshold,
        means=means, precision=precision, fitted=fitted, model_fingerprint=model_fingerprint,
    )


def fit_attribution(index, *, quantile: float = DEFAULT_QUANTILE) -> Optional[Attribution]:
    """Fit the attribution of an :class:`~partita.search.index.Index` from its labels and splits."""
    return fit_from_arrays(
        index.vectors(), index.column("label"), index.column("split"), quantile=quantile,
        model_fingerprint=index.model.get("fingerprint"),
    )
