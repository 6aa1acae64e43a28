"""The vector index, attribution and maps (partita.search): round trips, calibration, placement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES, make_score
from partita.errors import PartitaError
from partita.search import index as index_mod
from partita.search.attribute import UNKNOWN, Attribution, fit_from_arrays, fit_temperature, load_attribution
from partita.search.index import Index, choose_kind, embed_into_index, embed_queries, model_record
from partita.search.maps import figure_html, figure_png, fit_map, load_map, place, write_html


def clusters(n_per: int, n_labels: int, dim: int, *, spread: float = 0.6, seed: int = 0):
    """Unit vectors around ``n_labels`` random centres, labelled L0, L1, ..."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, dim))
    labels = np.repeat(np.arange(n_labels), n_per)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"L{c}" for c in labels], centres


def pieces_for(labels, splits=None, prefix="p"):
    return [{"id": f"{prefix}{i}", "title": f"piece {i}", "label": lab, "split": None if splits is None else splits[i]}
            for i, lab in enumerate(labels)]


# ------------------------------------------------------------------------------- index
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_add_search_save_load_round_trip(kind, tmp_path):
    x, labels, _ = clusters(100, 4, 16)
    index = Index.build(x, pieces_for(labels), kind=kind, nlist=8)
    assert index.kind == kind and len(index) == 400
    hits = index.search(x[:20], k=5)
    assert [h[0].row for h in hits] == list(range(20))  # every piece is its own nearest neighbour
    assert all(h[0].distance < 1e-5 and h[0].piece["id"] == f"p{i}" for i, h in enumerate(hits))
    assert all(h[j].distance <= h[j + 1].distance + 1e-6 for h in hits for j in range(4))

    index.save(tmp_path / "idx")
    again = Index.load(tmp_path / "idx")
    assert again.kind == kind and len(again) == 400 and again.pieces == index.pieces
    np.testing.assert_allclose(again.vectors(), index.vectors(), atol=1e-6)
    assert [[h.row for h in r] for r in again.search(x[:20], k=5)] == [[h.row for h in r] for r in hits]

    # Adding: new ids get new rows and are found; ids already there are skipped.
    y, more, _ = clusters(10, 4, 16, seed=1)
    rows = again.add(y, pieces_for(more, prefix="q"))
    assert rows == list(range(400, 440)) and len(again) == 440
    assert again.search(y[3], k=1)[0][0].piece["id"] == "q3"
    assert again.add(y, pieces_for(more, prefix="q")) == [] and len(again) == 440
    again.save(tmp_path / "idx")
    assert Index.load(tmp_path / "idx").row_of("q39") == 439
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["count"] == 440 and meta["kind"] == kind and meta["labels"]["L0"] == 110


def test_auto_kind_grows_from_exact_to_hnsw(monkeypatch):
    assert choose_kind(10) == "flat" and choose_kind(index_mod.EXACT_MAX + 1) == "hnsw"
    assert choose_kind(index_mod.IVF_MIN) == "ivf"
    monkeypatch.setattr(index_mod, "EXACT_MAX", 100)
    x, labels, _ = clusters(40, 4, 8)
    index = Index.build(x[:80], pieces_for(labels[:80]))
    assert index.kind == "flat"
    index.add(x[80:], pieces_for(labels, prefix="p")[80:])
    assert index.kind == "hnsw" and len(index) == 160  # rebuilt once, nothing lost
    np.testing.assert_allclose(index.vectors(), x, atol=1e-6)


def test_index_refuses_vectors_of_another_model_and_bad_shapes():
    x, labels, _ = clusters(5, 2, 8)
    index = Index.build(x, pieces_for(labels), model={"name": "a", "fingerprint": "aaaa"})
    with pytest.raises(PartitaError, match="not the embedder this index was built with"):
        index.add(x, pieces_for(labels, prefix="z"), model={"name": "b", "fingerprint": "bbbb"})
    with pytest.raises(PartitaError, match="dimensions"):
        index.add(np.ones((1, 9)), [{"id": "x"}])
    with pytest.raises(PartitaError, match="-k"):
        index.search(x[0], k=0)


def test_corrupt_or_missing_index_is_one_line_error(tmp_path):
    with pytest.raises(PartitaError, match="no such index folder"):
        Index.load(tmp_path / "nothing")
    x, labels, _ = clusters(5, 2, 8)
    Index.build(x, pieces_for(labels)).save(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"this is not faiss")
    with pytest.raises(PartitaError) as err:
        Index.load(tmp_path / "idx")
    assert "corrupt FAISS index" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "idx" / "index.json").write_text("{not json")
    with pytest.raises(PartitaError, match="corrupt index metadata"):
        Index.load(tmp_path / "idx")


# ------------------------------------------------------------------------------- attribution
def test_temperature_scaling_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.3, 0.6, size=(4000, 6))
    z = sims / 0.05
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    target = np.array([rng.choice(6, p=row) for row in p])
    assert fit_temperature(sims, target) == pytest.approx(0.05, rel=0.1)


def test_attribution_calibrates_on_valid_and_never_reads_test():
    x, labels, centres = clusters(60, 4, 32, spread=0.9)
    splits = ["test" if i % 10 == 0 else "valid" if i % 10 in (1, 2) else "train" for i in range(len(labels))]
    a = fit_from_arrays(x, labels, splits)
    assert a.fitted["calibration"] == "valid split" and a.fitted["n_calibration"] == splits.count("valid")
    assert a.labels == ["L0", "L1", "L2", "L3"] and sum(a.counts) == splits.count("train")
    assert a.fitted["top1"] > 0.9 and 0 < a.temperature < 1
    assert 0.03 <= a.fitted["false_unknown_rate"] <= 0.06  # the 0.95 quantile's budget on ~48 pieces

    # The test split's vectors play no part: replacing them changes nothing.
    noisy = x.copy()
    test_rows = [i for i, s in enumerate(splits) if s == "test"]
    noisy[test_rows] = np.random.default_rng(5).normal(size=(len(test_rows), 32))
    b = fit_from_arrays(noisy, labels, splits)
    assert b.temperature == a.temperature and b.threshold == a.threshold
    np.testing.assert_array_equal(b.centroids, a.centroids)

    test_x = x[test_rows]
    results = a.attribute(test_x, k=3)
    assert np.allclose(a.probabilities(test_x).sum(axis=1), 1.0)
    assert np.mean([r["verdict"] == labels[i] for r, i in zip(results, test_rows)]) > 0.8
    assert all(len(r["top"]) == 3 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in results)
    far = -a.centroids.sum(axis=0)  # points away from every composer
    (r,) = a.attribute(far)
    assert r["verdict"] == UNKNOWN and not r["known"] and r["novelty"] > a.threshold
    # Novelty is measured against the labels' spread: a point off the composers' directions is
    # unknown even at a moderate cosine distance from the nearest centroid.
    assert a.novelty(x[test_rows]).max() < a.novelty(far[None])[0]


def test_attribution_without_valid_split_is_leave_one_out(tmp_path):
    x, labels, _ = clusters(8, 3, 16)
    labels[0] = "Solo"  # a label with one piece has no held-out centroid: left out of calibration
    a = fit_from_arrays(x, labels, [None] * len(labels))
    assert a.fitted["calibration"] == "leave-one-out" and a.fitted["n_calibration"] == len(labels) - 1
    assert "Solo" in a.labels
    a.save(tmp_path)
    b = load_attribution(tmp_path)
    assert b.labels == a.labels and b.threshold == a.threshold
    np.testing.assert_allclose(b.probabilities(x[:5]), a.probabilities(x[:5]), atol=1e-5)
    assert fit_from_arrays(x, [None] * len(labels), [None] * len(labels)) is None
    with pytest.raises(PartitaError, match="no attribution.json"):
        load_attribution(tmp_path / "elsewhere")
    with pytest.raises(PartitaError, match="corrupt attribution"):
        Attribution.from_dict({"labels": ["a"]})


# ------------------------------------------------------------------------------- maps
def test_pca_map_places_new_points_exactly_and_round_trips(tmp_path):
    x, labels, _ = clusters(20, 3, 16)
    state = fit_map(x, method="pca", dims=3, ids=[f"p{i}" for i in range(60)])
    np.testing.assert_allclose(place(state, x, x[:7]), state.coords[:7], atol=1e-9)
    state.save(tmp_path)
    assert load_map(tmp_path, "pca", 2) is None
    again = load_map(tmp_path, "pca", 3)
    assert again.ids == state.ids and again.dims == 3
    np.testing.assert_allclose(place(again, x, x[:7]), state.coords[:7], atol=1e-3)


def test_tsne_map_is_seeded_and_places_a_near_copy_next_to_its_cluster():
    x, labels, _ = clusters(25, 3, 16, spread=0.4)
    a = fit_map(x, method="tsne", dims=2, seed=3)
    b = fit_map(x, method="tsne", dims=2, seed=3)
    np.testing.assert_array_equal(a.coords, b.coords)
    near = x[:2] + 0.01 * np.random.default_rng(0).normal(size=(2, 16))
    placed = place(a, x, near)
    lab = np.array(labels)
    centres = {c: a.coords[lab == c].mean(axis=0) for c in ("L0", "L1", "L2")}
    for p in placed:  # both copies are of L0 pieces
        d = {c: np.linalg.norm(p - m) for c, m in centres.items()}
        assert min(d, key=d.get) == "L0"
    with pytest.raises(PartitaError, match="at least 5"):
        fit_map(x[:3])
    with pytest.raises(PartitaError, match="2 or 3"):
        fit_map(x, dims=4)


def test_map_figures_are_offline_html_and_png(tmp_path):
    x, labels, _ = clusters(10, 3, 8)
    pieces = pieces_for(labels)
    coords = fit_map(x, method="pca").coords
    hl = [{"name": "query.mid", "coords": [0.0, 0.0], "note": "attributed: L1 (80%)"}]
    page = write_html(figure_html(coords, pieces, highlights=hl, title="my map"), tmp_path / "m.html")
    html = page.read_text()
    assert "<script src=\"http" not in html and "plotly" in html.lower()  # plotly.js inlined
    assert "piece 3" in html and "composer: L2" in html and "query.mid" in html and "composers" in html
    png = figure_png(coords, pieces, tmp_path / "m.png", highlights=hl)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# ------------------------------------------------------------------------------- with a real model
def styled_piece(style: str, seed: int):
    """Seeded pieces of three recognisable kinds: low slow chords, high fast runs, middle steps."""
    rng = np.random.default_rng(seed)
    notes, t = [], 0
    while t < 480 * 40:
        if style == "low":
            root = int(rng.integers(36, 48))
            notes += [(t, 960, root + d, 70) for d in (0, 7, 12)]
            t += 960
        elif style == "high":
            notes.append((t, 120, int(rng.integers(76, 96)), 90))
            t += 120
        else:
            notes.append((t, 480, int(60 + rng.integers(-5, 6)), 60))
            t += 480
    return make_score(notes)


def random_note_piece(seed: int = 0, seconds: float = 60.0):
    """Uniformly random notes: pitch, onset, length and loudness drawn independently."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8)
    ticks = int(seconds * 960)  # make_score: 120 qpm, 480 ticks a quarter
    onsets = np.sort(rng.integers(0, ticks, n))
    return make_score([(int(o), int(rng.integers(30, 960)), int(rng.integers(21, 109)), int(rng.integers(20, 128))) for o in onsets])


def write_labelled_folder(root):
    for style, label in (("low", "Low"), ("high", "High"), ("mid", "Mid")):
        (root / label).mkdir(parents=True)
        for j in range(3):
            styled_piece(style, seed=j).dump_midi(str(root / label / f"{style}{j}.mid"))
    return root


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from partita.bundle import save_bundle
    from partita.models.siavit import SiaViT, SiaViTConfig

    torch.manual_seed(0)
    return save_bundle(SiaViT(SiaViTConfig.tiny()), tmp_path_factory.mktemp("tiny") / "embedder")


def test_embed_folder_into_index_add_search_and_refusals(tiny_bundle, tmp_path):
    src = write_labelled_folder(tmp_path / "midi")
    (src / "Low" / "broken.mid").write_bytes((FIXTURES / "edge" / "control168-corrupt.mid").read_bytes())
    (src / "Mid" / "empty.mid").write_bytes((FIXTURES / "edge" / "empty.mid").read_bytes())
    out = tmp_path / "idx"
    report = embed_into_index([src], out, model=tiny_bundle, windows=3)
    assert report.created and report.added == 9 and len(report.failures) == 2
    assert all("\n" not in reason for _, reason in report.failures)
    index = Index.load(out)
    assert index.counts("label") == {"High": 3, "Low": 3, "Mid": 3}
    assert index.model["fingerprint"] == model_record(tiny_bundle)["fingerprint"] and index.embed == {"windows": 3, "seed": 0}
    a = load_attribution(out)
    assert a.fitted["calibration"] == "leave-one-out" and a.labels == ["High", "Low", "Mid"]

    # The same files again add nothing; a new file is added; its own vector finds it first.
    assert embed_into_index([src], out, model=tiny_bundle).added == 0
    random_note_piece().dump_midi(str(tmp_path / "random.mid"))
    added = embed_into_index([tmp_path / "random.mid"], out)  # no --model: the index's own
    assert added.added == 1 and len(Index.load(out)) == 10
    index = Index.load(out)
    vecs, kept, fails = embed_queries(index, [src / "High" / "high1.mid", FIXTURES / "edge" / "empty.mid"])
    assert len(kept) == 1 and len(fails) == 1 and "no notes" in fails[0][1]
    (hit, *_), = index.search(vecs, k=3)
    assert hit.piece["title"] == "high1" and hit.distance < 1e-4

    # Another model's vectors, other settings, a non-embedder bundle: one-line refusals.
    from partita.bundle import save_bundle
    from partita.models.siavit import SiaViT, SiaViTConfig

    torch.manual_seed(1)
    other = save_bundle(SiaViT(SiaViTConfig.tiny()), tmp_path / "other")
    with pytest.raises(PartitaError, match="not the embedder this index was built with"):
        embed_into_index([tmp_path / "random.mid"], out, model=other)
    with pytest.raises(PartitaError, match="same settings"):
        embed_into_index([src], out, windows=5)
    from partita.pretrained import bundle_path

    with pytest.raises(PartitaError, match="not a siavit or featnet one"):
        embed_into_index([src], tmp_path / "idx2", model=bundle_path("gpt-small"))
    with pytest.raises(PartitaError, match="no piece could be embedded"):
        embed_into_index([FIXTURES / "edge" / "empty.mid"], tmp_path / "idx3", model=tiny_bundle)
    assert not (tmp_path / "idx3" / "index.json").exists()


def test_a_siavit_index_of_a_labelled_folder_gets_a_readout_that_names_its_pieces(tiny_bundle, tmp_path):
    from safetensors.numpy import load_file

    from partita.search import reader as R

    src = tmp_path / "midi"
    for style, label in (("low", "Low"), ("high", "High")):
        (src / label).mkdir(parents=True)
        for j in range(10):
            styled_piece(style, seed=20 + j).dump_midi(str(src / label / f"{style}{j}.mid"))
    out = tmp_path / "idx"
    embed_into_index([src], out, model=tiny_bundle, windows=2)
    index = Index.load(out)
    saved = json.loads((out / "reader.json").read_text())
    # The readout names the index's pieces instead of copying their vectors.
    assert "embedded" not in load_file(str(out / "reader.safetensors")) and len(saved["embedded_ids"]) == 20
    assert saved["embedder_fingerprint"] == index.model["fingerprint"]
    readout = R.load_reader(out)
    assert readout.labels == ["High", "Low"] and readout.fitted["novelty_from"] == ["descriptor", "embedder"]
    new = tmp_path / "new.mid"
    styled_piece("low", seed=77).dump_midi(str(new))
    random_note_piece(seed=5, seconds=20).dump_midi(str(tmp_path / "random.mid"))
    results, failures = R.attribute_files(index, readout, [new, tmp_path / "random.mid"], k=2)
    assert not failures and results[0]["top"][0]["label"] == "Low" and set(results[0]["distances"]) == {"descriptor", "embedder"}
    assert results[0]["novelty"] < results[1]["novelty"]
    # An index that lacks the pieces the readout names is refused in one line.
    lacking = Index.build(index.vectors([0, 1]), index.pieces[:2], model=index.model)
    with pytest.raises(PartitaError, match="names pieces the index lacks"):
        R.load_reader(out).bind(lacking)


def test_embed_prepared_corpus_keeps_labels_and_splits(tiny_bundle, tmp_path):
    from partita.data.prepare import prepare

    src = tmp_path / "midi"
    for style, label in (("low", "Low"), ("high", "High"), ("mid", "Mid")):
        (src / label).mkdir(parents=True)
        for j in range(8):
            styled_piece(style, seed=10 + j).dump_midi(str(src / label / f"{style}{j}.mid"))
    corpus = tmp_path / "corpus"
    prepare(src, corpus, workers=1, valid=0.25, test=0.25, seed=0)
    report = embed_into_index([corpus], tmp_path / "idx", model=tiny_bundle, windows=2, splits=["train", "valid"])
    index = Index.load(tmp_path / "idx")
    splits = index.counts("split")
    assert set(splits) == {"train", "valid"} and report.added == sum(splits.values())
    assert {p["source"] for p in index.pieces} == {"corpus"} and index.pieces[0]["id"].endswith(".mid")
    a = load_attribution(tmp_path / "idx")
    assert a.fitted["calibration"] == "valid split" and a.fitted["n_calibration"] == splits["valid"]


# ------------------------------------------------------------------------------- composer readout
def _notes(score):
    from partita.io import note_array

    return note_array(score, unit="second")


def test_length_normalised_novelty_keeps_the_false_alarm_budget_in_every_length_bin():
    from partita.search.reader import LengthModel, conformal_threshold, length_bins

    rng = np.random.default_rng(0)
    seconds = np.exp(rng.uniform(np.log(20), np.log(900), 4000))
    # Short pieces are farther from everything and spread more: one threshold on the raw
    # distance would call most short pieces unknown and almost no long ones.
    log_d = 0.5 - 0.3 * np.log(seconds) + (0.6 - 0.08 * np.log(seconds)) * rng.normal(size=len(seconds))
    d = np.exp(log_d)
    cal, new = np.arange(2000), np.arange(2000, 4000)
    bins = length_bins(seconds[new])
    raw = d[new] > conformal_threshold(d[cal], alpha=0.1)
    assert raw[bins == 0].mean() > 0.2 and raw[bins == 3].mean() < 0.05
    model = LengthModel.fit(d[cal], seconds[cal])
    th = conformal_threshold(model.score(d[cal], seconds[cal]), alpha=0.1)
    flagged = model.score(d[new], seconds[new]) > th
    for b in range(4):
        assert 0.05 <= flagged[bins == b].mean() <= 0.15
    assert LengthModel.from_dict(model.to_dict()).score(d[:5], seconds[:5]) == pytest.approx(model.score(d[:5], seconds[:5]))
    # Lengths beyond the fitted range are held to the range's edge, never extrapolated.
    assert model.score([0.1], [5000.0]) == pytest.approx(model.score([0.1], [seconds[cal].max()]))


def test_readout_attributes_new_works_explains_exactly_and_round_trips(tmp_path):
    from partita.represent.features import feature_vector
    from partita.search import reader as R

    styles = ("low", "high", "mid")
    notes = [_notes(styled_piece(s, seed=10 * k + j)) for k, s in enumerate(styles) for j in range(6)]
    labels = [s for s in styles for _ in range(6)]
    groups = [f"{s}{j}" for s in styles for j in range(6)]
    # The hand-made feature vector stands in for an index's embedding (any vectors of the pieces).
    readout = R.fit_reader(notes, labels, groups, folds=3, vectors=[feature_vector(n) for n in notes], embedder="fv")
    assert readout.labels == sorted(styles) and readout.fitted["works"] == 18
    assert readout.fitted["top1"] == 1.0 and readout.threshold is not None and 0 < readout.temperature
    assert readout.fitted["novelty_from"] == ["descriptor", "embedder"] and set(readout.length_models) == {"descriptor", "embedder"}
    for k, s in enumerate(styles):
        n = _notes(styled_piece(s, seed=99 + k))  # a work never seen
        views = R.piece_views(n)
        r = readout.attribute(*views, seconds=20.0, vector=feature_vector(n))
        assert r["known"] and r["top"][0]["label"] == s and r["why"]["between"][0] == s
        # The explanation is exact: the features' contributions and the biases sum to the logit gap.
        a, b = (readout.labels.index(x) for x in r["why"]["between"])
        full = readout.explain(*views, a, b, top=10_000)
        z = readout.logits(np.vstack([views[0], views[1][None]])).mean(0)
        assert sum(f["logit"] for f in full) + readout.bias[a] - readout.bias[b] == pytest.approx(z[a] - z[b], abs=0.05)
    # Random notes are far from every training piece.
    rn = _notes(random_note_piece(seed=3, seconds=20))
    far = readout.attribute(*R.piece_views(rn), seconds=20.0, vector=feature_vector(rn))
    assert not far["known"] and far["verdict"] == "unknown composer" and far["novelty"] > far["threshold"]
    with pytest.raises(PartitaError, match="pass the piece's vector"):
        readout.attribute(*R.piece_views(rn), seconds=20.0)
    readout.save(tmp_path)
    back = R.load_reader(tmp_path)
    assert back.labels == readout.labels and back.temperature == readout.temperature and back.embedder == "fv"
    again = back.attribute(*views, seconds=20.0, vector=feature_vector(n))
    assert again["top"][0]["label"] == styles[-1] and again["novelty"] == pytest.approx(r["novelty"], abs=0.05)
    assert not back.attribute(*R.piece_views(rn), seconds=20.0, vector=feature_vector(rn))["known"]
    (tmp_path / "reader.safetensors").write_bytes(b"garbage")
    with pytest.raises(PartitaError, match="corrupt composer readout"):
        R.load_reader(tmp_path)
    assert R.fit_reader(notes[:6], labels[:6], groups[:6]) is None  # one label: nothing to choose between
    # Without vectors the novelty is the descriptor's alone.
    plain = R.fit_reader(notes, labels, groups, folds=3)
    assert plain.embedded is None and set(plain.length_models) == {"descriptor"}
    assert plain.attribute(*views, seconds=20.0)["top"][0]["label"] == styles[-1]


def test_an_interrupted_embed_resumes_where_it_stopped(tmp_path, monkeypatch):
    """Pieces are added and saved a chunk at a time: a run stopped midway keeps what it finished,
    and the same command again embeds only the rest."""
    import shutil

    folder = tmp_path / "piano"
    folder.mkdir()
    for f in sorted((FIXTURES / "performance").glob("Maestro_*.mid"))[:6]:
        shutil.copy(f, folder / f.name)
    monkeypatch.setattr(index_mod, "CHUNK", 2)

    def stop_in_the_third_chunk(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_into_index([folder], tmp_path / "idx", model="featnet-piano", progress=stop_in_the_third_chunk)
    assert len(Index.load(tmp_path / "idx")) == 4  # two chunks saved
    report = embed_into_index([folder], tmp_path / "idx", model="featnet-piano")
    assert (report.added, report.skipped_known, len(report.index)) == (2, 4, 6)
    whole = embed_into_index([folder], tmp_path / "whole", model="featnet-piano").index
    assert np.allclose(Index.load(tmp_path / "idx").vectors(), whole.vectors(), atol=1e-6)
    assert [p["duration"] for p in whole.pieces] == [p["duration"] for p in Index.load(tmp_path / "idx").pieces]
