"""The feature embedder: the piano descriptor, crops, the two-level contrastive loss, training on
works with several renditions, and embedding/search with a featnet bundle."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import make_score

from partita.data.corpus import Corpus
from partita.data.prepare import prepare
from partita.errors import PartitaError
from partita.io.midi import NOTE_DTYPE
from partita.represent.features import DESCRIPTOR_NAMES, estimate_key, piano_descriptor
from partita.train.featnet import augmented_crop, crop_bank, two_level_supcon


def notes_of(rows) -> np.ndarray:
    """A note array (seconds) from (onset, duration, pitch, velocity) rows."""
    out = np.zeros(len(rows), NOTE_DTYPE)
    for k, (o, d, p, v) in enumerate(rows):
        out[k]["onset"], out[k]["duration"], out[k]["pitch"], out[k]["velocity"] = o, d, p, v
    return out


def scale_piece(tonic=60, minor=False, tempo=1.0, rng=None):
    steps = [0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11]
    rows, t = [], 0.0
    rng = rng or np.random.default_rng(0)
    for k in range(64):
        degree = int(rng.integers(0, 7))
        p = tonic + steps[degree] + 12 * int(rng.integers(0, 2))
        rows.append((t, 0.4 * tempo, p, 70))
        if k % 4 == 0:
            rows += [(t, 1.6 * tempo, tonic - 12, 60), (t, 1.6 * tempo, tonic - 12 + steps[4], 60)]
        t += (0.25 if k % 3 else 0.5) * tempo
    return notes_of(rows)


def test_descriptor_has_its_names_and_sees_keys_tempo_and_transposition():
    piece = scale_piece()
    d = piano_descriptor(piece)
    assert d.shape == (len(DESCRIPTOR_NAMES),) == (360,) and d.dtype == np.float32 and np.isfinite(d).all()
    assert estimate_key(piece) == (0, False)
    assert estimate_key(scale_piece(tonic=57, minor=True)) == (9, True)
    names = DESCRIPTOR_NAMES

    def block(*prefixes):
        return np.array([n.startswith(prefixes) for n in names])

    up = piece.copy()
    up["pitch"] += 2
    e = piano_descriptor(up)
    relative = block("degree_", "top_degrees_", "bass_degree_", "top_step", "chord_size", "ioi_ratio")
    np.testing.assert_allclose(d[relative], e[relative], atol=1e-6)  # key-relative: unchanged
    pc = block("pc_") & ~block("pc_time")
    np.testing.assert_allclose(np.roll(d[pc], 2), e[pc], atol=1e-6)  # as written: moved by 2
    slow = piano_descriptor(scale_piece(tempo=1.5))
    free = block("degree", "top_", "bass_", "chord_size", "ioi_ratio", "register")
    np.testing.assert_allclose(d[free], slow[free], atol=1e-6)  # tempo-free blocks ignore the tempo
    played = block("log_notes_per_s", "log_onsets_per_s")
    assert (d[played] > slow[played]).all()  # as played: the slower rendition has fewer notes a second
    with pytest.raises(ValueError, match="fewer than 2"):
        piano_descriptor(piece[:1])


def test_augmented_crops_are_seeded_and_stay_playable():
    piece = scale_piece()
    a = augmented_crop(piece, np.random.default_rng(3), crop_seconds=(5, 10), transpose=2)
    b = augmented_crop(piece, np.random.default_rng(3), crop_seconds=(5, 10), transpose=2)
    assert np.array_equal(a, b) and 16 <= len(a) <= len(piece)
    assert a["onset"].min() >= 0 and (a["velocity"] >= 1).all() and (a["velocity"] <= 127).all()
    assert (a["duration"] > 0).all()


def test_two_level_loss_prefers_works_then_composers():
    work = torch.tensor([0, 0, 1, 1, 2, 2])
    label = torch.tensor([0, 0, 0, 0, 1, 1])
    good = torch.nn.functional.normalize(torch.tensor(
        [[1, 0.1, 0], [1, 0.12, 0], [0.9, 0.4, 0], [0.9, 0.42, 0], [0, 0, 1], [0, 0.05, 1]]), dim=1)
    shuffled = good[torch.tensor([0, 4, 2, 1, 3, 5])]
    kw = dict(composer_weight=0.3, temperature=0.1)
    assert two_level_supcon(good, work, label, **kw) < two_level_supcon(shuffled, work, label, **kw)
    # composer_weight 0: only works count, so swapping two works of one composer costs nothing extra
    same = two_level_supcon(good, work, label, composer_weight=0.0, temperature=0.1)
    swapped = two_level_supcon(good[torch.tensor([2, 3, 0, 1, 4, 5])], work, label, composer_weight=0.0, temperature=0.1)
    torch.testing.assert_close(same, swapped)
    # no positives at all: zero, not NaN
    assert float(two_level_supcon(good[:3], torch.tensor([0, 1, 2]), torch.tensor([-1, -1, -1]), **kw)) == 0.0


# --- a corpus of works with several renditions -----------------------------------------------------


def _write(notes: np.ndarray, path) -> None:
    rows = [(int(o * 960), max(1, int(d * 960)), int(p), int(v)) for o, d, p, v in
            zip(notes["onset"], notes["duration"], notes["pitch"], notes["velocity"])]
    make_score(rows, tpq=480, qpm=120).dump_midi(str(path))


def _rendition(score: np.ndarray, rng) -> np.ndarray:
    out = score.copy()
    tempo = rng.uniform(0.85, 1.15)
    out["onset"] = out["onset"] * tempo + rng.normal(0, 0.01, len(out)).clip(0, None)
    out["onset"] -= out["onset"].min()
    out["duration"] = out["duration"] * tempo * rng.uniform(0.9, 1.3)
    out["velocity"] = np.clip(out["velocity"] + rng.normal(0, 12, len(out)), 1, 127)
    return out


@pytest.fixture(scope="module")
def renditions(tmp_path_factory):
    """An ASAP-like folder: 2 composers (major-key runs / minor-key runs with leaps) x 8 works, each a
    score and 2 performances (tempo, timing, velocity and length changed)."""
    root = tmp_path_factory.mktemp("renditions") / "asap"
    rows = []
    for c, (composer, minor) in enumerate((("Major", False), ("Minor", True))):
        for w in range(8):
            rng = np.random.default_rng(100 * c + w)
            score = scale_piece(tonic=int(rng.integers(55, 67)), minor=minor, rng=rng)
            folder = f"{composer}/Works/w{w}"
            (root / folder).mkdir(parents=True)
            _write(score, root / folder / "midi_score.mid")
            for who in ("P1", "P2"):
                _write(_rendition(score, rng), root / folder / f"{who}.mid")
                rows.append({"composer": composer, "title": f"w{w}", "folder": folder,
                             "midi_score": f"{folder}/midi_score.mid", "midi_performance": f"{folder}/{who}.mid"})
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["composer", "title", "folder", "midi_score", "midi_performance"])
        writer.writeheader()
        writer.writerows(rows)
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.25, test=0.25, seed=1)
    return out


def test_crop_bank_is_the_same_with_one_or_two_workers(renditions):
    corpus = Corpus(renditions)
    pieces = list(range(6))
    a, oa = crop_bank(corpus, pieces, crops=3, seed=5, crop_seconds=(5, 10), workers=1)
    b, ob = crop_bank(corpus, pieces, crops=3, seed=5, crop_seconds=(5, 10), workers=2)
    assert a.shape == (18, 360) and np.array_equal(a, b) and np.array_equal(oa, ob)


@pytest.fixture(scope="module")
def trained(renditions, tmp_path_factory):
    from partita.train.featnet import train_featnet

    out = tmp_path_factory.mktemp("featnet") / "run"
    card = train_featnet(renditions, out, preset="tiny", max_steps=80, val_every=20, works_per_batch=4, per_work=2,
                         crops=6, crop_seconds=(5.0, 12.0), lr=5e-3, progress="none", workers=1)
    return out / "bundle", card


def test_training_finds_renditions_and_composers_on_held_out_works(trained):
    _, card = trained
    valid = card["metrics"]["valid"]
    assert card["family"] == "featnet" and card["best_step"] is not None
    assert valid["val/rendition_r1"] >= 0.75 and valid["val/composer_top1"] >= 0.75
    assert valid["val/score"] == pytest.approx((valid["val/rendition_r1"] + valid["val/composer_top1"]) / 2)


def test_a_featnet_bundle_embeds_indexes_and_finds_a_performances_score(trained, renditions, tmp_path):
    from partita.search.index import Index, embed_into_index

    bundle, _ = trained
    report = embed_into_index([renditions], tmp_path / "idx", model=bundle, splits=["train", "valid", "test"])
    index = Index.load(tmp_path / "idx")
    assert report.added == len(Corpus(renditions)) and index.dim == 16
    corpus = Corpus(renditions)
    rows = corpus.pieces
    vectors = index.vectors()
    ids = index.column("id")
    kinds = {r["id"]: r.get("kind") for r in rows}
    groups = {r["id"]: r["group"] for r in rows}
    scores = [k for k, i in enumerate(ids) if kinds[i] == "score"]
    hits = 0
    queries = [k for k, i in enumerate(ids) if kinds[i] == "performance"]
    for q in queries:
        best = scores[int(np.argmax(vectors[scores] @ vectors[q]))]
        hits += groups[ids[best]] == groups[ids[q]]
    assert hits / len(queries) >= 0.8


def test_cli_trains_a_featnet_and_refuses_bad_options(renditions, tmp_path, capsys):
    from partita.cli import main

    args = ["train", "featnet", "--data", str(renditions), "--preset", "tiny", "--max-steps", "4", "--val-every", "2",
            "-W", "2", "-K", "2", "--crops", "2", "--crop-seconds", "5,10", "-j", "1", "--progress", "none"]
    with pytest.raises(SystemExit) as e:
        main([*args[:-2], "--out", str(tmp_path / "bad"), "--crop-seconds", "ten"])
    assert e.value.code == 2 and "--crop-seconds" in capsys.readouterr().err
    main([*args, "--out", str(tmp_path / "ok")])
    card = json.loads((tmp_path / "ok" / "bundle" / "card.json").read_text())
    assert card["steps"] == 4 and card["run"]["max_steps"] == 4
    with pytest.raises(PartitaError, match="crop-seconds"):
        from partita.train.featnet import train_featnet

        train_featnet(renditions, tmp_path / "x", crop_seconds=(10, 5))


def test_the_last_axis_marks_inputs_unlike_the_training_music(trained, renditions):
    from partita.bundle import load_bundle
    from partita.search.embed import embed_notes

    bundle, card = trained
    model = load_bundle(bundle).model
    assert np.isfinite(float(model.atypicality_limit)) and card["atypicality_limit"] == pytest.approx(
        float(model.atypicality_limit))
    rng = np.random.default_rng(0)
    noise = notes_of([(float(t), float(rng.uniform(0.05, 1)), int(rng.integers(21, 109)), int(rng.integers(30, 110)))
                      for t in np.sort(rng.uniform(0, 30, 300))])
    corpus = Corpus(renditions)
    music, noise_vec = embed_notes(model, [corpus.notes(0), noise])
    assert music[-1] == 0.0 and noise_vec[-1] > 0.5
    np.testing.assert_allclose(np.linalg.norm([music, noise_vec], axis=1), 1.0, atol=1e-5)
