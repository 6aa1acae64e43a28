"""``eval embedder`` on any corpus: feature baselines next to the model, per-label tables, and
retrieval across renditions where the corpus has performances and scores of a work (ASAP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from partita.bundle import save_bundle
from partita.data.prepare import prepare
from partita.evaluate.embedder import FEATURES_COSINE, FEATURES_LR, evaluate_embedder
from partita.models.siavit import SiaViT, SiaViTConfig
from test_asap import asap_folder

WORKS = {f"{c}/{kind}/{n}": [f"P{n}a", f"P{n}b"] for c, kind in (("Bach", "Fugue"), ("Liszt", "Etude")) for n in range(3)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    corpus = prepare(asap_folder(tmp / "asap", WORKS), tmp / "corpus", workers=1, valid=0.2, test=0.2).corpus
    torch.manual_seed(0)
    save_bundle(SiaViT(SiaViTConfig.tiny()).eval(), tmp / "model", card={"labels": ["Bach", "Liszt"]})
    return corpus, tmp / "model", tmp


def test_baselines_per_label_and_renditions_on_an_asap_like_corpus(setup):
    corpus, model, _ = setup
    r = evaluate_embedder(model, corpus.path, windows=1, batch_size=4)
    assert list(r["tasks"]) == ["all labels"]  # no hard-coded subsets of some other corpus
    task = r["tasks"]["all labels"]
    assert task["test_per_label"] == {"Bach": 3, "Liszt": 3}  # one test work each: 2 performances + score
    rows = task["rows"]
    assert set(rows) == {"SiaViT (centroid)", "SiaViT + LR", FEATURES_COSINE, FEATURES_LR}
    for row in rows.values():
        assert set(row["per_label"]) == {"Bach", "Liszt"}
        assert row["top1"] == pytest.approx(np.mean([v["top1"] for v in row["per_label"].values()]))
        assert row["top3"] == 1.0  # two labels
        assert 0.0 <= row["ece"] <= 0.5  # with two labels the top-1 probability is at least 0.5
    ren = r["renditions"]
    assert set(ren) == {"SiaViT", FEATURES_COSINE} and r["renditions_works"] == 2
    for name, tasks in ren.items():
        p2s, p2p = tasks["performance -> score"], tasks["performance -> performance"]
        assert (p2s["queries"], p2s["gallery"]) == (4, 2)  # test performances against the test scores
        assert (p2p["queries"], p2p["gallery"]) == (4, 4)
        assert p2s["R@5"] == 1.0 and p2p["R@5"] == 1.0  # the gallery is smaller than 5
        assert 0.0 <= p2s["R@1"] <= 1.0


def test_features_find_the_exact_copy():
    """A score that is a copy of a performance is found by the cosine baseline at rank 1."""
    from partita.evaluate.baselines import rendition_retrieval, standardised_unit

    x = np.random.default_rng(1).normal(size=(6, 73))
    x = np.r_[x, x[:3]]  # pieces 6..8 are the scores of works 0..2, copies of their performances
    groups = [0, 1, 2, 3, 4, 5, 0, 1, 2]
    kinds = ["performance"] * 6 + ["score"] * 3
    r = rendition_retrieval(standardised_unit(x), groups, kinds, ks=(1,))["performance -> score"]
    assert r["queries"] == 3 and r["R@1"] == 1.0


def test_cli_prints_the_tables(setup, capsys):
    from partita.cli import main

    corpus, model, tmp = setup
    main(["eval", "embedder", "--model", str(model), "--data", str(corpus.path), "--windows", "1",
          "--json", str(tmp / "eval.json")])
    printed = capsys.readouterr().out
    assert "top-1 per label" in printed and "retrieval across renditions" in printed
    assert "performance -> score" in printed and FEATURES_COSINE in printed and "quartets" not in printed
    assert "renditions" in json.loads((tmp / "eval.json").read_text())


def test_calibration_error_of_probabilities_and_of_tempered_similarities():
    from partita.evaluate.embedder import _ece

    classes = np.array([0, 1])
    labels = np.array([0, 0, 1, 1])
    sure_and_right = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert _ece(sure_and_right, classes, labels, None, None) == pytest.approx(0.0)
    sure_and_wrong = sure_and_right[::-1]
    assert _ece(sure_and_wrong, classes, labels, None, None) == pytest.approx(1.0)
    # similarities: the temperature fit on the valid split turns them into probabilities first
    sims = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    assert 0.0 <= _ece(sims, classes, labels, (sims, classes), labels) < 0.1
