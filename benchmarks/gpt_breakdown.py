"""Where the music transformer's time goes on a CPU, in one run:

1. the weight layout of a decoding step: the 25 matrices of the ``small`` GPT times one row, with
   ``F.linear`` (PyTorch's ``[out, in]``), transposed ``[in, out]``, and transposed and split into
   one column block per thread (``partita.nn.linear``, what ``sample`` uses);
2. sampling speed of this tree against an earlier checkout (``--against TREE``, e.g. made with
   ``git worktree add /tmp/old 6a594de``), each in its own process, taking turns: the ``small``
   dimensions inside the context, and the shipped model past its context;
3. a training step (fp32, batch 4 x 512) of partita's GPT and HF's ``GPT2LMHeadModel`` under
   ``torch.profiler``: the share of matrix products and of attention.

    python benchmarks/gpt_breakdown.py [--against TREE]

Writes the "Music transformer: where the time goes" section of benchmarks/RESULTS.md
(``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpt import hf_model, interleaved  # noqa: E402
from results import write_section  # noqa: E402

SECTION = "## Music transformer: where the time goes (benchmarks/gpt_breakdown.py)"

# Run inside a tree's own src/: tokens/s of sampling, best of ROUNDS.
SAMPLER = r"""
import json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1] + "/src")
from partita.bundle import load_bundle
from partita.generation.sampling import sample
from partita.models.gpt import GPT, GPTConfig
bundle = load_bundle(sys.argv[1] + "/src/partita/pretrained/gpt-small")
tok = bundle.tokenizer
torch.manual_seed(0)
small = GPT(GPTConfig.preset("small", vocab_size=len(tok), n_labels=10, dropout=0.0)).eval()
what, n_new = sys.argv[2], int(sys.argv[3])
model, prompts = (small, [np.arange(4, 20)]) if what == "small" else (bundle.model, None)
run = lambda: sample(model, tok, prompts=prompts, n=1, max_new_tokens=n_new, seed=0, allow_eos=False)
run()
t = time.perf_counter(); run(); print(json.dumps(n_new / (time.perf_counter() - t)))
"""


def layout(rounds=5):
    from partita.nn.linear import decode_weight, rows_linear

    torch.manual_seed(0)
    d, V = 256, 1000
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * 6 + [(V, d)]
    ws = [torch.randn(*s) for s in shapes]
    plain_t = [w.t().contiguous() for w in ws]
    split = [decode_weight(w) for w in ws]
    xs = {d: torch.randn(1, d), 4 * d: torch.randn(1, 4 * d)}

    def repeat(fn, n=100):
        return lambda: [fn() for _ in range(n)]

    with torch.inference_mode():
        best = interleaved({
            "F.linear, weights [out, in]": repeat(lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in ws]),
            "x @ Wt, weights [in, out]": repeat(lambda: [xs[w.shape[0]] @ w for w in plain_t]),
            "partita: [in, out] split in blocks, one bmm": repeat(
                lambda: [rows_linear(xs[w.shape[1]], s, w.shape[0]) for w, s in zip(ws, split)]),
        }, rounds)
    return {name: t / 100 * 1e3 for name, t in best.items()}


def sampling(trees, what, n_new, rounds=3):
    def one(tree):
        def go():
            out = subprocess.run([sys.executable, "-c", SAMPLER, str(tree), what, str(n_new)],
                                 capture_output=True, text=True, check=True)
            go.tps = max(getattr(go, "tps", 0.0), json.loads(out.stdout.strip().splitlines()[-1]))
        return go

    fns = {name: one(tree) for name, tree in trees.items()}
    for _ in range(rounds):
        for fn in fns.values():
            fn()
    return {name: fn.tps for name, fn in fns.items()}


def training_profile():
    from torch.profiler import profile

    from partita.models.gpt import GPT, GPTConfig

    cfg = GPTConfig.preset("small", vocab_size=1000, n_labels=10, dropout=0.0)
    x = torch.randint(0, cfg.vocab_size, (4, cfg.context))
    torch.manual_seed(0)
    out = {}
    for name, model, step in (("partita GPT", GPT(cfg), lambda m: m(x, x)[1]),
                              ("HF GPT2LMHeadModel", hf_model(cfg), lambda m: m(input_ids=x, labels=x).loss)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def go():
            step(model).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        go()
        with profile() as prof:
            go()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
        attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
        out[name] = {"matrix products": mm / total, "attention (SDPA)": attn / total}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default=None, help="an earlier checkout of partita to compare sampling with")
    args = ap.parse_args()
    command = f"python benchmarks/gpt_breakdown.py{' --against ' + args.against if args.against else ''}"
    lines = [f"{torch.get_num_threads()} threads, torch {torch.__version__}.", ""]
    lay = layout()
    base = lay["F.linear, weights [out, in]"]
    lines += ["One decoding step's matrix-vector products (the 25 matrices of the `small` GPT, one row; best of 5, "
              "taking turns):", "", "| layout | ms per step | x F.linear |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {ms:.3f} | {base / ms:.2f} |" for name, ms in lay.items()]
    lines.append("")
    if args.against:
        old = Path(args.against).resolve()
        head = subprocess.run(["git", "-C", str(old), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        trees = {f"{head or old.name} (--against)": old, "this tree": ROOT}
        lines += ["Sampling at batch 1 (`sample(..., allow_eos=False)`; each tree in its own process, best of 3, "
                  "taking turns):", "", "| what | " + " | ".join(trees) + " | x |", "| --- | ---: | ---: | ---: |"]
        for what, n_new, label in (("small", 256, "`small` dimensions, random weights, 16-token prompt, 256 new tokens (inside the context)"),
                                   ("shipped", 1024, "shipped `gpt-small` (XL + kNN memory), 1024 new tokens (twice its context)")):
            tps = sampling(trees, what, n_new)
            a, b = tps.values()
            lines.append(f"| {label} | {a:,.0f} tokens/s | {b:,.0f} tokens/s | {b / a:.2f} |")
        lines.append("")
    prof = training_profile()
    lines += ["A training step (fp32, batch 4 x 512, forward + backward + AdamW) under `torch.profiler`, share of "
              "self CPU time:", "", "| model | matrix products | attention (SDPA) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {p['matrix products']:.0%} | {p['attention (SDPA)']:.0%} |" for name, p in prof.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    peer = (f"PyTorch's `F.linear` for a decoding step's one-row products: {base:.3f} ms a step; "
            "HF `GPT2LMHeadModel`'s training step profile")
    write_section(SECTION.removeprefix("## "), command, text, peer)


if __name__ == "__main__":
    sys.exit(main())
