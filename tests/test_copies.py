"""Copy check: bar hashes, the longest run shared with one training piece, the index files, the
``partita data copy-index`` command and ``partita generate --check-copies``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.data.prepare import prepare
from partita.errors import PartitaError
from partita.generation.copies import COPY_FILE, CopyIndex, bar_hashes, build_copy_index, new_bar_start
from partita.models.gpt import GPT, GPTConfig
from partita.represent import tokens as T
from conftest import FIXTURES, labelled_folder, make_score


def run(*args):
    return subprocess.run([sys.executable, "-m", "partita", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tok():
    return T.make_tokenizer()


def bars_score(bars: list[list[int]], velocity: int = 80):
    """One bar of 4/4 per list of pitches (quarter notes; an empty list is a bar of rest)."""
    notes = [(b * 1920 + k * 480, 480, p, velocity) for b, pitches in enumerate(bars) for k, p in enumerate(pitches)]
    return make_score(notes)


def test_bar_hashes_follow_notes_not_dynamics(tok):
    a = T.encode(tok, bars_score([[60, 62], [64], [], [67, 69, 71]]))
    h = bar_hashes(tok, a)
    assert len(h) == 4 and h[2] == 0 and (np.delete(h, 2) != 0).all()  # a bar of rest has no hash
    assert len(set(h[[0, 1, 3]].tolist())) == 3
    louder = bar_hashes(tok, T.encode(tok, bars_score([[60, 62], [64], [], [67, 69, 71]], velocity=110)))
    assert np.array_equal(h, louder)  # velocities are left out
    other = bar_hashes(tok, T.encode(tok, bars_score([[60, 62], [65], [], [67, 69, 71]])))
    assert (other != h).tolist() == [False, True, False, False]  # one note changed: one bar
    assert len(bar_hashes(tok, [T.special_id(tok, "BOS")])) == 0


def test_longest_run_in_one_piece(tok):
    rng = np.random.default_rng(0)
    pieces = [[list(rng.integers(40, 90, 3)) for _ in range(12)] for _ in range(3)]
    hashes = [bar_hashes(tok, T.encode(tok, bars_score(p))) for p in pieces]
    kept = [np.flatnonzero(h) for h in hashes]
    index = CopyIndex(np.concatenate([h[k] for h, k in zip(hashes, kept)]),
                      np.cumsum([0] + [len(k) for k in kept]), ["A", "B", "C"],
                      bar_numbers=np.concatenate(kept))
    # a sample: 2 new bars, bars 3-8 of B, a rest, bars 9-10 of B, then bar 0 of C
    fresh = [list(rng.integers(40, 90, 3)) for _ in range(2)]
    sample = fresh + pieces[1][3:9] + [[]] + pieces[1][9:11] + pieces[2][:1]
    m = index.check(tok, T.encode(tok, bars_score(sample)))
    assert (m.bars, m.piece, m.piece_bars, m.sample_bars) == (8, "B", (3, 10), (2, 10))  # the rest is skipped
    # runs never join two pieces: the end of A then the start of B is two runs
    m = index.check(tok, T.encode(tok, bars_score(pieces[0][9:] + pieces[1][:2])))
    assert m.bars == 3 and m.piece == "A"
    # only new bars count: with the copied bars in the prompt, nothing is copied
    ids = T.encode(tok, bars_score(pieces[1][:5] + fresh))
    first_new = np.flatnonzero(T.token_timing(tok, ids)[0] == 5)[0]
    assert new_bar_start(tok, ids, first_new) == 5
    assert index.check(tok, ids, first_new).bars == 0
    assert index.check(tok, ids, 0).bars == 5
    assert index.check(tok, T.encode(tok, bars_score(fresh))).bars == 0


@pytest.fixture(scope="module")
def corpus_and_bundle(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("copies") / "midi"
    labelled_folder(root, {"Piano": sorted((FIXTURES / "performance").glob("Maestro_[1234].mid")),
                           "Pop": sorted((FIXTURES / "multitrack").glob("POP909_*.mid"))[:3]})
    corpus = root.parent / "corpus"
    prepare(root, corpus, workers=1, valid=0.2, test=0.2)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=len(tok), n_labels=2, bar_embeddings=True)).eval()
    bundle = save_bundle(model, root.parent / "bundle", tokenizer=tok, card={"labels": ["Piano", "Pop"]})
    return Corpus(corpus), bundle


def test_build_load_and_check_a_corpus(tok, corpus_and_bundle, tmp_path):
    corpus, bundle = corpus_and_bundle
    index = build_copy_index(corpus.path, bundle, split="train")
    assert (bundle / COPY_FILE).is_file()
    card = json.loads((bundle / "card.json").read_text())
    train = corpus.indices(split="train")
    assert card["copy_index"]["pieces"] == len(train) == len(index) and card["copy_index"]["split"] == "train"
    again = CopyIndex.load(bundle, tok)
    assert np.array_equal(again.hashes, index.hashes) and again.pieces == index.pieces
    for i in corpus.indices():  # a training piece is copied whole; the others share (almost) nothing
        h = bar_hashes(tok, T.encode(tok, corpus.score(i)))
        m = again.longest(h)
        if i in train:
            assert m.bars == int((h != 0).sum()) and m.piece == corpus.pieces[i]["title"]
        else:
            assert m.bars <= 2
    with pytest.raises(PartitaError, match="copy-index"):
        CopyIndex.load(tmp_path, tok)
    with pytest.raises(PartitaError, match="no pieces"):
        build_copy_index(corpus.path, bundle, split="nothing", out=tmp_path)


def test_generate_check_copies_flags_what_was_indexed(tok, corpus_and_bundle, tmp_path):
    """Samples are indexed after a first run; the same seed gives the same samples, so a second run
    with --check-copies finds each one whole in the index."""
    _, bundle = corpus_and_bundle
    model = tmp_path / "bundle"
    save_bundle(GPT(GPTConfig.preset("tiny", vocab_size=len(tok), n_labels=2, bar_embeddings=True)).eval(), model,
                tokenizer=tok, card={"labels": ["Piano", "Pop"]})
    common = ["generate", "--model", model, "-n", "2", "--bars", "4", "--max-tokens", "3000", "--seed", "3", "--threads", "1"]
    proc = run(*common, "--check-copies", "--out", tmp_path / "none")
    assert proc.returncode != 0 and "copy-index" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(*common, "--out", tmp_path / "a", "--tokens")
    assert proc.returncode == 0, proc.stderr
    samples = [np.load(tmp_path / "a" / f"sample-00{i}.npy") for i in range(2)]
    hashes = [bar_hashes(tok, s) for s in samples]
    kept = [np.flatnonzero(h) for h in hashes]
    assert all(len(k) >= 1 for k in kept) and sum(len(k) for k in kept) >= 3
    CopyIndex(np.concatenate([h[k] for h, k in zip(hashes, kept)]), np.cumsum([0] + [len(k) for k in kept]),
              ["first", "second"], bar_numbers=np.concatenate(kept)).save(model)
    proc = run(*common, "--out", tmp_path / "b", "--check-copies", "--max-copied-bars", "1", "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["samples"]
    assert [r["copied_bars"] for r in rows] == [len(k) for k in kept]
    assert [r["copied_from"] for r in rows] == ["first", "second"]
    assert all(r["copy_flag"] for r in rows) and "COPY" in proc.stdout and "2 of 2 sample(s)" in proc.stdout
    proc = run(*common, "--out", tmp_path / "c", "--check-copies", "--max-copied-bars", "1000", "--json", tmp_path / "c.json")
    assert not any(r["copy_flag"] for r in json.loads((tmp_path / "c.json").read_text())["samples"])


def test_copy_index_command(corpus_and_bundle, tmp_path):
    corpus, bundle = corpus_and_bundle
    proc = run("data", "copy-index", corpus.path, "--model", bundle, "--split", "all", "--out", tmp_path / "idx")
    assert proc.returncode == 0, proc.stderr
    assert len(CopyIndex.load(tmp_path / "idx")) == len(corpus)
    proc = run("data", "copy-index", corpus.path, "--model", tmp_path / "nothing")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["gpt-small", "gpt-piano"])
def test_shipped_models_have_their_copy_index(name):
    from partita.pretrained import bundle_path

    path = bundle_path(name)
    index = CopyIndex.load(path, T.load_tokenizer(path / "tokenizer.json"))
    card = json.loads((path / "card.json").read_text())
    assert len(index) == card["copy_index"]["pieces"] > 500 and index.bars == card["copy_index"]["bars"]
    assert (path / COPY_FILE).stat().st_size < 2 * 2**20  # hashes only
