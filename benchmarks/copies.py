"""Copy rate of the shipped transformers: how many samples repeat more than N bars of a training
piece (``partita generate --check-copies``), next to what real held-out music shares by chance.

For each model: ``--n`` unconditional samples, ``--n`` continuations of held-out (test split)
openings and ``--n`` continuations of training openings (the hardest case: the model has seen how
they go on), each ``--bars`` new bars after a ``--prompt-bars`` opening. The yardstick: the same
bars of the held-out pieces themselves (their bars after the opening), checked against an index of
the training split only.

    python benchmarks/copies.py --piano-corpus /tmp/asap-perf --small-corpus /tmp/bundled [--n 20]

Writes the "Copy check" section of benchmarks/RESULTS.md (``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def spread(values: list[int], limit: int) -> str:
    v = np.asarray(values)
    return (f"{int((v > limit).sum())}/{len(v)} over {limit} bars; longest median {np.median(v):.0f}, "
            f"max {v.max()}")


def run_model(name: str, corpus_dir: str, args) -> dict:
    from partita.errors import PartitaError
    from partita.data.corpus import Corpus
    from partita.generation import generate_samples
    from partita.generation.copies import CopyIndex, bar_hashes, build_copy_index
    from partita.pretrained import bundle_path
    from partita.represent.tokens import encode, load_tokenizer, token_timing

    path = bundle_path(name)
    tok = load_tokenizer(path / "tokenizer.json")
    index = CopyIndex.load(path, tok)
    corpus = Corpus(corpus_dir)
    rng = np.random.default_rng(0)
    test = corpus.indices(split="test")
    train = corpus.indices(split="train")
    out = {"model": name, "index_split": index.meta.get("split"), "index_pieces": len(index)}
    # the yardstick: held-out pieces' own bars after the opening, against the training split only
    train_only = build_copy_index(corpus_dir, path, split="train", out=os.path.join(args.tmp, name))
    real = []
    for i in test:
        ids = encode(tok, corpus.score(i))
        bars = token_timing(tok, ids)[0]
        keep = ids[(bars >= args.prompt_bars) & (bars < args.prompt_bars + args.bars)]
        if len(keep):
            real.append(train_only.longest(bar_hashes(tok, keep)).bars)
    out["real held-out bars vs train"] = real
    common = dict(bars=args.bars, threads=args.threads, temperature=args.temperature)
    t = time.perf_counter()
    samples = generate_samples(str(path), n=args.n, seed=0, **common)
    out["unconditional"] = [index.check(tok, s.ids, s.prompt_length).bars for s in samples]
    for split, pool in (("test prompts", test), ("train prompts", train)):
        chosen = rng.choice(pool, size=min(args.n, len(pool)), replace=False)
        found = []
        for k, i in enumerate(chosen):
            row = corpus.pieces[int(i)]
            try:
                [s] = generate_samples(str(path), corpus.score(int(i)), n=1, seed=k, prompt_bars=args.prompt_bars,
                                       composer=row["label"] if row["label"] in index_labels(path) else None, **common)
            except PartitaError as e:  # an opening without notes
                print(f"  skipped {row['title']}: {e}")
                continue
            m = index.check(tok, s.ids, s.prompt_length)
            found.append(m.bars)
            if m.bars > args.max_copied_bars:
                print(f"  {split}: {row['title']} -> {m.bars} bars of {m.piece} {m.piece_bars}")
        out[split] = found
    out["seconds"] = time.perf_counter() - t
    return out


def index_labels(path) -> list:
    card = json.loads((path / "card.json").read_text())
    return card.get("labels", [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--piano-corpus", default="/tmp/asap-perf")
    ap.add_argument("--small-corpus", default="/tmp/bundled")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--bars", type=int, default=8)
    ap.add_argument("--prompt-bars", type=int, default=4)
    ap.add_argument("--max-copied-bars", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0, help="0: greedy, where a model repeats what it learnt most")
    ap.add_argument("--models", default="gpt-piano,gpt-small")
    ap.add_argument("--tmp", default="/tmp/partita-copies")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    results = []
    keys = ("unconditional", "test prompts", "train prompts", "real held-out bars vs train")
    rows = [f"| model (copy index) | new bars | " + " | ".join(keys) + " |", "| --- | ---: |" + " --- |" * len(keys)]
    for name in args.models.split(","):
        corpus = args.piano_corpus if name == "gpt-piano" else args.small_corpus
        r = run_model(name, corpus, args)
        results.append(r)
        print(f"{name} (index: {r['index_pieces']} {r['index_split']} pieces), {args.bars} new bars, {r['seconds']:.0f} s:")
        for key in keys:
            print(f"  {key}: {spread(r[key], args.max_copied_bars)}")
        rows.append(f"| `{name}` ({r['index_pieces']} {r['index_split']} pieces) | {args.bars} | "
                    + " | ".join(spread(r[key], args.max_copied_bars) for key in keys) + " |")
    from results import write_section  # benchmarks/results.py

    command = ("python benchmarks/copies.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                          if v is not None and k not in ("tmp", "json")))
    body = (f"{args.n} samples of each kind, {args.prompt_bars} bars of prompt, temperature {args.temperature}; "
            f"a sample is flagged when it repeats more than {args.max_copied_bars} bars of one training piece.\n\n"
            + "\n".join(rows))
    write_section("Copy check (benchmarks/copies.py)", command, body,
                  "the held-out real music's own bars against the training split (the last column)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=int)


if __name__ == "__main__":
    main()
