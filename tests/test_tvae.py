"""The composer-conditioned transformer VAE: model pieces, training, sampling, conditioned evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from partita.bundle import load_bundle
from partita.errors import PartitaError
from partita.models.tvae import TVAE, TVAEConfig, gaussian_kl
from test_classifier import STYLES, build_corpus


def tiny(**kw) -> TVAE:
    torch.manual_seed(0)
    return TVAE(TVAEConfig.preset("tiny", vocab_size=60, labels=["x", "y", "z"], **kw)).eval()


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, lv, pm, plv = (torch.randn(4, 5, generator=g) for _ in range(4))
    q = torch.distributions.Normal(mu, (0.5 * lv).exp())
    p = torch.distributions.Normal(pm, (0.5 * plv).exp())
    torch.testing.assert_close(gaussian_kl(mu, lv, pm, plv), torch.distributions.kl_divergence(q, p))
    assert torch.allclose(gaussian_kl(mu, lv, mu, lv), torch.zeros(4, 5))


def test_encoder_ignores_padding_and_cached_decoding_equals_full():
    model = tiny()
    x = torch.randint(3, 60, (1, 10))
    mu, logvar = model.encode(x)
    mu2, logvar2 = model.encode(torch.cat([x, torch.zeros(1, 7, dtype=torch.long)], dim=1))
    torch.testing.assert_close(mu, mu2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logvar, logvar2, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([2])
    mem = model.memory(mu, labels)
    inputs = model.decoder_inputs(x)
    full = model.decode(inputs, mem)
    cache = model.new_cache()
    steps = [model.decode(inputs[:, t : t + 1], mem, cache=cache) for t in range(inputs.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # the decoder is causal: changing a later token leaves earlier logits alone
    y = x.clone()
    y[0, 7] = (y[0, 7] + 1) % 57 + 3
    torch.testing.assert_close(model.decode(model.decoder_inputs(y), mem)[:, :8], full[:, :8])
    # and it is conditioned on the label: another composer, other logits
    assert not torch.allclose(model.decode(inputs, model.memory(mu, torch.tensor([0]))), full)


def test_forward_reports_recon_and_kl_and_rejects_bad_input():
    model = tiny()
    x = torch.randint(3, 60, (2, 12))
    x[1, 8:] = 0
    out = model(x, torch.tensor([0, 1]), sample=False)
    assert out.logits.shape == (2, 12, 60) and out.n_tokens == 20
    assert out.kl.shape == (2, model.config.d_latent) and bool((out.kl >= 0).all())
    assert torch.isfinite(out.recon) and float(out.recon.detach()) > 0
    torch.testing.assert_close(out.z, out.mu)
    with pytest.raises(PartitaError, match="only padding"):
        model.encode(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(PartitaError, match="segments must be"):
        model.encode(torch.ones(1, model.config.context + 1, dtype=torch.long))
    with pytest.raises(PartitaError, match="unknown composer 'w': this model knows x, y, z"):
        model.label_index("w")
    assert model.label_index("Y") == 1


def test_relative_cosine_similarity_and_plots(tmp_path):
    from partita.evaluate.conditioned import confusion_png, latent_map_png, relative_cosine_similarity

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    centres = np.eye(3, 8) * 5
    clustered = centres[labels] + rng.normal(size=(60, 8)) * 0.5
    r = relative_cosine_similarity(clustered, labels)
    assert r["within"] > 0.8 and abs(r["across"]) < 0.2 and r["relative"] > 1.5
    noise = relative_cosine_similarity(rng.normal(size=(60, 8)), labels)
    assert abs(noise["within"]) < 0.1 and abs(noise["relative"] - 1) < 0.1
    png = confusion_png(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = latent_map_png(clustered, labels, ["a", "b", "c"], tmp_path / "m.png", method="pca")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- trained on a corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("tvae"))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    from partita.train.classifier import train_classifier
    from partita.train.tvae import train_tvae

    root = tmp_path_factory.mktemp("tvaeruns")
    card = train_tvae(corpus, root / "tvae", preset="tiny", min_pieces=2, batch_size=16, max_steps=120, val_every=60,
                      checkpoint_every=1000, warmup=10, kl_warmup=40, lr=1e-2, progress=False)
    train_classifier(corpus, root / "cls", preset="tiny", min_pieces=2, batch_size=8, max_steps=40, val_every=40,
                     checkpoint_every=100, warmup=5, lr=1e-2, progress=False, evaluate=False)
    return root / "tvae" / "bundle", root / "cls" / "bundle", card


def test_training_lowers_the_loss_and_writes_a_bundle(runs):
    import csv

    tvae, _, card = runs
    assert card["labels"] == list(STYLES) and card["steps"] == 120
    rows = list(csv.DictReader(open(next((tvae.parent / "logs").glob("csv-*/metrics.csv")))))
    recon = [float(r["train/recon"]) for r in rows if r.get("train/recon")]
    assert recon[-1] < recon[0] - 1.0
    b = load_bundle(tvae)
    assert b.family == "tvae" and b.tokenizer is not None and b.model.config.labels == list(STYLES)


def test_sample_tvae_is_seeded_and_conditioned(runs):
    from partita.generation.tvae import sample_tvae, sample_tvae_ids

    tvae, _, _ = runs
    a = sample_tvae(tvae, composer="high", n=3, seed=5)
    b = sample_tvae(tvae, composer="High", n=2, seed=5)
    assert len(a) == 3 and all(s.note_num() > 0 for s in a)
    assert a[1].dumps_midi() == b[1].dumps_midi()  # sample j does not depend on n
    assert sample_tvae(tvae, composer="High", n=1, seed=6)[0].dumps_midi() != a[0].dumps_midi()
    ids = sample_tvae_ids(tvae, composer="Low", n=2, seed=0, max_tokens=5)
    assert all(len(r) <= 5 for r in ids)
    # the label steers the music: high arpeggios sit far above low scale steps
    pitch = {}
    for style in ("High", "Low"):
        notes = [n.pitch for s in sample_tvae(tvae, composer=style, n=4, seed=1) for t in s.tracks for n in t.notes]
        pitch[style] = np.mean(notes)
    assert pitch["High"] > pitch["Low"] + 12
    with pytest.raises(PartitaError, match="unknown composer 'Bach': this model knows High, Low, Mid"):
        sample_tvae(tvae, composer="Bach")


def test_sample_tvae_refuses_other_families(runs):
    from partita.generation.tvae import sample_tvae

    _, cls, _ = runs
    with pytest.raises(PartitaError, match="not a tvae one"):
        sample_tvae(cls, composer="High")


def test_eval_conditioned_command(runs, corpus, tmp_path, capsys):
    tvae, cls, _ = runs
    out = tmp_path / "ev"
    p = subprocess.run([sys.executable, "-m", "partita", "eval", "conditioned", "--model", str(tvae), "--classifier",
                        str(cls), "--data", str(corpus), "-n", "3", "--map", "pca", "--out", str(out),
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    g = r["generated"]
    assert set(g["per_label"]) == set(STYLES) and np.sum(g["confusion"]) + g["empty_samples"] == 9
    assert r["chance"] == pytest.approx(1 / 3) and g["accuracy"] > r["chance"]
    lat = r["latent"]
    for key in ("vae", "features"):
        assert np.isfinite(lat[key]["silhouette"]) and np.isfinite(lat[key]["relative_cosine"]["relative"])
    assert (out / "confusion.png").exists() and (out / "latent_map.png").exists()
    assert "classified as asked" in p.stdout and "silhouette" in p.stdout
    # swapped bundles are refused with one line (in process: the same cli.main the command runs)
    from partita.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "conditioned", "--model", str(cls), "--classifier", str(cls), "--data", str(corpus)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "a classifier bundle, not a tvae one" in err


def test_shipped_tvae_samples_are_recognised_by_the_shipped_classifier():
    from partita import pretrained
    from partita.generation.tvae import sample_tvae
    from partita.represent.tokens import encode

    tvae = load_bundle(pretrained.bundle_path(pretrained.TVAE))
    cls = load_bundle(pretrained.bundle_path(pretrained.CLASSIFIER))
    assert tvae.family == "tvae" and tvae.model.config.labels == cls.model.config.labels
    assert tvae.card["metrics"]["test"]["generated"]["accuracy"] > 3 * tvae.card["metrics"]["test"]["chance"]
    for composer in ("Palestrina", "Bach"):
        scores = sample_tvae(tvae, composer=composer, n=3, seed=0)
        assert all(s.note_num() > 0 for s in scores)
        hits = sum(cls.model.config.labels[int(np.argmax(cls.model.piece_log_probs(encode(cls.tokenizer, s))))] == composer
                   for s in scores)
        assert hits >= 2
