"""Infilling: the fill-in-the-middle arrangement of training segments, ``partita infill`` and its
Python function, span parsing, a tiny model trained with FIM, the shipped gpt-piano."""

from __future__ import annotations

import numpy as np
import pytest

from partita.data.streams import IGNORE, SongStream, fim_arrange, fim_cut


def test_fim_arrange_positions_tokens_and_loss_mask():
    song = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    bars = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pos = np.array([0, 5, 0, 5, 0, 5, 0, 5])
    SUF, MID = 100, 101
    ids, tgt, b, p = fim_arrange(song, bars, pos, (2, 6), (SUF, MID))
    # SUFFIX [suffix] MIDDLE [prefix][middle]: the prefix and the middle one contiguous stretch
    assert ids.tolist() == [SUF, 16, 17, MID, 10, 11, 12, 13, 14, 15]
    # the markers predict the first token they announce; the suffix its next token (its last
    # one nothing); prefix and middle their next token, the last middle token the bar that ends it
    assert tgt.tolist() == [16, 17, IGNORE, 10, 11, 12, 13, 14, 15, 16]
    # real bars and positions; a marker takes the bar of the token it announces
    assert b.tolist() == [3, 3, 3, 0, 0, 0, 1, 1, 2, 2]
    assert p.tolist() == [0, 0, 5, 0, 0, 5, 0, 5, 0, 5]
    with pytest.raises(ValueError):
        fim_arrange(song, bars, pos, (0, 6), (SUF, MID))


def test_fim_cut_is_bar_aligned():
    bars = np.repeat(np.arange(12), 5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, c = fim_cut(bars, rng, max_bars=3)
        assert bars[a] != bars[a - 1] and bars[c] != bars[c - 1]
        assert 1 <= bars[c] - bars[a] <= 3
    assert fim_cut(np.zeros(20, int), rng) is None


def test_stream_rearranges_a_fraction_of_full_segments_deterministically():
    streams = FakeStreams([200, 150, 90])
    kw = dict(batch_size=2, seq_len=32, loop=True, fim_rate=0.5, fim_tokens=(9998, 9999), seed=3)
    a = [next(s) for s in [SongStream(streams, [0, 1, 2], [7, 8, 9], **kw)] for _ in range(12)]
    b = [next(s) for s in [SongStream(streams, [0, 1, 2], [7, 8, 9], **kw)] for _ in range(12)]
    assert all((x["ids"] == y["ids"]).all() for x, y in zip(a, b))
    rows = [(batch, r) for batch in a for r in range(2)]
    fim = [(batch, r) for batch, r in rows if (batch["ids"][r] == 9998).any()]
    assert 0 < len(fim) < len(rows)
    for batch, r in fim:
        ids, tgt = batch["ids"][r].numpy(), batch["targets"][r].numpy()
        i, j = int(np.flatnonzero(ids == 9998)[0]), int(np.flatnonzero(ids == 9999)[0])
        assert ids[0] in (7, 8, 9) and i == 1 and i < j  # [label, SUFFIX, suffix, MIDDLE, prefix + middle]
        song = np.concatenate([ids[j + 1 :], ids[i + 1 : j]])  # prefix and middle, then the suffix
        assert (np.diff(song) == 1).all()  # a contiguous stretch of the song, every token once
        bars = batch["bars"][r].numpy()
        assert (bars[j + 1 :] == ids[j + 1 :] % 1000 // 4).all()  # real bars of prefix and middle
        assert (bars[i + 1 : j] == ids[i + 1 : j] % 1000 // 4).all()  # and of the suffix
        assert tgt[j] == ids[j + 1] and tgt[-1] == ids[i + 1]  # MIDDLE -> prefix[0]; the end -> suffix[0]
        assert bars[0] == bars[1]  # the label takes the bar of the input after it, as in generation


# --- infilling with a model ------------------------------------------------------------------

from conftest import FIXTURES, FakeStreams, labelled_folder, tokenize  # noqa: E402
from partita.errors import PartitaError  # noqa: E402

PIECE = FIXTURES / "performance" / "Maestro_1.mid"


@pytest.fixture(scope="module")
def fim_bundle(tmp_path_factory):
    """A tiny transformer trained for a few steps with half of its segments arranged for FIM."""
    from partita.data.prepare import prepare
    from partita.train.gpt import train_gpt

    root = tmp_path_factory.mktemp("infill") / "midi"
    labelled_folder(root, {"Piano": sorted((FIXTURES / "performance").glob("Maestro_[1-6].mid"))})
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.2, test=0.2)
    tokenize(out)
    card = train_gpt(out, root.parent / "run", preset="tiny", overrides={"bar_embeddings": True, "xl_memory": True, "context": 192},
                     fim=0.5, batch_size=2, max_steps=6, val_every=100, warmup=2, progress=False)
    assert card["fim"] == 0.5
    return root.parent / "run" / "bundle", out


def _notes(score, t0=None, t1=None):
    out = []
    for track in score.tracks:
        for n in track.notes:
            if t0 is None or not (t0 <= n.time < t1):
                out.append((track.program, n.time, n.duration, n.pitch, n.velocity))
    return sorted(out)


def test_tiny_fim_model_infills_and_keeps_every_note_outside_the_span(fim_bundle):
    from partita.generation.infill import infill
    from partita.io.midi import load

    bundle, _ = fim_bundle
    original = load(PIECE)
    results = infill(bundle, PIECE, bars="5-6", n=2, seed=1)
    assert len(results) == 2
    for r in results:
        assert r.bars == (5, 6) and r.ticks[0] < r.ticks[1] and r.stop in ("bars", "tokens")
        assert r.notes_removed > 0
        assert _notes(r.score, *r.ticks) == _notes(original, *r.ticks)  # outside the span: as it was
        inside = [n for n in _notes(r.score) if r.ticks[0] <= n[1] < r.ticks[1]]
        assert len(inside) == r.notes_added
    again = infill(bundle, PIECE, bars=(5, 6), n=2, seed=1)
    assert [_notes(r.score) for r in again] == [_notes(r.score) for r in results]  # same seed, same notes
    by_time = infill(bundle, PIECE, seconds="8.5-11", seed=1)[0]  # 120 bpm 4/4: bars of 2 s, 5 and 6
    assert by_time.bars == (5, 6)


def test_candidates_pick_the_middle_that_leads_best_into_the_suffix(fim_bundle):
    from partita.bundle import load_bundle
    from partita.generation.infill import SUFFIX_TOKENS, fill_layout, infill, suffix_bits
    from partita.io.midi import load
    from partita.represent.tokens import encode

    bundle, _ = fim_bundle
    b = load_bundle(bundle)
    singles = infill(bundle, PIECE, bars="5-6", n=6, seed=2)  # rows 0-5: the candidates of two groups of 3
    chosen = infill(bundle, PIECE, bars="5-6", n=2, candidates=3, seed=2)
    from partita.edit import prompt_view

    ids = encode(b.tokenizer, prompt_view(load(PIECE)), bos_eos=True)  # the file as the model reads it
    prompt, original = fill_layout(b.model, b.tokenizer, ids, 4, 6)
    suffix = prompt.suffix
    assert 0 < len(suffix) <= SUFFIX_TOKENS  # (fewer with this model's small context)
    np.testing.assert_array_equal(suffix, ids[len(prompt.prefix) + len(original) :][: len(suffix)])
    bits = [suffix_bits(b.model, b.tokenizer, prompt.prefix, r.middle, suffix) for r in singles]
    assert len(set(np.round(bits, 6))) > 1  # the candidates differ, so the choice matters
    for g, r in enumerate(chosen):
        j = 3 * g + int(np.argmin(bits[3 * g : 3 * g + 3]))
        assert r.candidates == 3 and r.suffix_bits == pytest.approx(bits[j])
        np.testing.assert_array_equal(r.middle, singles[j].middle)
        assert _notes(r.score) == _notes(singles[j].score)
    real = suffix_bits(b.model, b.tokenizer, prompt.prefix, original, suffix)
    assert np.isfinite(real) and real > 0
    with pytest.raises(PartitaError, match="candidates"):
        infill(bundle, PIECE, bars="5-6", candidates=0)


def test_span_bits_with_and_without_future(fim_bundle):
    from partita.bundle import load_bundle
    from partita.data.corpus import Corpus
    from partita.data.streams import SongData
    from partita.represent.tokens import token_streams
    from partita.evaluate.gpt import span_bits

    bundle, corpus = fim_bundle
    model = load_bundle(bundle).model
    streams = token_streams(Corpus(corpus))
    pieces = SongData(Corpus(corpus), streams).split["train"][:2]
    spans = span_bits(model, streams, pieces, [model.label_token(0)] * len(pieces), span_bars=1, spans_per_piece=3)
    assert spans["spans"] > 0 and spans["tokens"] > 0
    assert np.isfinite(spans["with_future_bits_per_token"]) and np.isfinite(spans["without_future_bits_per_token"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--bars", "12-9"), "ends before it starts"),
        (("--bars", "0-3"), "whole bar numbers from 1"),
        (("--bars", "nine"), "a range like 9-12"),
        (("--seconds", "5-5"), "ends before it starts"),
        (("--bars", "2-3", "--seconds", "1-2"), "one of them"),
        ((), "one of them"),
        (("--bars", "900-901"), "the file has 174 bars"),
    ],
)
def test_cli_span_mistakes_are_one_line(fim_bundle, tmp_path, capsys, args, expected):
    from partita.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["infill", str(PIECE), "--model", str(fim_bundle[0]), "--out", str(tmp_path / "o"), *args])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_model_without_fim_tokens_is_one_line(tmp_path, capsys):
    from partita.cli import main
    from partita.pretrained import bundle_path

    with pytest.raises(SystemExit) as exit_:
        main(["infill", str(PIECE), "--model", str(bundle_path("gpt-small")), "--bars", "2-3", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not trained for infilling" in lines[0], lines


def test_cli_writes_the_infilled_files(fim_bundle, tmp_path):
    from partita.cli import main
    from partita.io.midi import load

    try:
        main(["infill", str(PIECE), "--model", str(fim_bundle[0]), "--bars", "3-4", "-n", "2", "-k", "2", "--seed", "3",
              "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json")])
    except SystemExit as e:
        assert e.code in (0, None)
    import json

    rows = json.loads((tmp_path / "r.json").read_text())["samples"]
    files = sorted((tmp_path / "o").glob("*.mid"))
    # a version with new notes is written; one whose span the model left empty is said, not written
    assert [f.name for f in files] == [f"Maestro_1-infill-{k:03d}.mid" for k, r in enumerate(rows) if r["new_notes"]]
    assert len(rows) == 2
    original = load(PIECE)
    for row in rows:
        assert row["candidates"] == 2 and row["suffix_bits"] > 0
        if not row["new_notes"]:
            assert row["file"] is None and "no new notes" in row["error"]
            continue
        t0, t1 = row["ticks"]
        assert _notes(load(row["file"]), t0, t1) == _notes(original, t0, t1)


def test_shipped_piano_model_infills_a_fixture():
    from partita.generation.infill import infill
    from partita.io.midi import load
    from partita.pretrained import GPT_PIANO, bundle_path

    original = load(PIECE)
    (r,) = infill(bundle_path(GPT_PIANO), PIECE, bars="3-4", seed=0)
    assert r.bars == (3, 4) and r.stop == "bars"  # the middle ended where the music after it starts
    assert r.notes_added > 0
    assert _notes(r.score, *r.ticks) == _notes(original, *r.ticks)
    assert all(t.program == 0 and not t.is_drum for t in r.score.tracks)  # piano stays piano


def test_init_copies_a_bundles_weights_and_adds_the_fim_rows():
    import torch

    from partita.models.gpt import GPT, GPTConfig
    from partita.train.gpt import _load_initial

    torch.manual_seed(0)
    source = GPT(GPTConfig.preset("tiny", vocab_size=40, n_labels=2))
    model = GPT(GPTConfig.preset("tiny", vocab_size=40, n_labels=2, fim=True))
    _load_initial(model, source)
    src, dst = source.state_dict(), model.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in src if k != "wte.weight")
    rows = src["wte.weight"].shape[0]
    assert torch.equal(dst["wte.weight"][:rows], src["wte.weight"])
    assert torch.equal(dst["wte.weight"][rows:], src["wte.weight"][-1:].expand(2, -1))  # copies of "no label"
    assert model.fill_token("middle") == model.config.n_embeddings - 1


def test_train_init_from_a_bundle(fim_bundle, tmp_path):
    from partita.bundle import load_bundle
    from partita.train.gpt import train_gpt

    bundle, corpus = fim_bundle
    card = train_gpt(corpus, tmp_path / "ft", init=bundle, fim=0.5, batch_size=2, max_steps=1, warmup=1, progress=False)
    assert card["init"] == str(bundle) and card["fim"] == 0.5 and card["preset"] is None
    assert load_bundle(tmp_path / "ft" / "bundle").model.config == load_bundle(bundle).model.config


def test_init_adds_bar_embeddings_that_start_at_zero():
    """A bundle without bar embeddings fine-tuned with them: the new tables start at zero, so the
    model computes what the bundle computed until training moves them."""
    import torch

    from partita.models.gpt import GPT, GPTConfig
    from partita.train.gpt import _load_initial

    torch.manual_seed(0)
    source = GPT(GPTConfig.preset("tiny", vocab_size=40, n_labels=2)).eval()
    model = GPT(GPTConfig.preset("tiny", vocab_size=40, n_labels=2, bar_embeddings=True)).eval()
    _load_initial(model, source)
    assert not model.bar_emb.weight.detach().any() and not model.pos_emb.weight.detach().any()
    ids = torch.randint(0, 40, (2, 12))
    bars, pos = torch.randint(0, 8, (2, 12)), torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids, bars=bars, positions=pos)[0], source(ids)[0])


def test_train_init_adds_bar_embeddings_and_refuses_other_changes(fim_bundle, tmp_path):
    from partita.bundle import load_bundle, save_bundle
    from partita.errors import PartitaError
    from partita.models.gpt import GPT, GPTConfig
    from partita.train.gpt import train_gpt

    with_bars, corpus = fim_bundle
    source = load_bundle(with_bars)
    plain = GPT(GPTConfig.from_dict({**source.model.config.to_dict(), "bar_embeddings": False}))
    plain.load_state_dict({k: v for k, v in source.model.state_dict().items() if not k.startswith(("bar_emb", "pos_emb"))})
    bundle = tmp_path / "plain"
    save_bundle(plain, bundle, tokenizer=source.tokenizer, card=source.card)
    card = train_gpt(corpus, tmp_path / "bars", init=bundle, fim=0.5, overrides={"bar_embeddings": True, "max_bars": 32},
                     batch_size=2, max_steps=1, warmup=1, progress=False)
    trained = load_bundle(tmp_path / "bars" / "bundle").model
    assert trained.config.bar_embeddings and trained.config.max_bars == 32
    assert trained.bar_emb.weight.detach().any()  # one step moved the new table
    assert card["init"] == str(bundle)
    with pytest.raises(PartitaError, match="n_layer"):
        train_gpt(corpus, tmp_path / "layers", init=bundle, overrides={"n_layer": 3}, batch_size=2, max_steps=1, progress=False)
    with pytest.raises(PartitaError, match="tokeni"):  # a shipped name is found; its tokens are not this corpus's
        train_gpt(corpus, tmp_path / "shipped", init="gpt-piano", batch_size=2, max_steps=1, progress=False)
    with pytest.raises(PartitaError, match="already has bar embeddings"):
        train_gpt(corpus, tmp_path / "again", init=tmp_path / "bars" / "bundle", overrides={"max_bars": 16},
                  batch_size=2, max_steps=1, progress=False)


def test_fill_layout_puts_suffix_first_in_the_last_window(fim_bundle):
    """A span late in a long piece: the start of the prefix in whole windows (as many as the
    memories hold), then one window that starts with SUFFIX, the suffix, MIDDLE and the end of
    the prefix, which the middle continues."""
    from partita.bundle import load_bundle
    from partita.generation.infill import _memory_windows, fill_layout
    from partita.io.midi import load
    from partita.represent.tokens import encode, token_timing

    bundle, _ = fim_bundle
    b = load_bundle(bundle)
    model, tok = b.model, b.tokenizer
    ids = encode(tok, load(PIECE), bos_eos=True)
    bars, _ = token_timing(tok, ids)
    first = int(bars[len(ids) * 3 // 4])
    prompt, original = fill_layout(model, tok, ids, first, first + 2)
    C1 = model.config.context - 1
    suf, mid = model.fill_token("suffix"), model.fill_token("middle")
    i, j = int(np.flatnonzero(prompt.ids == suf)[0]), int(np.flatnonzero(prompt.ids == mid)[0])
    assert i > 0 and i % C1 == 0  # whole windows before it: the last one starts with SUFFIX
    assert i <= _memory_windows(model.config) * C1 < len(prompt.prefix)  # no more than the memories hold
    np.testing.assert_array_equal(prompt.ids[:i], prompt.prefix[len(prompt.prefix) - (len(prompt.ids) - j - 1) - i :][:i])
    np.testing.assert_array_equal(prompt.ids[i + 1 : j], prompt.suffix)
    np.testing.assert_array_equal(prompt.ids[j + 1 :], prompt.prefix[len(prompt.prefix) - (len(prompt.ids) - j - 1) :])
    assert len(prompt.ids) - i + min(len(original), (C1 + 1) // 2) <= C1  # and room for the middle
    assert prompt.bars[i] == bars[len(prompt.prefix) + len(original)]  # SUFFIX: the bar where the suffix starts
