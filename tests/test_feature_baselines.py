"""Feature baselines (evaluate.baselines): standardised features + logistic regression or cosine,
on small hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from partita.errors import PartitaError
from partita.evaluate.baselines import (
    grouped_attribution,
    per_label_top1,
    recall_at_k,
    rendition_retrieval,
    standardised_unit,
    topk_accuracy,
)


def test_standardised_unit_uses_the_fit_rows_and_keeps_constant_dimensions():
    fit = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0]])  # mean (1, 5, 2), std (1, 0, 1)
    out = standardised_unit(np.array([[3.0, 5.0, 2.0], [1.0, 7.0, 2.0]]), fit)
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # a constant dim: centred, not scaled
    x = np.random.default_rng(0).normal(size=(20, 4)) * [1, 10, 100, 1000]
    z = standardised_unit(x)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0)
    # scale-free: multiplying one feature by 1000 does not change any cosine
    np.testing.assert_allclose(standardised_unit(x * [1, 1, 1, 1e3]), z, atol=1e-12)
    with pytest.raises(PartitaError, match="same width"):
        standardised_unit(x, fit)


def test_topk_and_per_label():
    classes = np.array(["A", "B", "C"])
    scores = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    y = np.array(["A", "B", "C", "C"])
    assert topk_accuracy(scores, classes, y, ks=(1, 2, 3)) == {"top1": 0.5, "top2": 1.0, "top3": 1.0}
    table = per_label_top1(scores, classes, y)
    assert table["A"] == {"n": 1, "top1": 1.0, "named": "A"}
    assert table["B"] == {"n": 1, "top1": 0.0, "named": "A"}
    assert table["C"]["n"] == 2 and table["C"]["top1"] == 0.5


def test_recall_at_k_on_known_neighbours():
    gallery = np.eye(3)  # the scores of works a, b, c
    queries = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.9, 0.0, 0.5]])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    r = recall_at_k(queries, gallery, ["a", "b", "c"], ["a", "b", "c"], ks=(1, 2, 3))
    # the third query (work c) is nearer a's score, with its own second
    assert (r["R@1"], r["R@2"], r["R@3"]) == (pytest.approx(2 / 3), 1.0, 1.0)
    assert (r["queries"], r["gallery"]) == (3, 3)
    r = recall_at_k(queries, gallery, ["a", "b", "z"], ["a", "b", "c"], ks=(1,))
    assert r["queries"] == 2 and r["R@1"] == 1.0  # a query whose work has no score is not scored


def test_rendition_retrieval_directions():
    # works a and b: two performances and a score each; work c: one performance, no score.
    v = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.95, 0, 0.05], [0, 1, 0], [0.2, 0.8, 0], [0, 0.9, 0.1], [0.6, 0.6, 0.5]])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    groups = ["a", "a", "a", "b", "b", "b", "c"]
    kinds = ["performance", "performance", "score", "performance", "performance", "score", "performance"]
    out = rendition_retrieval(v, groups, kinds, ks=(1,))
    p2s = out["performance -> score"]
    assert (p2s["queries"], p2s["gallery"]) == (4, 2) and p2s["R@1"] == 1.0  # c has no score: not scored
    p2p = out["performance -> performance"]
    # each of the 4 performances of a and b finds its partner first, never itself; c has no partner
    assert (p2p["queries"], p2p["gallery"], p2p["R@1"]) == (4, 5, 1.0)
    assert rendition_retrieval(v, groups, [None] * 7) == {}  # a corpus without renditions


def test_grouped_attribution_finds_labels_and_cannot_memorise_works():
    rng = np.random.default_rng(0)
    # 3 composers x 6 works x 4 performances; each work has its own offset, composers their own mean
    means = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    x, y, g = [], [], []
    for c in range(3):
        for w in range(6):
            offset = rng.normal(size=4)
            for _ in range(4):
                x.append(means[c] + offset + 0.1 * rng.normal(size=4))
                y.append(f"C{c}")
                g.append(f"C{c}/w{w}")
    x, y, g = np.array(x), np.array(y), np.array(g)
    r = grouped_attribution(x, y, g, folds=3)
    assert r["top1"] > 0.9 and r["top3"] == 1.0 and (r["n"], r["n_groups"], r["n_labels"]) == (72, 18, 3)
    assert set(r["per_label"]) == {"C0", "C1", "C2"}
    # labels drawn at random per work: a piece-level split would learn each work's offset and name
    # its label; grouped folds leave only chance
    shuffled = rng.permutation(np.repeat(["C0", "C1", "C2"], 6))
    y_random = np.repeat(shuffled, 4)
    r = grouped_attribution(x - means[[int(s[1]) for s in y]], y_random, g, folds=3)
    assert r["top1"] < 0.6
    with pytest.raises(PartitaError, match="at least 5 works"):
        grouped_attribution(x[:8], y[:8], g[:8], folds=5)
