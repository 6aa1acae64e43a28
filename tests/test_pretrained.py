"""The GPT that ships in the package: loads offline, is small, says how it was made, generates."""

from __future__ import annotations

import numpy as np

import partita
from partita.pretrained import bundle_path


def test_shipped_gpt_bundle_is_complete_and_small():
    path = bundle_path()
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 25 * 2**20
    bundle = partita.load(path)
    card = bundle.card
    assert card["family"] == "gpt" and len(card["labels"]) == bundle.model.config.n_labels >= 10
    assert any(c.startswith("partita train gpt") for c in card["commands"])
    test = card["metrics"]["test"]
    assert test["split"] == "test" and test["pieces"] > 0
    assert bundle.tokenizer is not None and len(bundle.tokenizer) == bundle.model.config.vocab_size


def test_shipped_gpt_generates_in_a_composers_style():
    scores = partita.generate(chords="C G Am F", composer="bach", bars=2, n=2, seed=1)
    assert len(scores) == 2
    assert all(s.note_num() > 0 for s in scores)
    again = partita.generate(chords="C G Am F", composer="bach", bars=2, n=2, seed=1)
    assert [s.note_num() for s in scores] == [s.note_num() for s in again]
    assert np.isfinite([s.to("second").end() for s in scores]).all()


def test_piano_prompts_go_to_the_shipped_piano_transformer(fixtures):
    from partita.pretrained import GPT, GPT_PIANO, default_gpt

    piano = fixtures / "performance" / "Maestro_1.mid"
    assert default_gpt(piano).name == GPT_PIANO
    assert default_gpt(None).name == default_gpt(fixtures / "multitrack" / "Aicha.mid").name == GPT
    bundle = partita.load(default_gpt(piano))
    card = bundle.card
    assert card["family"] == "gpt" and card["data"]["licence"] == "CC BY-NC-SA 4.0"
    test = card["metrics"]["test"]
    assert test["transformer, with memory"]["bits_per_token"] < 0.85 * test["5-gram (Kneser-Ney)"]["bits_per_token"]
    (sample,) = partita.generate(prompt=piano, prompt_seconds=4, n=1, max_new_tokens=48, seed=0)
    tracks = [t for t in sample.tracks if t.note_num() > 0]
    assert tracks and all(not t.is_drum and t.program == 0 for t in tracks)  # the prompt's piano, nothing added
