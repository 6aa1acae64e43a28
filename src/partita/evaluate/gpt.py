"""``partita eval gpt``: the transformer against the n-gram baseline on held-out pieces.

Both models predict the same tokens of the same split (every token of a piece after its BOS);
bits per note divide by the notes of the decoded pieces. The transformer plays each piece as
contiguous segments of its context length, as in training; "with memory" carries its XL/kNN
memories from segment to segment, "without" starts every segment from nothing, so the two differ
only in what the memories add. Tokens at least one context length into a piece ("far") are where
memory can matter, so they are reported separately.

For a model trained for infilling (``fim``), ``span_bits`` scores spans of ``span_bars`` bars cut
from windows of the split's pieces, twice: with the future (the training arrangement ``[label,
SUFFIX, suffix, MIDDLE, prefix, middle]``) and without it (``[label, prefix, middle]``), the same
middle tokens from the same prefix, no memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.data.streams import IGNORE, SongData, SongStream, fim_arrange, fim_cut
from partita.represent.tokens import token_streams

LN2 = float(np.log(2.0))


@torch.no_grad()
def transformer_nll(model, streams, pieces: list[int], label_tokens: list[int], *, memory: bool, batch_size: int = 8,
                    progress=None):
    """Per-token NLL (nats) and each token's distance into its piece, over ``pieces``;
    ``progress(tokens_done)`` after every batch."""
    model.eval()
    c = model.config
    stream = SongStream(streams, pieces, label_tokens, batch_size=batch_size, seq_len=c.context,
                        pad_id=model.label_token(None), loop=False, shuffle=False)
    xl = model.new_xl_memory(batch_size) if memory and c.xl_memory else None
    knn = model.new_knn_memory(batch_size) if memory and c.knn_memory else None
    offsets = np.zeros(batch_size, np.int64)  # tokens of the current song each row has played
    nll, depth = [], []
    for batch in stream:
        reset = batch["reset"].numpy()
        offsets[reset] = 0
        if xl is not None:
            xl.reset(batch["reset"])
        if knn is not None:
            knn.reset(batch["reset"])
        kw = {"bars": batch["bars"], "positions": batch["positions"]} if c.bar_embeddings else {}
        logits, _ = model(batch["ids"], xl=xl, knn=knn, **kw)
        targets = batch["targets"]
        mask = targets != IGNORE
        lp = torch.log_softmax(logits.float(), dim=-1)
        token_nll = -lp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        pos = offsets[:, None] + np.arange(targets.shape[1])[None, :]
        m = mask.numpy()
        nll.append(token_nll.numpy()[m])
        depth.append(pos[m])
        offsets += c.context - 1
        if progress is not None:
            progress(int(m.sum()))
    return np.concatenate(nll), np.concatenate(depth)


@torch.no_grad()
def span_bits(model, streams, pieces: list[int], label_tokens: list[int], *, span_bars: int = 4,
              spans_per_piece: int = 4, seed: int = 0, batch_size: int = 8) -> dict:
    """Bits per token of infilled spans with the future context (FIM) and without it (module doc)."""
    model.eval()
    c = model.config
    W = c.context - 3  # song tokens of a window: label + 2 markers + W = context
    fim_tokens = (model.fill_token("suffix"), model.fill_token("middle"))
    rows_fim, rows_plain = [], []
    for p, label in zip(pieces, label_tokens):
        song, bars, pos = (np.asarray(x, np.int64) for x in (streams.piece(p), streams.bars(p), streams.positions(p)))
        if len(song) < W:
            continue
        rng = np.random.default_rng([seed, int(p)])
        for _ in range(spans_per_piece):
            o = int(rng.integers(0, len(song) - W + 1))
            cut = fim_cut(bars[o : o + W], rng, exact=span_bars)
            if cut is None:
                continue
            a, cc = cut
            s, b, q = song[o : o + W], bars[o : o + W], pos[o : o + W]
            ids, tgt, fb, fp = fim_arrange(s, b, q, cut, fim_tokens)
            tgt = tgt.copy()
            tgt[-1] = IGNORE  # the middle's tokens only (not the suffix bar that ends it)
            tgt[: len(tgt) - 1 - (cc - a)] = IGNORE
            rows_fim.append((np.r_[label, ids], np.r_[IGNORE, tgt], np.r_[fb[0], fb], np.r_[0, fp]))
            plain_t = np.full(cc, IGNORE, np.int64)
            plain_t[a - 1 : cc - 1] = s[a:cc]
            rows_plain.append((np.r_[label, s[: cc - 1]], np.r_[IGNORE, plain_t[: cc - 1]], np.r_[b[0], b[: cc - 1]],
                               np.r_[0, q[: cc - 1]]))

    def score(rows) -> tuple[float, int]:
        total, count = 0.0, 0
        for k in range(0, len(rows), batch_size):
            chunk = rows[k : k + batch_size]
            T = max(len(r[0]) for r in chunk)
            arr = [np.zeros((len(chunk), T), np.int64) for _ in range(4)]
            arr[1][:] = IGNORE
            for i, r in enumerate(chunk):
                for x, v in zip(arr, r):
                    x[i, : len(v)] = v
            ids, tgt, b, q = (torch.from_numpy(x) for x in arr)
            kw = {"bars": b, "positions": q} if c.bar_embeddings else {}
            logits, _ = model(ids, **kw)
            lp = torch.log_softmax(logits.float(), dim=-1)
            mask = tgt != IGNORE
            nll = -lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask]
            total += float(nll.sum())
            count += int(mask.sum())
        return total / max(count, 1) / LN2, count

    with_future, n = score(rows_fim)
    without, n2 = score(rows_plain)
    assert n == n2
    return {"span_bars": span_bars, "spans": len(rows_fim), "tokens": n,
            "with_future_bits_per_token": with_future, "without_future_bits_per_token": without}


def evaluate_gpt(model_path: str | Path, corpus_dir: str | Path, *, split: str = "test", orders=(1, 2, 3, 4, 5),
                 batch_size: int = 8, progress=None) -> dict:
    """Bits per token and per note on ``split`` for the transformer (with and without memory)
    and for the n-gram baseline (order chosen on the validation split), trained on train.
    ``progress(done, total)`` counts the tokens scored by every transformer pass, then one unit
    per n-gram order fitted."""
    from partita.bundle import load
    from partita.evaluate.baselines import NGramLM, count_notes

    bundle = load(model_path, "gpt")
    model, tokenizer = bundle.model, bundle.tokenizer
    corpus = Corpus(corpus_dir)
    streams = token_streams(corpus)
    if tokenizer is not None and len(tokenizer) != streams.vocab_size:
        raise PartitaError(
            f"the corpus's token streams ({streams.vocab_size} tokens) were not made with this model's tokenizer "
            f"({len(tokenizer)}); tokenize the corpus with {Path(model_path) / 'tokenizer.json'}"
        )
    data = SongData(corpus, streams)
    model_labels = bundle.card.get("labels", [])
    pieces = data.split.get(split, [])
    if not pieces:
        raise PartitaError(f"{corpus_dir}: no {split} pieces")

    def label_token(p):
        k = data.label_of[p]
        name = data.labels[k] if k is not None else None
        return model.label_token(model_labels.index(name) if name in model_labels else None)

    seqs = [np.asarray(streams.piece(p)) for p in pieces]
    notes = int(count_notes(tokenizer or streams.tokenizer(), seqs).sum())
    labels = [label_token(p) for p in pieces]
    results: dict = {"split": split, "pieces": len(pieces), "tokens": int(sum(len(s) - 1 for s in seqs)), "notes": notes}
    runs = {"transformer": False}
    if model.config.xl_memory or model.config.knn_memory:
        runs = {"transformer, no memory": False, "transformer, with memory": True}
    total = len(runs) * results["tokens"] + len(orders)
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(min(done[0], total), total)

    for name, memory in runs.items():
        nll, depth = transformer_nll(model, streams, pieces, labels, memory=memory, batch_size=batch_size, progress=step)
        far = depth >= model.config.context
        results[name] = {
            "bits_per_token": float(nll.mean() / LN2),
            "bits_per_note": float(nll.sum() / LN2 / max(notes, 1)),
            "far_bits_per_token": float(nll[far].mean() / LN2) if far.any() else None,
            "far_tokens": int(far.sum()),
        }
    if getattr(model.config, "fim", False):
        results["spans"] = span_bits(model, streams, pieces, labels, batch_size=batch_size)

    train = [np.asarray(streams.piece(p)) for p in data.split.get("train", [])]
    valid = [np.asarray(streams.piece(p)) for p in data.split.get("valid", [])]
    best = None
    for order in orders:
        lm = NGramLM(order=order, vocab_size=streams.vocab_size).fit(train)
        score = lm.bits_per_token(valid) if valid else 0.0
        step(1)
        if best is None or score < best[0]:
            best = (score, order, lm)
    _, order, lm = best
    results[f"{order}-gram (Kneser-Ney)"] = {
        "bits_per_token": float(lm.bits_per_token(seqs)),
        "bits_per_note": float(lm.bits_per_note(seqs, count_notes(tokenizer or streams.tokenizer(), seqs))),
        "order_chosen_on_valid": order,
    }
    return results
