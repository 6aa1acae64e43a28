"""Training and evaluating the SiaViT embedder: batches, losses, validation, resume, unseen labels, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from partita.data.corpus import Corpus
from partita.data.prepare import prepare
from partita.errors import PartitaError
from partita.evaluate.pairs import best_threshold
from partita.models.siavit import SiaViTConfig
from partita.train.embedder import (
    EmbedderData,
    EmbedderModule,
    contrastive_loss,
    make_batch,
    supcon_loss,
    train_embedder,
    validation_metrics,
)
from conftest import FIXTURES, labelled_folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request):
    fixtures = FIXTURES
    root = tmp_path_factory.mktemp("embedder") / "midi"
    labelled_folder(root, {
        "Pop": sorted((fixtures / "multitrack").glob("POP909_*.mid")),
        "Piano": sorted((fixtures / "performance").glob("Maestro_[1234].mid")),
        "Band": [fixtures / "multitrack" / f for f in ("Aicha.mid", "Funkytown.mid", "Mr. Blue Sky.mid", "Shut Up.mid")],
    })
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.25, test=0.25)
    return out


ARGS = dict(preset="tiny", labels_per_batch=2, per_label=2, max_steps=6, val_every=3, val_windows=2,
            checkpoint_every=100, warmup=2, progress=False, noise=0.1, transpose=2)


def test_batches_are_label_balanced_seeded_and_leave_out_unseen_labels(corpus):
    data = EmbedderData(Corpus(corpus), unseen_labels=["Band"])
    assert data.labels == ["Piano", "Pop"] and data.unseen == ["Band"]
    config = SiaViTConfig.tiny()
    kw = dict(seed=3, labels_per_batch=4, per_label=3, transpose=2, noise=0.2)
    a, b, c = make_batch(data, config, 5, **kw), make_batch(data, config, 5, **kw), make_batch(data, config, 6, **kw)
    assert a["rolls"].shape == (6, 12, 6, config.window_frames)
    assert sorted(a["labels"].tolist()) == [0, 0, 0, 1, 1, 1]  # both known labels, 3 each, never Band
    assert torch.equal(a["rolls"], b["rolls"]) and not torch.equal(a["rolls"], c["rolls"])
    with pytest.raises(PartitaError, match="at least 2 labels"):
        EmbedderData(Corpus(corpus), unseen_labels=["Band", "Pop"])
    with pytest.raises(PartitaError, match="not in the corpus"):
        EmbedderData(Corpus(corpus), unseen_labels=["Mozart"])


def test_embed_corpus_equals_embedding_the_notes(corpus):
    from partita.models.siavit import SiaViT
    from partita.search.embed import embed_corpus, embed_notes

    torch.manual_seed(0)
    model = SiaViT(SiaViTConfig.tiny()).eval()
    c = Corpus(corpus)
    vectors, kept, failures = embed_corpus(model, c, windows=3)
    assert kept == list(range(len(c))) and failures == [] and vectors.shape == (len(c), 16)
    np.testing.assert_allclose(vectors[2:4], embed_notes(model, [c.notes(2), c.notes(3)], windows=3), rtol=1e-5, atol=1e-6)


def test_losses_reward_separated_labels():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    mixed = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]])
    assert supcon_loss(separated, labels, 0.1) < supcon_loss(mixed, labels, 0.1)
    loss, mp, mn = contrastive_loss(separated, labels, margin=1.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and mp == pytest.approx(0.0, abs=1e-3) and mn == pytest.approx(2**0.5)
    assert float(contrastive_loss(mixed, labels, margin=1.0)[0]) > 0.5


def test_dynamic_margin_starts_low_and_follows_the_distances():
    m = EmbedderModule(SiaViTConfig.tiny().to_dict(), loss="contrastive", margin_start=0.1, margin_gap=0.2,
                       margin_max=1.2, margin_momentum=0.5)
    assert float(m.margin) == pytest.approx(0.1)
    m._update_margin(0.2, 0.3)
    assert float(m.margin) == pytest.approx(0.5)  # max(0.2, 0.3) + 0.2
    m._update_margin(0.2, 0.7)  # ema_neg = 0.5
    assert float(m.margin) == pytest.approx(0.7)
    for _ in range(20):
        m._update_margin(0.2, 1.9)
    assert float(m.margin) == pytest.approx(1.2)  # capped
    assert "margin" in m.state_dict()  # saved in checkpoints


def test_validation_threshold_and_metrics():
    d = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    y = np.array([1, 1, 1, 0, 0, 0])
    t = best_threshold(d, y)
    assert 0.3 < t < 0.8
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 8)
    vectors = np.eye(3, dtype=np.float32)[labels] + 0.01 * rng.standard_normal((24, 3)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    m = validation_metrics(vectors, labels, seed=0)
    assert m["auc"] == 1.0 and m["acc_same"] == 1.0 and m["acc_diff"] == 1.0 and m["acc_mixed"] == 1.0
    shuffled = validation_metrics(vectors, rng.permutation(labels), seed=0)
    assert shuffled["auc"] < 0.8


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_equals_uninterrupted(corpus, tmp_path):
    card = train_embedder(corpus, tmp_path / "a", loss="contrastive", **ARGS)
    assert card["steps"] == 6 and card["labels"] == ["Band", "Piano", "Pop"]
    assert np.isfinite(card["metrics"]["valid"]["val/loss"]) and card["threshold"] is not None
    with pytest.raises(KeyboardInterrupt):
        train_embedder(corpus, tmp_path / "b", loss="contrastive", callbacks=[StopAt(4)], **ARGS)
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(PartitaError, match="already holds"):
        train_embedder(corpus, tmp_path / "b", loss="contrastive", **ARGS)
    train_embedder(corpus, tmp_path / "b", loss="contrastive", resume=True, **ARGS)
    a = load_file(tmp_path / "a" / "bundle" / "model.safetensors")
    b = load_file(tmp_path / "b" / "bundle" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    with pytest.raises(PartitaError, match="nothing to resume"):
        train_embedder(corpus, tmp_path / "c", resume=True, **ARGS)


def test_cli_trains_and_evaluates_against_the_baseline(corpus, tmp_path, capsys, monkeypatch):
    from partita.cli import main

    run = tmp_path / "run"
    argv = ["train", "embedder", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--max-steps", "4",
          "--val-every", "4", "--warmup", "1", "-P", "2", "-K", "2", "--unseen-labels", "Band", "--val-windows", "1",
          "--set", "dim=8"]
    monkeypatch.setattr("sys.argv", ["partita", *argv])  # what the card records as the command
    main(argv)
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["unseen_labels"] == ["Band"] and card["labels"] == ["Piano", "Pop"]
    assert card["command"].startswith("partita train embedder") and card["steps"] == 4
    out = tmp_path / "eval.json"
    main(["eval", "embedder", "--model", str(run / "bundle"), "--data", str(corpus), "--windows", "2",
          "--json", str(out)])
    printed = capsys.readouterr().out
    assert "baseline" in printed and "unknown" in printed
    results = json.loads(out.read_text())
    assert results["known_labels"] == ["Piano", "Pop"] and results["unseen_labels"] == ["Band"]
    rows = results["tasks"]["all labels"]["rows"]
    assert set(rows) == {"SiaViT (centroid)", "SiaViT + LR", "features (cosine)", "features + LR (baseline)"}
    for row in rows.values():
        assert 0.0 <= row["top1"] <= 1.0 and row["top3"] == 1.0  # two labels: top-3 is always right
    assert results["pieces"]["unseen"] == 4
    for row in results["unknown"].values():
        assert 0.0 <= row["unknown_rate_unseen"] <= 1.0
