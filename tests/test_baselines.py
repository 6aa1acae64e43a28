"""The n-gram baseline: exact normalisation, the textbook formulas, persistence and real token streams."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from conftest import FIXTURES

from partita.errors import PartitaError
from partita.evaluate.baselines import NGramLM, count_notes
from partita.represent.tokens import encode, make_tokenizer, write_token_streams

SMOOTHINGS = ["kneser-ney", "witten-bell", "add-k"]


def random_sequences(seed: int = 0, n: int = 30, vocab: int = 4, max_len: int = 25) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # a little structure (a biased walk) so that higher orders have something to find
    out = []
    for _ in range(n):
        length = int(rng.integers(1, max_len))
        steps = rng.choice([0, 1, 1, 2], size=length)
        out.append(np.cumsum(steps) % vocab)
    return out


def reference_kn(seqs: list[np.ndarray], order: int, vocab: int):
    """Interpolated modified Kneser-Ney written the slow, obvious way (dicts of n-gram tuples)."""
    raw = [Counter() for _ in range(order + 1)]
    start = [Counter() for _ in range(order + 1)]
    for s in seqs:
        s = [int(x) for x in s]
        for p in range(1, len(s)):
            for L in range(1, min(order, p + 1) + 1):
                g = tuple(s[p - L + 1 : p + 1])
                raw[L][g] += 1
                if p - L + 1 == 0:
                    start[L][g] += 1
    u = [Counter() for _ in range(order + 1)]
    u[order] = raw[order]
    for L in range(1, order):
        left = defaultdict(set)
        for g in raw[L + 1]:
            left[g[1:]].add(g[0])
        for g in raw[L]:
            u[L][g] = len(left[g]) + start[L][g]
    disc = [None]
    for L in range(1, order + 1):
        cc = Counter(u[L].values())
        n1, n2, n3, n4 = (cc[k] for k in (1, 2, 3, 4))
        d = [0.5, 1.0, 1.5]
        if n1 and n2:
            y = n1 / (n1 + 2 * n2)
            d[0] = 1 - 2 * y * n2 / n1
            if n3:
                d[1] = 2 - 3 * y * n3 / n2
                if n4:
                    d[2] = 3 - 4 * y * n4 / n3
        disc.append([min(max(x, 0.05), k) for k, x in zip((1, 2, 3), d)])
    hist = [defaultdict(list) for _ in range(order + 1)]
    for L in range(1, order + 1):
        for g, c in u[L].items():
            hist[L][g[:-1]].append(c)

    def D(L, c):
        return 0.0 if c == 0 else disc[L][min(c, 3) - 1]

    def prob(w, h):
        h = tuple(h)[len(h) - min(len(h), order - 1) :] if order > 1 else ()
        p = 1.0 / vocab
        for L in range(1, len(h) + 2):
            ctx = h[len(h) - (L - 1) :] if L > 1 else ()
            counts = hist[L].get(ctx)
            total = sum(counts) if counts else 0
            if total == 0:
                continue
            gamma = sum(D(L, c) for c in counts)
            c = u[L].get(ctx + (w,), 0)
            p = (c - D(L, c) + gamma * p) / total
        return p

    return prob


# --------------------------------------------------------------------------- exact properties


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_for_every_context(smoothing, order):
    vocab = 5  # token 4 never occurs in training
    lm = NGramLM(order=order, smoothing=smoothing, vocab_size=vocab).fit(random_sequences())
    for length in range(order):
        for ctx in itertools.product(range(vocab), repeat=length):
            p = lm.next_token_probs(ctx)
            assert p.shape == (vocab,)
            assert np.all(p > 0)
            assert abs(p.sum() - 1.0) < 1e-12


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_log_prob_is_the_next_token_distribution(smoothing):
    lm = NGramLM(order=3, smoothing=smoothing, vocab_size=6).fit(random_sequences(1, vocab=5))
    seq = np.array([0, 1, 2, 5, 2, 3, 3, 4, 0, 1])
    lp = lm.log_prob(seq)
    assert lp.shape == (len(seq) - 1,)
    expected = [math.log(lm.next_token_probs(seq[max(0, i - 2) : i])[seq[i]]) for i in range(1, len(seq))]
    np.testing.assert_allclose(lp, expected, rtol=0, atol=1e-12)
    # Scoring many sequences at once gives the same numbers as one at a time.
    seqs = random_sequences(7, vocab=6)
    total = sum(float(lm.log_prob(s).sum()) for s in seqs)
    n = sum(len(s) - 1 for s in seqs)
    assert lm.bits_per_token(seqs) == pytest.approx(-total / n / math.log(2), rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_the_textbook_formula(order):
    seqs = random_sequences(3, n=40, vocab=4) + [np.array([0, 3, 3, 1, 2, 0])]
    lm = NGramLM(order=order, vocab_size=5).fit(seqs)
    ref = reference_kn(seqs, order, 5)
    for length in range(order):
        for ctx in itertools.product(range(5), repeat=length):
            p = lm.next_token_probs(ctx)
            np.testing.assert_allclose(p, [ref(w, ctx) for w in range(5)], rtol=1e-12, atol=0)


def test_order_one_is_smoothed_unigram_frequencies():
    seqs = random_sequences(2, vocab=4)
    V = 6
    # the first token of every sequence is context, never predicted
    counts = np.bincount(np.concatenate([s[1:] for s in seqs]), minlength=V).astype(float)
    N = counts.sum()
    addk = NGramLM(order=1, smoothing="add-k", k=0.5, vocab_size=V).fit(seqs)
    np.testing.assert_allclose(addk.next_token_probs(), (counts + 0.5) / (N + 0.5 * V), rtol=1e-12)
    types = np.count_nonzero(counts)
    wb = NGramLM(order=1, smoothing="witten-bell", vocab_size=V).fit(seqs)
    np.testing.assert_allclose(wb.next_token_probs(), (counts + types / V) / (N + types), rtol=1e-12)
    kn = NGramLM(order=1, vocab_size=V).fit(seqs)
    d1, d2, d3 = kn.discounts_[0]
    disc = np.select([counts == 0, counts == 1, counts == 2], [0, d1, d2], d3)
    expected = (counts - disc) / N + disc.sum() / N / V
    np.testing.assert_allclose(kn.next_token_probs(), expected, rtol=1e-12)
    # every context gives the unigram distribution
    np.testing.assert_allclose(kn.next_token_probs([3, 1]), expected, rtol=1e-12)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_unseen_tokens_get_finite_cost(smoothing):
    V = 10
    lm = NGramLM(order=3, smoothing=smoothing, vocab_size=V).fit(random_sequences(vocab=4))
    lp = lm.log_prob([0, 7, 8, 9, 1, 2])  # 7, 8, 9 never seen, nor any context containing them
    assert np.all(np.isfinite(lp)) and np.all(lp < 0)
    seen = lm.log_prob([0, 1, 2])
    assert lp[0] < seen[0]
    with pytest.raises(PartitaError, match="outside the vocabulary"):
        lm.log_prob([0, 10])
    with pytest.raises(PartitaError, match="outside the vocabulary"):
        lm.next_token_probs([-1])


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_training_sequence_beats_its_shuffle(smoothing):
    rng = np.random.default_rng(0)
    motif = rng.integers(0, 20, size=12)
    seq = np.tile(motif, 20)
    lm = NGramLM(order=4, smoothing=smoothing, vocab_size=20).fit([seq])
    shuffled = rng.permutation(seq)
    assert lm.bits_per_token([seq]) < 0.5 * lm.bits_per_token([shuffled])


def test_deterministic_and_refit_from_scratch():
    seqs = random_sequences(4, vocab=6)
    a = NGramLM(order=3, vocab_size=6).fit(seqs)
    b = NGramLM(order=3, vocab_size=6).fit(list(reversed(seqs)))  # order of sequences does not matter
    test = random_sequences(5, vocab=6)
    assert a.bits_per_token(test) == b.bits_per_token(test)
    assert a.discounts_ == b.discounts_
    c = NGramLM(order=3, vocab_size=6).fit(random_sequences(9, vocab=6)).fit(seqs)
    assert c.bits_per_token(test) == a.bits_per_token(test)
    g1 = a.generate([0], 30, seed=3, stop_id=None)
    assert np.array_equal(g1, a.generate([0], 30, seed=3))
    assert len(g1) == 31 and g1[0] == 0 and g1.max() < 6


def test_input_forms_and_short_sequences():
    seqs = random_sequences(6, vocab=5)
    lm = NGramLM(order=2, vocab_size=5).fit(seqs)
    padded = np.stack([np.resize(s, 8) for s in seqs[:3]])
    assert lm.bits_per_token(padded) == pytest.approx(lm.bits_per_token([padded[0], padded[1], padded[2]]))
    assert lm.bits_per_token(padded[0]) == pytest.approx(lm.bits_per_token([padded[0]]))
    assert lm.log_prob([3]).shape == (0,)
    with pytest.raises(PartitaError, match="shorter than 2"):
        lm.bits_per_token([[1], []])
    # vocab_size inferred from the data when not given
    inferred = NGramLM(order=2).fit([np.array([0, 1, 2])])
    assert inferred.vocab_size == 3
    with pytest.raises(PartitaError, match="not fitted"):
        NGramLM().log_prob([1, 2])
    with pytest.raises(PartitaError, match="smoothing"):
        NGramLM(smoothing="good-turing")
    with pytest.raises(PartitaError, match="order"):
        NGramLM(order=0)
    with pytest.raises(PartitaError, match="outside the vocabulary"):
        NGramLM(order=2, vocab_size=3).fit([np.array([0, 5])])


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_save_and_load(tmp_path, smoothing):
    seqs = random_sequences(8, vocab=7)
    lm = NGramLM(order=3, smoothing=smoothing, vocab_size=7, k=0.25).fit(seqs)
    path = lm.save(tmp_path / "lm.npz")
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickled objects
        meta = json.loads(bytes(z["meta"]).decode())
    assert meta["order"] == 3 and meta["smoothing"] == smoothing and meta["vocab_size"] == 7
    back = NGramLM.load(path)
    test = random_sequences(11, vocab=7)
    assert back.bits_per_token(test) == lm.bits_per_token(test)
    assert np.array_equal(back.next_token_probs([1, 2]), lm.next_token_probs([1, 2]))
    assert back.n_ngrams == lm.n_ngrams and repr(back) == repr(lm)


def test_load_errors_are_one_line(tmp_path):
    for path, setup in [
        (tmp_path / "missing.npz", None),
        (tmp_path / "junk.npz", b"not a zip"),
    ]:
        if setup is not None:
            path.write_bytes(setup)
        with pytest.raises(PartitaError) as info:
            NGramLM.load(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.frombuffer(b'{"format": "something"}', np.uint8))
    with pytest.raises(PartitaError, match="not a partita n-gram model"):
        NGramLM.load(other)


# --------------------------------------------------------------------------- real music


@pytest.fixture(scope="module")
def real_streams():
    tok = make_tokenizer()
    names = ["Maestro_1.mid", "Maestro_3.mid", "Maestro_10.mid"]
    seqs = [encode(tok, FIXTURES / "performance" / n, bos_eos=True) for n in names]
    return tok, seqs


def test_real_token_streams_beat_uniform(real_streams):
    tok, seqs = real_streams
    V = len(tok)
    train, test = seqs[1:], seqs[:1]
    uniform = math.log2(V)
    results = {}
    for smoothing in SMOOTHINGS:
        for order in (1, 3):
            lm = NGramLM(order=order, smoothing=smoothing, vocab_size=V).fit(train)
            bits = lm.bits_per_token(test)
            assert math.isfinite(bits) and 0 < bits < uniform
            results[smoothing, order] = bits
    # token context helps, and Kneser-Ney beats the add-k floor at the same order
    assert results["kneser-ney", 3] < results["kneser-ney", 1] - 1.0
    assert results["kneser-ney", 3] < results["add-k", 3]
    lm = NGramLM(order=3, vocab_size=V).fit(train)
    notes = count_notes(tok, test)
    assert notes[0] > 100
    bpn = lm.bits_per_note(test, notes)
    total_bits = -sum(float(lm.log_prob(s).sum()) for s in test) / math.log(2)
    assert bpn == pytest.approx(total_bits / notes.sum(), rel=1e-12)
    report = lm.evaluate(test, notes)
    assert report["bits_per_token"] == pytest.approx(lm.bits_per_token(test))
    assert report["bits_per_note"] == pytest.approx(bpn)
    assert report["perplexity"] == pytest.approx(2 ** report["bits_per_token"])


def test_fits_token_streams_directly(real_streams, tmp_path):
    tok, seqs = real_streams
    from partita.io import load

    streams = write_token_streams(
        [(n, load(FIXTURES / "performance" / n)) for n in ["Maestro_3.mid", "Maestro_10.mid"]], tok, tmp_path / "s"
    )
    a = NGramLM(order=3, vocab_size=streams.vocab_size).fit(streams)
    b = NGramLM(order=3, vocab_size=len(tok)).fit([streams.piece(i) for i in range(len(streams))])
    assert a.bits_per_token(seqs[:1]) == b.bits_per_token(seqs[:1])
    assert a.bits_per_token(streams) == pytest.approx(b.bits_per_token(seqs[1:]))
