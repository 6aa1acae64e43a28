"""``partita eval continuation``: window features, baselines, and a whole run on fixture pieces
with a tiny model (bounded: a few seconds of music)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from partita.bundle import save_bundle
from partita.data.prepare import prepare
from partita.errors import PartitaError
from partita.evaluate.continuation import CANDIDATES, evaluate_continuation, window_features
from partita.io.midi import note_array
from partita.models.gpt import GPT, GPTConfig
from partita.represent import tokens as T
from conftest import FIXTURES, labelled_folder, make_score


def test_window_features_by_hand():
    # 4 notes in [0, 2): a C major chord (C E G) at 0 s then a C at 1 s; one note outside
    score = make_score([(0, 960, 60, 80), (0, 960, 64, 80), (0, 960, 67, 80), (960, 480, 72, 80),
                        (1920, 480, 50, 80)], qpm=120)  # 480 ticks = 0.5 s
    notes = note_array(score, unit="second")
    f = window_features(notes, 0.0, 2.0)
    assert f["notes"] == 4 and f["density"] == pytest.approx(2.0)
    assert f["mean_pitch"] == pytest.approx((60 + 64 + 67 + 72) / 4) and f["pitch_range"] == 12
    assert f["ioi"] == pytest.approx(1.0)  # the chord is one onset group
    assert f["pch"][0] == pytest.approx(0.5) and f["pch"][4] == pytest.approx(0.25)
    assert f["polyphony"] == pytest.approx(3.5 / 1.5)  # 3 notes for 1 s, then 1 for 0.5 s (time-weighted)
    empty = window_features(notes, 5.0, 6.0)
    assert empty["notes"] == 0 and math.isnan(empty["mean_pitch"]) and empty["density"] == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cont") / "midi"
    labelled_folder(root, {"Piano": sorted((FIXTURES / "performance").glob("Maestro_*.mid"))[:6]})
    corpus = root.parent / "corpus"
    prepare(root, corpus, workers=1, valid=0.0, test=0.5)
    tok = T.make_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=len(tok), n_labels=1, bar_embeddings=True)).eval()
    bundle = save_bundle(model, root.parent / "bundle", tokenizer=tok, card={"labels": ["Piano"]})
    return corpus, bundle


def test_eval_continuation_on_fixtures(setup):
    corpus, bundle = setup
    one = torch.get_num_threads()
    r = evaluate_continuation(bundle, corpus, prompt_seconds=3.0, seconds=1.5, max_pieces=2, seed=1)
    again = evaluate_continuation(bundle, corpus, prompt_seconds=3.0, seconds=1.5, max_pieces=2, seed=1)
    assert torch.get_num_threads() == one
    assert r["pieces"] == again["pieces"]  # seeded: the same continuations
    assert r["settings"]["pieces"] == len(r["pieces"]) == 2
    for row in r["pieces"]:
        assert set(CANDIDATES) <= set(row)
        real = row["real"]
        assert real["pch_to_real"] == pytest.approx(1.0) and real["notes"] > 0
        assert row["model"]["notes"] >= 0 and row["stops"][0] in ("seconds", "tokens")  # untrained: may hit the cap
        assert 0.0 <= row["repeat"]["pch_to_prompt"] <= 1.0
    s = r["summary"]
    assert s["real"]["pch_similarity_to_real"] == pytest.approx(1.0)
    for c in CANDIDATES[1:]:
        assert s[c]["density_within_30pct_of_real"] <= 1.0
    t = r["targets"]
    assert t["pch_similarity_to_prompt"]["goal"] == pytest.approx(s["real"]["pch_similarity_to_prompt"] - 0.05)
    assert t["pch_similarity_to_prompt"]["met"] == (s["model"]["pch_similarity_to_prompt"] >= t["pch_similarity_to_prompt"]["goal"])
    # the "other piece" baseline is the next piece's real continuation
    assert r["pieces"][0]["other piece"]["density"] == pytest.approx(r["pieces"][1]["real"]["density"])


def test_eval_continuation_errors(setup, tmp_path):
    corpus, bundle = setup
    with pytest.raises(PartitaError, match="must not exceed"):
        evaluate_continuation(bundle, corpus, prompt_seconds=2.0, seconds=3.0)
    with pytest.raises(PartitaError, match="no test piece lasts"):
        evaluate_continuation(bundle, corpus, prompt_seconds=5000.0, seconds=10.0)
    proc = subprocess.run([sys.executable, "-m", "partita", "eval", "continuation", "--model", bundle, "--data",
                           tmp_path / "nothing"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_eval_continuation_command(setup, tmp_path):
    corpus, bundle = setup
    proc = subprocess.run([sys.executable, "-m", "partita", "eval", "continuation", "--model", bundle, "--data", corpus,
                           "--prompt-seconds", "3", "--seconds", "1.5", "--pieces", "1", "--threads", "1",
                           "--json", tmp_path / "c.json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "target pch_similarity_to_prompt" in proc.stdout and "target density_ratio_to_real" in proc.stdout
    out = json.loads((tmp_path / "c.json").read_text())
    assert out["settings"]["pieces"] == 1 and len(out["pieces"]) == 1


def test_shipped_piano_model_same_tokens_on_1_and_2_threads():
    """The shipped gpt-piano (XL + kNN memory) continuing a real piano prompt longer than its
    context (read window by window into the memories): the same seed gives the same tokens with
    1 thread, 2 threads and the automatic choice."""
    from partita.generation import build_prompt, resolve_model
    from partita.generation.sampling import sample
    from partita.pretrained import GPT_PIANO, bundle_path

    model, tok, _, _ = resolve_model(bundle_path(GPT_PIANO), device="cpu")
    prompt = build_prompt(tok, FIXTURES / "performance" / "Maestro_3.mid", prompt_tokens=1100)
    assert len(prompt) > 2 * model.config.context
    n = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, None):
            torch.set_num_threads(2)
            outs.append(sample(model, tok, prompts=prompt, n=2, seed=5, max_new_tokens=16, threads=threads))
    finally:
        torch.set_num_threads(n)
    for other in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], other))
