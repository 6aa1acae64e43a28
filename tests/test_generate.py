"""partita.generate: cached and sliding decoding against full recomputation, filters, seeds, stops,
repair of whatever a model samples, prompts, and the ``partita generate`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import FIXTURES, make_score

import partita
from partita.bundle import save_bundle
from partita.errors import PartitaError
from partita.generation import build_prompt, generate_samples, resolve_label
from partita.generation.sampling import (
    IncrementalTiming,
    SamplingConfig,
    SecondsClock,
    choose,
    decode_safe,
    filter_logits,
    repair_tokens,
    row_generator,
    sample,
)
from partita.io import load, note_array
from partita.io.prompts import parse_prompt
from partita.models import GPT, GPTConfig
from partita.represent import tokens as T

POP = FIXTURES / "multitrack" / "POP909_008.mid"
ELISE = FIXTURES / "edge" / "fur-elise.mid"
CORRUPT = FIXTURES / "edge" / "control168-corrupt.mid"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared machine: one thread is much faster than two fighting ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return T.make_tokenizer()


def tiny(tok, sharpen: float = 20.0, **overrides) -> GPT:
    """An untrained tiny GPT; ``sharpen`` scales the tied embedding so that logits are far apart
    (greedy comparisons then never hinge on float rounding). EOS gets logit 0, so lengths are known."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", **{"vocab_size": len(tok), "n_labels": 2, "bar_embeddings": True,
                                            **overrides})).eval()
    with torch.no_grad():
        model.wte.weight.mul_(sharpen)
        model.wte.weight[T.special_id(tok, "EOS")] = 0.0
    return model


def random_prompt(tok, length: int, seed: int = 0) -> np.ndarray:
    """BOS then ``length - 1`` ids a model could sample."""
    sampleable = np.flatnonzero(~T.token_tables(tok).special)
    return np.concatenate([[T.special_id(tok, "BOS")], np.random.default_rng(seed).choice(sampleable, length - 1)])


def banned_ids(tok) -> torch.Tensor:
    banned = torch.from_numpy(T.token_tables(tok).special.copy())
    banned[T.special_id(tok, "EOS")] = False
    return banned


def reference(model, tok, prompt, n_new, *, label=None, gen=None, window=None, recompute=None, **filters):
    """Naive decoding: at every step the whole sequence (or the window ``recompute`` says) goes
    through the model from scratch, with ``token_timing`` of the whole sequence as bar inputs."""
    eos = T.special_id(tok, "EOS")
    seq = [model.label_token(label), *map(int, prompt)]
    gens = [gen if gen is not None else torch.Generator().manual_seed(0)]
    first = 1
    for _ in range(n_new):
        song = np.array(seq[1:])
        bars, pos = T.token_timing(tok, song)
        if recompute is not None:
            first = recompute(len(seq), first)
        ids = [seq[0], *seq[first:]]
        b = [int(bars[first - 1]), *bars[first - 1 :]]
        p = [0, *pos[first - 1 :]]
        logits, _ = model(torch.tensor([ids]), bars=torch.tensor([b]), positions=torch.tensor([p]), window=window)
        t = int(choose(logits[:, -1], gens, banned=banned_ids(tok), **filters)[0])
        seq.append(t)
        if t == eos:
            break
    return np.array(seq[1:])


# --------------------------------------------------------------------------- filters


def test_filters_keep_the_right_tokens():
    probs = torch.tensor([[0.40, 0.25, 0.15, 0.12, 0.08]])
    logits = probs.log()

    def kept(**kw):
        return torch.isfinite(filter_logits(logits, **kw))[0].nonzero().flatten().tolist()

    assert kept() == [0, 1, 2, 3, 4]
    assert kept(top_k=2) == [0, 1]
    assert kept(top_k=1) == [0]
    assert kept(top_p=0.3) == [0]  # 0.40 alone reaches 0.3
    assert kept(top_p=0.5) == [0, 1]  # the token that crosses 0.5 is kept
    assert kept(top_p=0.7) == [0, 1, 2]  # 0.40 + 0.25 < 0.7
    assert kept(top_p=1.0) == [0, 1, 2, 3, 4]
    assert kept(min_p=0.5) == [0, 1]  # p >= 0.20
    assert kept(min_p=0.31) == [0, 1, 2]  # p >= 0.124
    # Composition: top-k first, then top-p on the renormalised top-3 (0.5, 0.3125, 0.1875).
    assert kept(top_k=3, top_p=0.75) == [0, 1]
    assert kept(top_p=0.75) == [0, 1, 2]
    # Temperature first: at 0.5 the distribution sharpens (0.40^2 : 0.25^2 ...), top-p 0.7 keeps two.
    assert kept(temperature=0.5, top_p=0.7) == [0, 1]
    assert torch.allclose(filter_logits(logits, temperature=0.5), logits / 0.5)
    for bad in ({"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"min_p": -0.1}, {"temperature": -1.0}):
        with pytest.raises(PartitaError):
            filter_logits(logits, **bad)


def test_choose_greedy_and_banned():
    logits = torch.tensor([[0.0, 5.0, 1.0], [9.0, 1.0, 2.0]])
    gens = [torch.Generator().manual_seed(0)] * 2
    assert choose(logits, gens, temperature=0).tolist() == [1, 0]
    assert choose(logits, gens, temperature=0, banned=torch.tensor([True, False, False])).tolist() == [1, 2]
    assert choose(logits, gens, top_k=1).tolist() == [1, 0]
    nan = torch.full((1, 3), float("nan"))  # a broken model still gives an allowed id
    assert choose(nan, gens[:1], banned=torch.tensor([True, False, True])).tolist() == [1]


def test_choose_draws_in_proportion_and_never_an_impossible_id():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    logits = torch.log(probs)[None].repeat(2, 1)  # log 0 = -inf
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    draws = torch.stack([choose(logits, gens) for _ in range(4000)])  # [4000, 2]
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=5).float() / 4000
        assert freq[1] == 0 and freq[4] == 0
        assert torch.allclose(freq, probs, atol=0.03), freq


# --------------------------------------------------------------------------- cache vs recomputation


def test_cached_decoding_equals_full_recomputation(tok):
    """Within the context: batched KV-cache decoding of prompts of different lengths gives, token
    for token, what running the whole sequence through the model at every step gives (greedy and
    seeded sampling, with bar embeddings fed by the incremental timing)."""
    model = tiny(tok, context=96)
    prompts = [np.array([1]), T.encode(tok, make_score([(i * 240, 240, 60 + i % 7, 80) for i in range(6)]), bos_eos=True)[:-1]]
    assert 1 + len(prompts[1]) + 30 <= model.config.context
    greedy = sample(model, tok, prompts=prompts, n=2, temperature=0, max_new_tokens=30, label=1)
    seeded = sample(model, tok, prompts=prompts, n=2, temperature=1.0, top_p=0.95, seed=7, max_new_tokens=30, label=1)
    for r, (pi, si) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        ref = reference(model, tok, prompts[pi], 30, label=1, temperature=0)
        np.testing.assert_array_equal(greedy[r], ref)
        ref = reference(model, tok, prompts[pi], 30, label=1, gen=row_generator(7, pi, si), temperature=1.0, top_p=0.95)
        np.testing.assert_array_equal(seeded[r], ref)
    assert not np.array_equal(seeded[0], seeded[1])  # two samples of one prompt differ


def test_sliding_window_past_the_context_equals_windowed_forward(tok):
    """keep_label=False: cropping the cache to C-1 before each token is exactly
    ``forward(window=C)`` over the whole sequence, for a model of any depth, far past C."""
    model = tiny(tok, context=16)
    prompt = np.array([1, 4, 180, 5])
    out = sample(model, tok, prompts=prompt, temperature=0, max_new_tokens=40, keep_label=False)[0]
    assert len(out) == 44 > 16
    np.testing.assert_array_equal(out, reference(model, tok, prompt, 40, window=16, temperature=0))
    long_prompt = random_prompt(tok, 34)  # longer than C: windowed attention over the prompt too
    out = sample(model, tok, prompts=long_prompt, temperature=0, max_new_tokens=10, keep_label=False)[0]
    np.testing.assert_array_equal(out, reference(model, tok, long_prompt, 10, window=16, temperature=0))


def _window_of(C):
    """The reference's window when the label is kept: ``[label, last C-1 tokens]``."""
    return lambda n, first: max(1, n - (C - 1))


def test_label_kept_in_the_window_equals_recomputing_it(tok):
    """Default mode: past the context the window is [label, last C-1 tokens], as in training. With
    one layer (keys depend only on their token) sliding equals recomputing that window each step."""
    model = tiny(tok, context=16, n_layer=1)
    prompt = np.array([1, 4, 180, 5])
    out = sample(model, tok, prompts=prompt, temperature=0, max_new_tokens=40, label=0)[0]
    np.testing.assert_array_equal(out, reference(model, tok, prompt, 40, label=0, recompute=_window_of(16), temperature=0))
    long_prompt = random_prompt(tok, 34)  # longer than the window: its last C-1 tokens are read
    out = sample(model, tok, prompts=long_prompt, temperature=0, max_new_tokens=10, label=0)[0]
    ref = reference(model, tok, long_prompt, 10, label=0, recompute=_window_of(16), temperature=0)
    np.testing.assert_array_equal(out, ref)
    deep = tiny(tok, context=16)  # more layers: runs past the context, never larger than it
    assert len(sample(deep, tok, n=2, temperature=1.0, max_new_tokens=60, seed=1)[1]) == 61


def test_learned_positions_recompute_the_window(tok):
    C = 16
    K = C - C // 4
    model = tiny(tok, context=C, positions="learned")

    def window(n, first):  # the generator recomputes [label, last K-1 tokens] when the window is full
        return n - (K - 1) if n - first >= C else first

    prompt = np.array([1, 4, 180, 5])
    out = sample(model, tok, prompts=prompt, temperature=0, max_new_tokens=45, label=1)[0]
    assert len(out) == 49
    np.testing.assert_array_equal(out, reference(model, tok, prompt, 45, label=1, recompute=window, temperature=0))


@pytest.mark.parametrize("memory", [{"xl_memory": True}, {"knn_memory": True, "knn_topk": 4},
                                    {"xl_memory": True, "positions": "learned"}])
def test_memory_models_generate_past_the_context(tok, memory):
    model = tiny(tok, context=8, **memory)
    prompts = [np.array([1, 4, 180, 5, 190, 300, 7, 8, 4, 181, 5]), np.array([1])]  # one longer than C
    out = sample(model, tok, prompts=prompts, n=2, temperature=1.0, max_new_tokens=20, seed=3, return_details=True)
    assert [(o.prompt_index, o.sample_index, o.stop) for o in out] == [(0, 0, "tokens"), (0, 1, "tokens"),
                                                                       (1, 0, "tokens"), (1, 1, "tokens")]
    assert [len(o.ids) for o in out] == [31, 31, 21, 21]
    again = sample(model, tok, prompts=prompts, n=2, temperature=1.0, max_new_tokens=20, seed=3)
    assert all(np.array_equal(a.ids, b) for a, b in zip(out, again))


# --------------------------------------------------------------------------- seeds


def test_seeds_and_top_k_one(tok):
    model = tiny(tok, sharpen=3.0)
    kw = dict(prompts=[np.array([1])], max_new_tokens=25, temperature=1.0)
    a = sample(model, tok, n=3, seed=5, **kw)
    b = sample(model, tok, n=3, seed=5, **kw)
    c = sample(model, tok, n=3, seed=6, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert np.array_equal(sample(model, tok, n=1, seed=5, **kw)[0], a[0])  # sample j does not depend on n
    assert np.array_equal(sample(model, tok, n=3, seed=5, batch_size=2, **kw)[2], a[2])
    greedy = sample(model, tok, n=2, temperature=0, prompts=[np.array([1])], max_new_tokens=25)
    top1 = sample(model, tok, n=2, top_k=1, seed=9, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(greedy, top1))


# --------------------------------------------------------------------------- timing and repair


@pytest.fixture(scope="module")
def tokenizers():
    scores = [load(ELISE), load(POP)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bpe = T.train_tokenizer(scores, vocab_size=700)
    toks = {name: T.make_tokenizer(name) for name in ("REMI", "TSD", "MIDILike", "Structured")}
    toks["REMI+BPE"] = bpe
    return toks, scores


def test_incremental_timing_equals_token_timing(tokenizers):
    toks, scores = tokenizers
    rng = np.random.default_rng(0)
    for name, tk in toks.items():
        sampleable = np.flatnonzero(~T.token_tables(tk).special)  # what a model may generate
        seqs = [T.encode(tk, s, bos_eos=True)[:600] for s in scores]
        seqs += [np.concatenate([[1], rng.choice(sampleable, 200)]) for _ in range(3)]
        for seq in seqs:
            want = T.token_timing(tk, seq)
            for split in (1, 9):
                tracker = IncrementalTiming(tk)
                start = tracker.start([seq[:split]])[0]
                steps = [tracker.push([i]) for i in seq[split:]]
                bars = np.concatenate([start[0], [s[0][0] for s in steps]])
                pos = np.concatenate([start[1], [s[1][0] for s in steps]])
                np.testing.assert_array_equal(bars, want[0], err_msg=name)
                np.testing.assert_array_equal(pos, want[1], err_msg=name)


def test_repair_keeps_valid_encodings_and_random_ids_decode(tokenizers):
    toks, scores = tokenizers
    rng = np.random.default_rng(1)
    for name, tk in toks.items():
        table = T.token_tables(tk)
        inv = {i: s for s, i in tk.vocab.items()}
        for s in scores:
            ids = T.encode(tk, s)
            assert repair_tokens(tk, ids) == [inv[b] for b in table.expand(ids)[0]], name
        with_notes = 0
        for length in (0, 1, 5, 50, 1000, 1000, 1000, 1000):
            ids = rng.integers(0, len(tk), length)
            score, dropped = decode_safe(tk, ids)
            assert dropped >= 0
            data = score.dumps_midi()
            back = load(data, allow_empty=True)
            assert back.note_num() == score.note_num()
            if score.note_num():
                load(data)  # allow_empty=False
                with_notes += 1
        if name != "MIDILike":  # random MIDILike ids almost never pair a NoteOn with its NoteOff
            assert with_notes >= 1, name
    tk = toks["REMI"]
    v = tk.vocab
    broken = [v["Bar_None"], v["TimeSig_4/4"], v["Position_0"], v["Program_0"], v["Pitch_60"],  # no velocity...
              v["Position_8"], v["Program_0"], v["Pitch_64"], v["Velocity_63"], v["Velocity_63"],
              v["Duration_1.0.8"], v["Duration_1.0.8"], v["Program_0"], v["Pitch_67"]]  # ...unfinished
    assert repair_tokens(tk, broken) == ["Bar_None", "TimeSig_4/4", "Position_8", "Program_0", "Pitch_64",
                                         "Velocity_63", "Duration_1.0.8"]


# --------------------------------------------------------------------------- stops (scripted model)


class Scripted(GPT):
    """A GPT whose prediction at song position p is ``script[p]``: exact tests of the stops."""

    def __init__(self, config, script):
        super().__init__(config)
        self.script = torch.as_tensor(np.asarray(script, np.int64))

    def forward(self, ids, targets=None, *, cache=None, last_only=False, **kw):
        start = cache.next_position if cache is not None else 0
        logits, loss = super().forward(ids, targets, cache=cache, last_only=last_only, **kw)
        T_ = ids.shape[1]
        pos = torch.arange(start + T_ - logits.shape[1], start + T_)
        want = self.script[pos.clamp(max=len(self.script) - 1)]
        forced = torch.full_like(logits, -1e4)
        forced[:, torch.arange(len(pos)), want] = 1e4
        return forced, loss


def _seconds(tok, ids) -> float:
    """Onset of the last note of the whole decoded sequence (what ``SecondsClock`` must agree
    with: lengths count new onsets, a held note is not more music)."""
    score = decode_safe(tok, ids, check=False)[0]
    if not score.note_num():
        return 0.0
    return max(float(n.time) for t in score.to("second").tracks for n in t.notes)


@pytest.mark.parametrize("path", [POP, FIXTURES / "multitrack" / "POP909_010.mid", ELISE,
                                  FIXTURES / "multitrack" / "In Too Deep.mid"])
def test_seconds_clock_agrees_with_decoding_everything(tok, path):
    # tempo and metre changes: the clock decodes only the prompt's last bars and the new tokens,
    # with the metre and tempo in force put back, and must measure what a full decode measures
    ids = T.encode(tok, load(path))
    for cut in (len(ids) // 3, 2 * len(ids) // 3):
        prompt = ids[:cut]
        clock = SecondsClock(tok, prompt)
        assert clock.anchor > 0  # a bar well before the prompt's end, not the start
        base = _seconds(tok, prompt)
        assert clock.prompt_end < base
        for m in range(cut + 1, min(cut + 400, len(ids)), 37):
            full = _seconds(tok, ids[:m]) - base
            assert clock.end(ids[clock.anchor : m]) - clock.prompt_end == pytest.approx(full, abs=1e-3)  # float32 seconds


def test_stops_in_bars_seconds_tokens_and_eos(tok):
    score = make_score([(i * 480, 480, 60 + i % 12, 80) for i in range(32)])  # 8 bars, 1 beat = 0.5 s
    song = T.encode(tok, score, bos_eos=True)
    model = Scripted(GPTConfig.preset("tiny", vocab_size=len(tok), context=256, bar_embeddings=True), song).eval()
    bars = T.token_timing(tok, song)[0]

    def run(**kw):
        return sample(model, tok, temperature=0, return_details=True, **kw)[0]

    out = run(bars=2)
    assert out.stop == "bars"
    np.testing.assert_array_equal(out.ids, song[: np.flatnonzero(bars >= 2)[0]])
    assert T.token_timing(tok, out.ids)[0].max() == 1
    prompt = build_prompt(tok, score, prompt_bars=2)
    np.testing.assert_array_equal(prompt, song[: len(prompt)])
    out = run(prompts=prompt, bars=3)  # three bars more than the prompt's two
    np.testing.assert_array_equal(out.ids, song[: np.flatnonzero(bars >= 5)[0]])

    out = run(seconds=3.0)  # cut at the shortest prefix whose last onset is at 3 s (about 7 notes of 0.5 s)
    assert out.stop == "seconds"
    assert _seconds(tok, out.ids) >= 3.0 > _seconds(tok, out.ids[:-1])
    assert 6 <= decode_safe(tok, out.ids)[0].note_num() <= 8
    np.testing.assert_array_equal(out.ids, song[: len(out.ids)])
    out = run(prompts=prompt, seconds=1.0)  # prompt: 8 notes, about 4 s; about two more notes
    target = _seconds(tok, prompt) + 1.0
    assert out.stop == "seconds" and _seconds(tok, out.ids) >= target > _seconds(tok, out.ids[:-1])
    assert 9 <= decode_safe(tok, out.ids)[0].note_num() <= 12

    out = run(max_new_tokens=7)
    assert out.stop == "tokens" and len(out.ids) == 8
    out = run(max_new_tokens=len(song) + 5, allow_early_end=True)
    assert out.stop == "eos"
    np.testing.assert_array_equal(out.ids, song)  # EOS kept at the end
    out = run(max_new_tokens=len(song) + 5)  # a length asked for is kept: EOS masked until then
    assert out.stop == "tokens" and len(out.ids) == 1 + len(song) + 5 and T.special_id(tok, "EOS") not in out.ids
    out = run()  # no length asked: the model may end the piece
    assert out.stop == "eos"


# --------------------------------------------------------------------------- a trained bundle


def _pieces(tok):
    out = []
    for path in (ELISE, POP):
        ids = T.encode(tok, load(path), bos_eos=True)
        bars, pos = T.token_timing(tok, ids)
        out.append((ids, bars, pos))
    return out


@pytest.fixture(scope="module")
def bundle(tok, tmp_path_factory):
    """A tiny conditioned model trained a few dozen steps on two pieces (label 0 and 1)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=len(tok), n_labels=2, bar_embeddings=True)).train()
    C = model.config.context
    pieces = _pieces(tok)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        xs, ys, bs, ps = [], [], [], []
        for k in range(8):
            label = k % 2
            ids, bars, pos = pieces[label]
            o = int(rng.integers(0, len(ids) - C)) if k >= 2 else 0  # song starts too
            xs.append([model.label_token(label), *ids[o : o + C - 1]])
            ys.append(ids[o : o + C])
            bs.append([bars[o], *bars[o : o + C - 1]])
            ps.append([0, *pos[o : o + C - 1]])
        _, loss = model(torch.tensor(np.array(xs)), torch.tensor(np.array(ys)), bars=torch.tensor(np.array(bs)),
                        positions=torch.tensor(np.array(ps)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("gen") / "bundle"
    save_bundle(model.eval(), path, tokenizer=tok, card={"labels": ["Bach", "Folk"]})
    return path


def test_every_sample_is_readable_midi(tok, bundle, tmp_path):
    """Trained or random, at temperature 2: every sample saves as MIDI partita reads back; a
    sample without notes says so (ok False) instead of being an empty file."""
    untrained = tiny(tok, sharpen=1.0)
    runs = [generate_samples(bundle, n=3, temperature=2.0, max_new_tokens=150, seed=1),
            generate_samples(untrained, tokenizer=tok, n=4, temperature=2.0, max_new_tokens=150, seed=1)]
    for samples in runs:
        for s in samples:
            data = s.score.dumps_midi()
            assert load(data, allow_empty=True).note_num() == s.notes
            if s.ok:
                assert load(data).note_num() == s.notes > 0
            assert s.stop in ("eos", "tokens") and s.new_tokens <= 150
    assert sum(s.ok for s in runs[0]) >= 1


def test_prompts_midi_chords_composer(tok, bundle):
    full = T.encode(tok, load(POP), bos_eos=True)
    samples = generate_samples(bundle, POP, prompt_bars=2, n=2, max_new_tokens=20, seed=0)
    prompt = samples[0].ids[: samples[0].prompt_length]
    np.testing.assert_array_equal(prompt, full[: len(prompt)])
    assert T.token_timing(tok, prompt)[0].max() == 1 and T.token_timing(tok, full)[0][len(prompt)] == 2
    assert all(s.ok and s.notes >= decode_safe(tok, prompt)[0].note_num() for s in samples)

    cut = build_prompt(tok, str(POP), prompt_seconds=3.0)
    assert note_array(decode_safe(tok, cut)[0], "second")["onset"].max() < 3.2
    assert _seconds(tok, cut) < _seconds(tok, full[:-1])
    assert len(build_prompt(tok, POP, prompt_tokens=10)) == 11

    scores = partita.generate(bundle, chords="C G Am F", n=2, max_new_tokens=12, seed=0)
    chord = T.encode(tok, parse_prompt("chords", "C G Am F"), bos_eos=True)[:-1]
    assert len(scores) == 2 and all(s.note_num() >= 16 for s in scores)
    first = sorted(n.pitch for n in scores[0].tracks[0].notes if n.time == 0)
    assert first == sorted(n.pitch for n in parse_prompt("chords", "C").tracks[0].notes)
    ids = generate_samples(bundle, chords="C G Am F", max_new_tokens=5)[0].ids
    np.testing.assert_array_equal(ids[: len(chord)], chord)

    assert resolve_label("bach", ["Bach", "Folk"], 2) == 0 and resolve_label(" FOLK ", ["Bach", "Folk"], 2) == 1
    with pytest.raises(PartitaError, match="unknown composer 'Mozart': this model knows Bach, Folk"):
        resolve_label("Mozart", ["Bach", "Folk"], 2)
    with pytest.raises(PartitaError, match="not conditioned"):
        resolve_label("Bach", [], 0)
    bach = generate_samples(bundle, composer="BACH", n=2, max_new_tokens=40, seed=0)
    folk = generate_samples(bundle, composer="folk", n=2, max_new_tokens=40, seed=0)
    assert bach[0].meta["label"] == "Bach" and folk[0].meta["label"] == "Folk"
    assert any(not np.array_equal(a.ids, b.ids) for a, b in zip(bach, folk))
    with pytest.raises(PartitaError, match="one prompt"):
        build_prompt(tok, POP, chords="C")
    with pytest.raises(PartitaError, match="no prompt"):
        build_prompt(tok, prompt_bars=2)


def test_import_partita_stays_light_and_generate_is_callable():
    code = ("import sys, partita; assert callable(partita.generate); print('torch' in sys.modules); "
            "import partita.generation.sampling, partita.generation.infill; "
            "assert callable(partita.generate) and callable(partita.infill)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the command


def cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "partita", "generate", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def test_cli_writes_samples_tokens_and_json(bundle, tmp_path):
    out = tmp_path / "out"
    proc = cli("--model", bundle, "-n", "2", "--out", out, "--prompt", POP, "--prompt-bars", "2",
               "--composer", "folk", "--max-tokens", "30", "--top-p", "0.95", "--tokens", "--seed", "3",
               "--json", tmp_path / "g.json")
    assert proc.returncode == 0, proc.stderr
    assert "notes" in proc.stdout and "sample-000.mid" in proc.stdout
    report = json.loads((tmp_path / "g.json").read_text())
    assert len(report["samples"]) == 2 and report["settings"]["composer"] == "folk"
    assert report["model"] == str(bundle) and report["model_reason"] == "given with --model"
    assert f"model: {bundle} (given with --model)" in proc.stdout
    for i, row in enumerate(report["samples"]):
        assert row["file"].endswith(f"sample-{i:03d}.mid") and row["notes"] > 0 and row["tokens"] <= 30
        assert load(row["file"]).note_num() == row["notes"]
        ids = np.load(out / f"sample-{i:03d}.npy")
        assert len(ids) == row["tokens"] + row["prompt_tokens"]
    proc = cli("--model", bundle, "-n", "1", "--out", out, "--chords", "C G", "--max-tokens", "5", "--tokens-out",
               "--tokens-format", "txt")
    assert proc.returncode == 0, proc.stderr
    assert (out / "sample-000.txt").read_text().split()[0] == str(T.special_id(T.load_tokenizer(bundle), "BOS"))


@pytest.mark.parametrize("prompt, name, why", [(None, "gpt-small", "no prompt"), (FIXTURES / "multitrack" / "Funkytown.mid", "gpt-small", "not a piano file"),
                                               (ELISE, "gpt-piano", "piano prompt")])
def test_cli_names_the_default_model_and_why(tmp_path, prompt, name, why):
    """Without --model the table's footer and the JSON say which shipped bundle sampled and why."""
    args = ["-n", "1", "--out", tmp_path / "o", "--max-tokens", "3", "--json", tmp_path / "g.json"]
    if prompt is not None:
        args += ["--prompt", prompt, "--prompt-bars", "1"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "g.json").read_text())
    assert os.path.basename(report["model"]) == name and why in report["model_reason"]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("model: "))
    assert name in line and why in line


def test_cli_says_when_a_continuation_adds_no_note(bundle, tmp_path):
    """Two new tokens cannot make a note (pitch, velocity, duration): said on stderr, in the table
    and the JSON, and no file is written (the prompt is not handed back as a result)."""
    out = tmp_path / "out"
    proc = cli("--model", bundle, "-n", "1", "--out", out, "--prompt", POP, "--prompt-bars", "2", "--max-tokens", "2",
               "--allow-early-end", "--json", tmp_path / "g.json")
    assert proc.returncode == 0, proc.stderr
    assert "no new notes" in proc.stderr and "no new notes, not written" in proc.stdout
    (row,) = json.loads((tmp_path / "g.json").read_text())["samples"]
    assert row["new_notes"] == 0 and row["file"] is None and "no new notes" in row["error"] and row["notes"] > 0
    assert not list(out.glob("*.mid"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--prompt", CORRUPT), "corrupt MIDI"),
        (("--composer", "Mozart"), "unknown composer 'Mozart': this model knows Bach, Folk"),
        (("--chords", "C Hmaj7"), "unparseable chord 'Hmaj7'"),
    ],
)
def test_cli_errors_are_one_line(bundle, tmp_path, args, expected):
    proc = cli("--model", bundle, "--out", tmp_path / "o", "--max-tokens", "5", *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--tokens-format", "csv"), "--tokens-format"),
        (("--bars", "0"), "bars must be"),
        (("--top-p", "1.5"), "top-p"),
        (("--prompt-bars", "2"), "no prompt"),
        (("--chords", "C", "--scale", "D dorian"), "one prompt at most"),
    ],
)
def test_cli_usage_mistakes_in_process(bundle, tmp_path, capsys, args, expected):
    from partita.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(bundle), "--out", str(tmp_path / "o"), "--max-tokens", "5", *args])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_cli_missing_model_is_one_line(tmp_path):
    proc = cli("--model", tmp_path / "nope", "--out", tmp_path / "o")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "no such bundle folder" in lines[0], proc.stderr


def test_allow_eos_false_runs_every_sample_to_its_length(tok):
    model = tiny(tok, sharpen=1.0)  # near-uniform at a high temperature: EOS comes up by chance
    eos = T.special_id(tok, "EOS")
    stopped = sample(model, tok, n=4, max_new_tokens=300, seed=0, temperature=100.0, allow_early_end=True)
    assert any(len(s) < 301 and s[-1] == eos for s in stopped)
    kept = sample(model, tok, n=4, max_new_tokens=300, seed=0, temperature=100.0)  # a length asked: kept
    assert all(len(s) == 301 and eos not in s for s in kept)
    forced = sample(model, tok, n=4, max_new_tokens=300, seed=0, temperature=100.0, allow_eos=False)
    assert all(len(s) == 301 and eos not in s for s in forced)  # BOS + 300 new tokens


# --------------------------------------------------------------------------- long prompts


def training_segments_logits(model, tok, prompt, label=None):
    """What training computes: contiguous segments ``[label, C-1 song tokens]`` through the model
    without a cache, XL/kNN memories carried from one to the next; logits after the last token."""
    C = model.config.context
    bars, pos = T.token_timing(tok, prompt)
    xl = model.new_xl_memory(1) if model.config.xl_memory else None
    knn = model.new_knn_memory(1) if model.config.knn_memory else None
    lab = model.label_token(label)
    for a in range(0, len(prompt), C - 1):
        part = slice(a, min(a + C - 1, len(prompt)))
        ids = torch.tensor([[lab, *prompt[part]]])
        b = torch.tensor([[int(bars[a]), *bars[part]]])
        p = torch.tensor([[0, *pos[part]]])
        logits, _ = model(ids, bars=b, positions=p, xl=xl, knn=knn)
    return logits[0, -1]


@pytest.mark.parametrize("kind", ["xl", "xl+knn", "knn", "plain", "window"])
def test_long_prompts_are_read_by_windows_as_token_by_token(tok, kind):
    """A prompt is read one forward pass per window; the logits after it are those of feeding it
    one token at a time (as if it had been generated), and for memory models those of training's
    contiguous segments with the memories carried."""
    from partita.generation.sampling import prompt_logits

    memory = {"xl": {"xl_memory": True}, "xl+knn": {"xl_memory": True, "knn_memory": True, "knn_topk": 4},
              "knn": {"knn_memory": True, "knn_topk": 4}, "plain": {}, "window": {}}[kind]
    model = tiny(tok, sharpen=3.0, context=8, **memory)
    keep_label = kind != "window"
    long_prompt = random_prompt(tok, 61, seed=2)  # 8 windows of the context
    by_window = prompt_logits(model, tok, long_prompt, label=1, config=SamplingConfig(keep_label=keep_label))
    if kind == "plain":  # a plain model sees [label, last C-1 tokens], as in training: one window
        C = model.config.context
        bars, pos = T.token_timing(tok, long_prompt)
        last = slice(len(long_prompt) - (C - 1), None)
        with torch.inference_mode():
            want, _ = model(torch.tensor([[model.label_token(1), *long_prompt[last]]]),
                            bars=torch.tensor([[int(bars[last][0]), *bars[last]]]), positions=torch.tensor([[0, *pos[last]]]))
        torch.testing.assert_close(by_window, want[0, -1], atol=1e-4, rtol=1e-4)
    else:
        one_by_one = prompt_logits(model, tok, long_prompt, label=1, chunk=1, config=SamplingConfig(keep_label=keep_label))
        torch.testing.assert_close(by_window, one_by_one, atol=1e-4, rtol=1e-4)
    if memory:
        short = long_prompt[:22]  # within what the memories hold: all of it is read
        with torch.inference_mode():
            want = training_segments_logits(model, tok, short, label=1)
        torch.testing.assert_close(prompt_logits(model, tok, short, label=1), want, atol=1e-4, rtol=1e-4)
    # sampling continues the whole prompt from its end, greedy = argmax of those logits
    out = sample(model, tok, prompts=long_prompt, label=1, temperature=0, max_new_tokens=5, keep_label=keep_label)[0]
    np.testing.assert_array_equal(out[:61], long_prompt)
    assert len(out) == 66 and out[61] == int(by_window.argmax())


# --------------------------------------------------------------------------- lengths kept


class EosBiased(Scripted):
    """Follows its script, but wants to end the piece (EOS above everything) from ``eos_from`` on."""

    def __init__(self, config, script, eos_id, eos_from):
        super().__init__(config, script)
        self.eos_id, self.eos_from = eos_id, eos_from

    def forward(self, ids, targets=None, *, cache=None, last_only=False, **kw):
        start = cache.next_position if cache is not None else 0
        logits, loss = super().forward(ids, targets, cache=cache, last_only=last_only, **kw)
        pos = torch.arange(start + ids.shape[1] - logits.shape[1], start + ids.shape[1])
        logits[:, pos >= self.eos_from, self.eos_id] = 2e4
        return logits, loss


def test_asked_lengths_are_kept_when_the_model_wants_to_stop(tok):
    score = make_score([(i * 480, 480, 60 + i % 12, 80) for i in range(48)])  # 12 bars of 4 beats, 0.5 s each
    song = T.encode(tok, score, bos_eos=True)[:-1]
    eos = T.special_id(tok, "EOS")
    model = EosBiased(GPTConfig.preset("tiny", vocab_size=len(tok), context=512, bar_embeddings=True), song, eos, 10).eval()
    prompt = build_prompt(tok, score, prompt_bars=1)

    def run(**kw):
        [s] = generate_samples(model, tokenizer=tok, prompt=prompt, temperature=0, **kw)
        return s

    early = run(bars=4, allow_early_end=True)
    assert early.stop == "eos" and early.bars <= 1  # the model ends the piece at once
    kept = run(bars=4)
    assert kept.stop == "bars" and kept.bars == 1 + 4 and eos not in kept.ids
    prompt_sec = _seconds(tok, prompt)
    kept = run(seconds=3.0)
    assert kept.stop == "seconds" and _seconds(tok, kept.ids) >= prompt_sec + 3.0
    assert kept.score.note_num() >= 4 + 6  # the prompt's bar, then 3 s of 0.5 s notes
    tokens = run(max_new_tokens=40)
    assert tokens.stop == "tokens" and tokens.new_tokens == 40
    assert run(max_new_tokens=40, allow_early_end=True).stop == "eos"


# --------------------------------------------------------------------------- instruments kept


class WrongInstrument(Scripted):
    """Follows its script, but always prefers ``Program_<wrong>`` (another instrument)."""

    def __init__(self, config, script, wrong_id):
        super().__init__(config, script)
        self.wrong_id = wrong_id

    def forward(self, *args, **kw):
        logits, loss = super().forward(*args, **kw)
        logits[..., self.wrong_id] = 2e4
        return logits, loss


def _new_programs(tok, s):
    """Programs of the notes a sample added to its prompt (as the model wrote them)."""
    from partita.edit import new_notes

    return {t.program for t in new_notes(tok, s.ids, s.prompt_length).tracks if t.note_num()}


def test_continuations_keep_the_prompts_instruments(tok, bundle):
    score = make_score([(i * 480, 480, 60 + i % 12, 80) for i in range(48)])
    song = T.encode(tok, score, bos_eos=True)[:-1]  # piano (program 0)
    wrong = tok.vocab["Program_25"]
    model = WrongInstrument(GPTConfig.preset("tiny", vocab_size=len(tok), context=512), song, wrong).eval()
    prompt = build_prompt(tok, score, prompt_bars=2)
    [s] = generate_samples(model, tokenizer=tok, prompt=prompt, temperature=0, max_new_tokens=60)
    assert _new_programs(tok, s) == {0} and s.notes > decode_safe(tok, prompt)[0].note_num()
    [free] = generate_samples(model, tokenizer=tok, prompt=prompt, temperature=0, max_new_tokens=60, programs="all")
    assert wrong in free.ids[free.prompt_length:]  # unmasked, the model writes its guitar tokens
    [chords] = generate_samples(model, tokenizer=tok, chords="C G", temperature=0, max_new_tokens=60)
    assert wrong not in chords.ids  # a structure prompt is piano
    # a real piano prompt and a trained model, sampled hot: only piano notes follow
    samples = generate_samples(bundle, ELISE, n=3, temperature=1.5, max_new_tokens=120, seed=0)
    assert all(_new_programs(tok, s) <= {0} for s in samples) and any(_new_programs(tok, s) for s in samples)
    with pytest.raises(PartitaError, match="program"):
        generate_samples(bundle, ELISE, programs="0,300", max_new_tokens=2)
    with pytest.raises(PartitaError, match="program"):
        generate_samples(bundle, ELISE, programs="violin", max_new_tokens=2)


# --------------------------------------------------------------------------- threads


def test_same_seed_same_tokens_whatever_the_thread_count(tok):
    """The same seed samples the same tokens with 1 and 2 threads. The logits agree within a
    float tolerance: the decoding layout splits weights by matrix size, never by thread count,
    but a CPU's kernels may still reduce in another order per thread count (bit-identical on
    Intel with AMX, not on AMD EPYC with AVX-512 bf16)."""
    model = tiny(tok, sharpen=1.0, d_model=128, n_head=2, context=32, xl_memory=True)
    prompt = random_prompt(tok, 40, seed=4)
    outs, logits = [], []
    n = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            outs.append(sample(model, tok, prompts=prompt, n=2, seed=11, temperature=1.0, max_new_tokens=60))
            logits.append(prompt_logits_of(model, tok, prompt))
    finally:
        torch.set_num_threads(n)
    for other in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], other))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
    # --threads: a fixed count, or chosen while decoding (the tokens stay the same)
    for threads in (1, 2, None):
        again = sample(model, tok, prompts=prompt, n=2, seed=11, temperature=1.0, max_new_tokens=60, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], again))
    assert torch.get_num_threads() == n  # left as it was


def test_prompt_windows_in_bf16_read_what_fp32_reads_and_keep_thread_independence(tok):
    """``prompt_bf16``: windows of at least ``BF16_PROMPT_ROWS`` tokens are read under bf16
    autocast (as the models were trained): the logits after the prompt stay close to fp32
    reading, the memories it leaves serve the fp32 decoding steps, and the tokens still do not
    depend on the thread count."""
    from partita.generation.sampling import BF16_PROMPT_ROWS, prompt_logits

    model = tiny(tok, sharpen=1.0, d_model=128, n_head=2, context=2 * BF16_PROMPT_ROWS, xl_memory=True,
                 knn_memory=True, knn_topk=4)
    prompt = random_prompt(tok, 5 * BF16_PROMPT_ROWS, seed=5)
    logits = {}
    for bf16 in (False, True):
        logits[bf16] = prompt_logits(model, tok, prompt, config=SamplingConfig(prompt_bf16=bf16))
    assert not torch.equal(logits[True], logits[False])  # bf16 products did run
    torch.testing.assert_close(logits[True], logits[False], atol=0.1, rtol=0.05)
    assert int(logits[True].argmax()) == int(logits[False].argmax())
    n = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(sample(model, tok, prompts=prompt, n=2, seed=3, max_new_tokens=30, prompt_bf16=True))
    finally:
        torch.set_num_threads(n)
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_length_checks_come_sooner_as_the_length_nears():
    """With ``seconds=``, the next check is half way to where the rate so far reaches the length,
    never more than 4 x SECONDS_CHECK_EVERY tokens away (a rate read off the first notes can be
    far off: 0.01 s in 16 tokens said 24,000 more), never sooner than SECONDS_CHECK_EVERY."""
    from partita.generation.sampling import SECONDS_CHECK_EVERY as EVERY
    from partita.generation.sampling import seconds_check_gap

    assert seconds_check_gap(16, [0.01], 30.0) == 4 * EVERY  # a far-off rate is not trusted
    assert seconds_check_gap(100, [10.0], 30.0) == 4 * EVERY  # 200 tokens to go: capped
    assert seconds_check_gap(200, [25.0], 30.0) == 20  # 40 tokens to go: half of it
    assert seconds_check_gap(290, [29.5], 30.0) == EVERY  # nearly there
    assert seconds_check_gap(100, [0.0], 30.0) == EVERY  # no new music yet
    assert seconds_check_gap(100, [25.0, 0.0], 30.0) == EVERY  # a row without new music: soon
    assert seconds_check_gap(200, [25.0, 20.0], 30.0) == 20  # the row nearest its length decides


def prompt_logits_of(model, tok, prompt):
    from partita.generation.sampling import prompt_logits

    return prompt_logits(model, tok, prompt)
