"""The GRU composer classifier: model, segments, training + resume, evaluation, `partita classify`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from conftest import make_score, tokenize
from partita.bundle import load_bundle, save_bundle
from partita.data.corpus import Corpus
from partita.data.prepare import prepare
from partita.errors import PartitaError
from partita.data.segments import segment_windows
from partita.models.classifier import ClassifierConfig, GRUClassifier

STYLES = ("High", "Low", "Mid")


def synthetic_piece(style: str, seed: int, bars: int = 8):
    """A piece in one of three easily told apart styles: fast high arpeggios, slow low scale
    steps, or block chords in the middle register (one track, 4/4, 480 ticks per quarter)."""
    rng = np.random.default_rng(seed)
    notes = []
    t = 0
    end = bars * 4 * 480
    while t < end:
        if style == "High":
            root = int(rng.choice([72, 74, 76, 77, 79]))
            for step in (0, 4, 7, 12):
                notes.append((t, 240, root + step, 100))
                t += 240
        elif style == "Low":
            notes.append((t, 960, int(rng.choice([36, 38, 40, 41, 43, 45, 47])), 50))
            t += 960
        else:
            root = int(rng.choice([55, 57, 60, 62]))
            for step in (0, 3, 7):
                notes.append((t, 1920, root + step, 75))
            t += 1920
    return make_score(notes)


def build_corpus(root, per_style: int = 8):
    """A prepared corpus of synthetic pieces, labelled by style, split train/valid/test."""
    midi = root / "midi"
    for k, style in enumerate(STYLES):
        (midi / style).mkdir(parents=True)
        for j in range(per_style):
            synthetic_piece(style, 100 * k + j).dump_midi(str(midi / style / f"{style.lower()}{j}.mid"))
    out = root / "corpus"
    prepare(midi, out, workers=1, valid=0.25, test=0.25, seed=0)
    return tokenize(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("cls"))


ARGS = dict(preset="tiny", min_pieces=2, batch_size=8, max_steps=40, val_every=20, checkpoint_every=100, warmup=5,
            lr=1e-2, progress=False)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from partita.train.classifier import train_classifier

    out = tmp_path_factory.mktemp("clsrun") / "run"
    card = train_classifier(corpus, out, **ARGS)
    return out / "bundle", card


# --------------------------------------------------------------------------- model


def test_segment_windows_cover_the_piece_evenly():
    assert segment_windows(10, 32, 8) == [(0, 10)]
    wins = segment_windows(1000, 100, 8)
    assert len(wins) == 8 and wins[0] == (0, 100) and wins[-1] == (900, 1000)
    assert all(e - s == 100 for s, e in wins)
    assert segment_windows(250, 100, 16) == [(0, 100), (38, 138), (75, 175), (112, 212), (150, 250)]


def test_padding_does_not_change_a_segments_logits():
    torch.manual_seed(0)
    model = GRUClassifier(ClassifierConfig.preset("tiny", vocab_size=50, labels=["a", "b", "c"])).eval()
    x = torch.randint(1, 50, (1, 12))
    padded = torch.cat([x, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    other = torch.randint(1, 50, (1, 21))
    a, _ = model(x)
    b, _ = model(torch.cat([padded, other]))
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    lp = model.piece_log_probs(torch.randint(1, 50, (300,)).numpy())
    assert lp.shape == (3,) and np.isclose(np.exp(lp).sum(), 1.0, atol=1e-5)
    with pytest.raises(PartitaError, match="no tokens"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(PartitaError, match="at least 2 labels"):
        ClassifierConfig(labels=["solo"])


# --------------------------------------------------------------------------- data + training


def test_segments_are_label_balanced_bar_aligned_and_seeded(corpus):
    from partita.data.segments import LabelledSegments, choose_labels
    from partita.represent.tokens import token_streams

    c = Corpus(corpus)
    streams = token_streams(c)
    assert choose_labels(c, min_pieces=2) == list(STYLES)
    assert choose_labels(c, ["mid", "HIGH"]) == ["Mid", "High"]
    with pytest.raises(PartitaError, match="not in the corpus"):
        choose_labels(c, ["Bach"])
    data = LabelledSegments(c, streams, list(STYLES))
    ids, labels = data.sample("train", 300, 24, np.random.default_rng(1))
    again, _ = data.sample("train", 300, 24, np.random.default_rng(1))
    assert np.array_equal(ids, again)
    assert np.bincount(labels, minlength=3).min() > 60  # balanced: ~100 each
    first_tokens = {int(x) for x in ids[:, 0]}
    bar_ids = {int(data.tokens(i)[0]) for i in data.pieces("train")}  # every piece starts with a Bar
    assert first_tokens <= bar_ids | {int(data.tokens(i)[s]) for i in data.pieces("train") for s in data.bar_starts(i)}
    w, wl, wp = data.fixed_windows("test", 24, 3)
    assert len(w) == len(wl) == len(wp) and set(wl.tolist()) == {0, 1, 2}


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_equals_uninterrupted(corpus, tmp_path):
    from partita.train.classifier import train_classifier

    args = {**ARGS, "max_steps": 6, "val_every": 3, "evaluate": False}
    train_classifier(corpus, tmp_path / "a", **args)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(corpus, tmp_path / "b", callbacks=[StopAt(4)], **args)
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(PartitaError, match="already holds a training run"):
        train_classifier(corpus, tmp_path / "b", **args)
    train_classifier(corpus, tmp_path / "b", resume=True, **args)
    a = load_file(tmp_path / "a" / "bundle" / "model.safetensors")
    b = load_file(tmp_path / "b" / "bundle" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_trained_classifier_beats_chance_on_held_out_pieces(trained, corpus):
    from partita.evaluate.conditioned import evaluate_classifier

    path, card = trained
    test = card["metrics"]["test"]
    assert card["labels"] == list(STYLES)
    assert test["pieces"] == sum(test["pieces_per_label"].values()) >= 3
    assert test["accuracy"] >= 0.99 and test["chance"] == pytest.approx(1 / 3)
    assert "accuracy" in test["feature_logreg"] and 0 <= test["majority_accuracy"] <= 1
    bundle = load_bundle(path)
    assert bundle.family == "classifier" and bundle.tokenizer is not None
    again = evaluate_classifier(bundle, corpus, baseline=False)
    assert again["accuracy"] == test["accuracy"] and again["confusion"] == test["confusion"]


# --------------------------------------------------------------------------- classify


def test_classify_files_names_the_style_and_reports_bad_files(trained, tmp_path, fixtures):
    from partita.evaluate.conditioned import classify_files

    path, _ = trained
    good = tmp_path / "high.mid"
    synthetic_piece("High", 999).dump_midi(str(good))
    corrupt = tmp_path / "corrupt.mid"
    corrupt.write_bytes(b"MThd\x00\x00\x00\x06garbage")
    short = tmp_path / "short.mid"
    make_score([(0, 480, 60, 80)]).dump_midi(str(short))
    results = classify_files(path, [good, corrupt, tmp_path / "missing.mid", short], top_k=2)
    assert results[0]["top"][0]["label"] == "High" and len(results[0]["top"]) == 2
    assert results[0]["top"][0]["probability"] >= results[0]["top"][1]["probability"]
    for r in results[1:]:
        assert "error" in r and "\n" not in r["error"]
    assert "too short" in results[3]["error"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "partita", *map(str, args)], capture_output=True, text=True)


def test_classify_command_table_json_and_errors(trained, tmp_path, capsys):
    path, _ = trained
    low = tmp_path / "low.mid"
    synthetic_piece("Low", 4242).dump_midi(str(low))
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi at all")
    out = tmp_path / "r.json"
    p = run("classify", low, bad, "--model", path, "-k", "2", "--json", out)
    assert p.returncode == 0, p.stderr
    assert "Low" in p.stdout and "skipped" in p.stderr and str(bad) in p.stderr
    doc = json.loads(out.read_text())
    assert doc["results"][0]["top"][0]["label"] == "Low" and "error" in doc["results"][1]
    from partita.cli import main

    def main_err(*args):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        return e.value.code, capsys.readouterr().err

    code, err = main_err("classify", bad, "--model", path)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: none of the 1 file(s)")
    # a bundle of another family
    from partita.models.gpt import GPT, GPTConfig

    save_bundle(GPT(GPTConfig.preset("tiny", vocab_size=20)), tmp_path / "gpt")
    code, err = main_err("classify", low, "--model", tmp_path / "gpt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a classifier one" in err


def test_train_commands(corpus, tmp_path, capsys):
    from partita.cli import main

    common = ["--data", str(corpus), "--preset", "tiny", "--min-pieces", "2", "--max-steps", "4", "--val-every", "2",
              "--warmup", "1", "-b", "4"]
    with pytest.raises(SystemExit) as e:
        main(["train", "classifier", *common, "--out", str(tmp_path / "c"), "--set", "wings=2"])
    assert e.value.code == 2 and "unknown config field(s) wings" in capsys.readouterr().err
    main(["train", "classifier", *common, "--out", str(tmp_path / "c"), "--labels", "high,low"])
    assert load_bundle(tmp_path / "c" / "bundle").model.config.labels == ["High", "Low"]
    assert "features + logistic regression" in capsys.readouterr().out
    main(["train", "tvae", *common, "--out", str(tmp_path / "t"), "--set", "d_latent=4", "--kl-warmup", "2"])
    b = load_bundle(tmp_path / "t" / "bundle")
    assert b.family == "tvae" and b.model.config.d_latent == 4 and b.card["steps"] == 4


# --------------------------------------------------------------------------- the shipped model


def test_shipped_classifier_reads_real_files_and_refuses_bad_ones(fixtures):
    from partita import pretrained
    from partita.evaluate.conditioned import classify_files

    path = pretrained.bundle_path(pretrained.CLASSIFIER)
    bundle = load_bundle(path)
    card = bundle.card
    assert bundle.family == "classifier" and len(bundle.model.config.labels) == 7
    test = card["metrics"]["test"]
    assert test["accuracy"] > 2 * test["majority_accuracy"] and "partita train classifier" in card["command"]
    files = [fixtures / "edge" / "fur-elise.mid", fixtures / "edge" / "empty.mid",
             fixtures / "edge" / "zero-ticks-per-beat.mid", fixtures / "edge" / "type2.mid"]
    results = classify_files(bundle, files, top_k=7)
    top = results[0]["top"]
    assert [t["label"] for t in top] != [] and sorted(t["label"] for t in top) == sorted(bundle.model.config.labels)
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)
    assert all("error" in r and "\n" not in r["error"] for r in results[1:])
