"""Pairs and clusters of pieces: same label or not, their distances, the best threshold, ROC-AUC,
the silhouette. Shared by the embedder's training validation (``partita.train.embedder``), its
evaluation and the conditioned models' latent-space evaluation."""

from __future__ import annotations

import numpy as np

__all__ = ["all_pairs", "balanced_pairs", "best_threshold", "distances", "roc_auc", "silhouette"]


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for binary ``y`` (NaN when ``y`` has one class or none)."""
    from sklearn.metrics import roc_auc_score

    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, scores))


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the rows of ``x`` grouped by ``labels``, with cosine distance (partita compares
    embeddings and latents by cosine everywhere: search, attribution, relative cosine similarity).
    NaN with fewer than two labels, or no more rows than labels."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    n_labels = len(set(labels.tolist()))
    if n_labels < 2 or len(labels) <= n_labels:
        return float("nan")
    return float(silhouette_score(x, labels, metric="cosine"))


def all_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, same)`` for every pair ``i < j``: ``same`` 1 when the labels agree."""
    i, j = np.triu_indices(len(labels), k=1)
    return i, j, (labels[i] == labels[j]).astype(np.int64)


def balanced_pairs(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All same-label pairs and as many different-label pairs drawn at random (Harmonixr's 'mixed')."""
    i, j, y = all_pairs(labels)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(neg) > len(pos) > 0:
        neg = rng.choice(neg, size=len(pos), replace=False)
    keep = np.sort(np.concatenate([pos, neg]))
    return i[keep], j[keep], y[keep]


def best_threshold(dist: np.ndarray, y: np.ndarray) -> float:
    """The distance threshold (``same`` if ``dist < t``) with the best balanced accuracy."""
    if len(dist) == 0 or y.min() == y.max():
        return 1.0
    cands = np.unique(dist)
    mids = np.concatenate([[cands[0] - 1e-6], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1e-6]])
    pos, neg = dist[y == 1], dist[y == 0]
    tpr = np.searchsorted(np.sort(pos), mids, side="left") / len(pos)
    tnr = 1 - np.searchsorted(np.sort(neg), mids, side="left") / len(neg)
    return float(mids[int(np.argmax(tpr + tnr))])


def distances(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Euclidean distances of unit vectors ``i[k]``, ``j[k]`` (from their cosine)."""
    cos = np.sum(vectors[i] * vectors[j], axis=1)
    return np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None))
