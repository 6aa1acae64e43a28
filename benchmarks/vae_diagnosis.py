"""Why a MusicVAE does (not) reconstruct: KL per latent dimension, whether the decoder reads z,
accuracy by bar, and what the conductor passes on to the bars (hierarchical models).

    python benchmarks/vae_diagnosis.py BUNDLE --data CORPUS [-l LABEL ...] [--split test]

Prints one block of numbers and writes it to the "Latent melodies: diagnosis" section of
benchmarks/RESULTS.md (``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from partita.data.corpus import Corpus
from partita.generation.vae import load_vae
from partita.represent.melody import HOLD, NOTE_OFF, STEPS_PER_BAR, canonicalize, corpus_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--data", required=True)
    ap.add_argument("-l", "--labels", action="append", default=None)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_vae(args.bundle).model.float().eval()
    c = model.config
    corpus = Corpus(args.data)
    labels = args.labels or ["Essen", "O'Neill's", "Ryan's Mammoth"]
    for split in ("train", args.split):
        w, info = corpus_windows(corpus, split, c.bars, labels=labels)
        print(f"{split}: {info['pieces']} pieces, {len(w)} {c.bars}-bar windows, skipped {info['skipped']}")
    x = torch.as_tensor(w.astype(np.int64))

    def acc(pred) -> str:
        pred = canonicalize(np.asarray(pred).astype(np.int16))
        hit, moving = pred == w, w != HOLD
        return f"{hit.mean():.3f} (note events {hit[moving].mean():.3f})"

    with torch.no_grad():
        mu, sigma = model.encode(x)
        kl = (0.5 * (sigma ** 2 + mu ** 2 - 1 - 2 * torch.log(sigma))).mean(0).numpy()
        print(f"KL {kl.sum():.1f} nats per window; {(kl > 0.1).sum()} of {len(kl)} dimensions over 0.1 nats; "
              f"largest {np.sort(kl)[::-1][:5].round(2).tolist()}")
        shuffled = mu[torch.randperm(len(mu), generator=torch.Generator().manual_seed(0))]
        sampled = model.decode(mu).numpy()
        print("sampled, code of the window:", acc(sampled))
        print("sampled, z = 0:             ", acc(model.decode(torch.zeros_like(mu)).numpy()))
        print("sampled, another window's code:", acc(model.decode(shuffled).numpy()))
        print("teacher-forced, code:       ", acc(model.decode_logits(mu, x).argmax(-1).numpy()))
        print("teacher-forced, z = 0:      ", acc(model.decode_logits(torch.zeros_like(mu), x).argmax(-1).numpy()))
        by_bar = (canonicalize(sampled.astype(np.int16)) == w).reshape(len(w), -1, STEPS_PER_BAR).mean((0, 2))
        print("sampled accuracy by bar:", " ".join(f"{a:.2f}" for a in by_bar))
        print(f"notes per window: input {(w < NOTE_OFF).sum(1).mean():.1f}, reconstruction {(sampled < NOTE_OFF).sum(1).mean():.1f}")
        if c.decoder == "hierarchical":
            cond = model.conduct(mu)  # [n, bars, H]
            print(f"conductor output: std across windows {cond.std(0).mean():.3f}, across the bars of a window "
                  f"{cond.std(1).mean():.3f}")


if __name__ == "__main__":
    import contextlib
    import io
    import sys

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            main()
    finally:
        print(printed.getvalue(), end="")
    from results import write_section  # benchmarks/results.py

    write_section("Latent melodies: diagnosis (benchmarks/vae_diagnosis.py)",
                  "python benchmarks/vae_diagnosis.py " + " ".join(sys.argv[1:]), "```\n" + printed.getvalue() + "```",
                  "decoding z = 0 and another window's code: a decoder that ignores z scores the same as with its own code")
