"""Music transformer speed, side by side with what a user would otherwise run, in one run.

1. Training throughput (tokens/s): partita's GPT vs Hugging Face ``GPT2LMHeadModel`` of the same
   dimensions (layers, heads, width, vocabulary, context), same batch, forward + backward + AdamW.
2. Generation throughput (new tokens/s) at batch 1 and 16: partita's KV-cache sampler vs HF
   ``generate`` (with its cache) vs a no-cache sampler that re-runs the whole window for every
   token (TchAIkovsky's way).
3. Real-time factor of a bundle (default: the shipped model): seconds of music generated per
   second of compute.
4. The shipped piano model (``gpt-piano``) on piano prompts (the 14 files of ``tests/fixtures/midi/performance``),
   as a user asks for it: ``generate_samples(prompt=FILE, seconds=30)`` at batch 1, timed from
   loading the bundle and reading the MIDI file (the whole file is the prompt, read window by
   window) to the 30th second of new music, with 1 thread, 2 threads and the automatic choice
   taking turns; real-time factor = 30 s over that time (Python's imports not counted). Next to
   it, a lower bound on the model's step on this CPU (``step_floor``: the weight products, the
   attention and the kNN search alone) and the best real-time factor that bound allows at the
   tokens per second of music of those continuations.
5. bf16 MFU when a GPU is present.

    python benchmarks/gpt.py [--model BUNDLE] [--threads N] [--parts train,generate,realtime,piano] [--json FILE]

``--parts`` runs some of them (``generate1``: batch 1 only); only a full run rewrites its section.

A full run (all parts) writes the "Music transformer" section of benchmarks/RESULTS.md
(``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Music transformer (benchmarks/gpt.py)"


def interleaved(contenders, rounds):
    """Best wall time of each ``name -> fn`` over ``rounds`` rounds that run every contender in
    turn (after one warm-up each), so that a change in the machine's load falls on all of them."""
    for fn in contenders.values():
        fn()
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def hf_model(cfg):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2Config(
        vocab_size=cfg.vocab_size + cfg.n_labels + 1,
        n_positions=cfg.context,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_ff or 4 * cfg.d_model,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=True,
    )
    return GPT2LMHeadModel(hf)


def training_throughput(cfg, batch, steps, bf16=False, rounds=3):
    """Tokens/s of partita's GPT and HF's GPT2LMHeadModel, fp32 or both under CPU bf16 autocast."""
    from partita.models.gpt import GPT

    torch.manual_seed(0)
    ours = GPT(cfg)
    theirs = hf_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context))

    def trainer(model, step):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def go():
            for _ in range(steps):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = step(model)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        return go

    best = interleaved({"ours": trainer(ours, lambda m: m(x, x)[1]),
                        "theirs": trainer(theirs, lambda m: m(input_ids=x, labels=x).loss)}, rounds)
    return batch * cfg.context * steps / best["ours"], batch * cfg.context * steps / best["theirs"]


@torch.no_grad()
def generation_throughput(cfg, tokenizer, prompt, batch, new_tokens, rounds=3):
    """New tokens per second, every contender making exactly ``new_tokens`` per row."""
    from partita.generation.sampling import sample
    from partita.models.gpt import GPT

    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    theirs = hf_model(cfg).eval()
    ids = torch.as_tensor(np.asarray(prompt), dtype=torch.long)[None].repeat(batch, 1)
    made = {}

    def partita_run():
        outs = sample(ours, tokenizer, prompts=[np.asarray(prompt)], n=batch, max_new_tokens=new_tokens, seed=0,
                      allow_eos=False, threads=torch.get_num_threads())  # the same threads as HF's
        made["partita (KV cache)"] = sum(len(o) - len(prompt) for o in outs)

    def hf_run():
        theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens, do_sample=True, top_k=0, pad_token_id=0)
        made["HF generate (cache)"] = batch * new_tokens

    def nocache_run():
        x = ids
        g = torch.Generator().manual_seed(0)
        for _ in range(new_tokens):
            logits, _ = ours(x[:, -cfg.context:])
            nxt = torch.multinomial(torch.softmax(logits[:, -1], -1), 1, generator=g)
            x = torch.cat([x, nxt], 1)
        made["no cache (TchAIkovsky)"] = batch * new_tokens

    best = interleaved({"partita (KV cache)": partita_run, "HF generate (cache)": hf_run,
                        "no cache (TchAIkovsky)": nocache_run}, rounds)
    return {name: made[name] / t for name, t in best.items()}


def realtime_factor(bundle_path, n_tokens=1024, n=4):
    """Seconds of music over seconds of compute: ``n`` pieces of ``n_tokens`` sampled one after
    another at batch 1 (EOS not allowed, so every piece has the same length)."""
    from partita.bundle import load_bundle
    from partita.generation.sampling import decode_safe, sample

    bundle = load_bundle(bundle_path)
    music = compute = 0.0
    for seed in range(n):
        t = time.perf_counter()
        [ids] = sample(bundle.model, bundle.tokenizer, n=1, max_new_tokens=n_tokens, seed=seed, allow_eos=False)
        compute += time.perf_counter() - t
        music += float(decode_safe(bundle.tokenizer, ids)[0].to("second").end())
    return music, compute


PIANO_FOLDER = ROOT / "tests" / "fixtures" / "midi" / "performance"  # 14 solo piano performances


def piano_realtime(seconds=30.0, rounds=1, thread_counts=(1, 2, None)):
    """Per thread setting: [(prompt, prompt tokens, new seconds, wall seconds, load, prefill)]
    for ``seconds`` of music after each piano prompt, start-up included (module doc)."""
    from partita.bundle import load_bundle
    from partita.generation import build_prompt, generate_samples
    from partita.pretrained import GPT_PIANO, bundle_path

    path = bundle_path(GPT_PIANO)
    prompts = sorted(PIANO_FOLDER.glob("*.mid"))
    out = {t: [] for t in thread_counts}
    generate_samples(str(path), str(prompts[0]), prompt_tokens=600, seconds=2.0, threads=1)  # warm-up
    for _ in range(rounds):
        for file in prompts:
            name = file.name
            for t in thread_counts:  # taking turns: a change of load falls on every setting
                start = time.perf_counter()
                bundle = load_bundle(path)
                loaded = time.perf_counter() - start
                ids = build_prompt(bundle.tokenizer, str(file))
                [s] = generate_samples(bundle, ids, seconds=seconds, threads=t, seed=0)
                wall = time.perf_counter() - start
                new = s.seconds - _prompt_seconds(bundle.tokenizer, ids)
                out[t].append({"prompt": name, "prompt_tokens": int(len(ids)), "new_tokens": s.new_tokens,
                               "new_seconds": new, "wall": wall, "load": loaded})
    return out


def step_floor(threads, rounds=200):
    """Milliseconds per new token of the kernels no implementation of the shipped piano model's
    step avoids on this CPU, at the state after a long prompt: every weight product in the
    decoding layout (output head included), attention of one query over the ``context - 1 +
    xl_length`` held positions of each layer (its own keys and values), and the kNN layer's
    exact search over a full memory (``knn_max_memory`` keys, scores and top-k). Each part
    alone (its data hot in the caches), and all of them back to back in a step's order over a
    step's whole working set ("one step"). Module calls, sampling and bookkeeping are left out,
    so "one step" is a lower bound on a step."""
    import torch.nn.functional as F

    from partita.bundle import load_bundle
    from partita.nn.attention import KNNMemory
    from partita.generation.step import DecodeStep
    from partita.nn.linear import rows_linear
    from partita.pretrained import GPT_PIANO, bundle_path

    model = load_bundle(bundle_path(GPT_PIANO)).model.float().eval()
    c = model.config
    held = c.context - 1 + ((c.xl_length or c.context) if c.xl_memory else 0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, c.n_head, 1, c.head_dim, generator=g)
    kv = [torch.randn(2, 1, c.n_head, held, c.head_dim, generator=g) for _ in range(c.n_layer)]
    knn = KNNMemory(1, c.n_head, c.head_dim, topk=c.knn_topk, max_memory=c.knn_max_memory)
    knn.add(*torch.randn(2, 1, c.n_head, c.knn_max_memory, c.head_dim, generator=g))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            step = DecodeStep(model)
            layers = [[(torch.randn(1, 1, w.shape[-2], generator=g), w, n)
                       for w, n in ((qkv, 3 * c.d_model), (proj, c.d_model), (fc, d_ff), (mproj, c.d_model))]
                      for _, _, qkv, proj, _, _, fc, d_ff, mproj, _ in step.layers]
            head = (torch.randn(1, 1, c.d_model, generator=g), step.head_t, c.vocab_size)
            products = [p for layer in layers for p in layer] + [head]

            def one_step():
                for i, layer in enumerate(layers):
                    rows_linear(*layer[0])
                    F.scaled_dot_product_attention(q, kv[i][0], kv[i][1])
                    if i == model.knn_layer:
                        knn.topk_indices(q)
                    for p in layer[1:]:
                        rows_linear(*p)
                rows_linear(*head)

            parts = {
                "weight products": lambda: [rows_linear(*p) for p in products],
                f"attention over {held} positions": lambda: [F.scaled_dot_product_attention(q, k, v) for k, v in kv],
                f"kNN search over {c.knn_max_memory:,} keys": lambda: knn.topk_indices(q),
                "one step": one_step,
            }
            out = {}
            for name, fn in parts.items():
                best = float("inf")
                for _ in range(3):
                    for _ in range(10):
                        fn()
                    t = time.perf_counter()
                    for _ in range(rounds):
                        fn()
                    best = min(best, (time.perf_counter() - t) / rounds * 1e3)
                out[name] = best
    finally:
        torch.set_num_threads(old)
    return out


def _prompt_seconds(tokenizer, ids):
    from partita.generation.sampling import decode_safe

    return float(decode_safe(tokenizer, ids)[0].to("second").end())


#: Dense bf16 peak FLOP/s by GPU name (vendor data sheets, SXM parts).
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def gpu_mfu(batch=8, steps=10):
    """Model FLOPs utilisation of training the ``base`` preset on the GPU in bf16 autocast:
    ``flops_per_token * tokens_per_s / peak`` (PaLM's definition, attention included)."""
    from partita.models.gpt import GPT, GPTConfig

    cfg = GPTConfig.preset("base", vocab_size=20000, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context), device="cuda")

    def go(n):
        for _ in range(n):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, x)[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    go(3)  # warm-up
    t = time.perf_counter()
    go(steps)
    tps = batch * cfg.context * steps / (time.perf_counter() - t)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    flops = model.estimate_flops_per_token()
    return {"device": name, "parameters": model.num_parameters(), "batch": batch, "context": cfg.context,
            "tokens_per_s": tps, "flops_per_token": flops, "peak_flops": peak,
            "mfu": flops * tps / peak if peak else None}


def peer_line(results):
    """The Hugging Face figures this run measured beside partita's."""
    parts = []
    if "generate_b1" in results:
        parts.append(f"HF `generate` {results['generate_b1']['HF generate (cache)']:,.0f} new tokens/s at batch 1")
    if "train" in results:
        parts.append(f"HF `GPT2LMHeadModel` training {results['train']['hf_gpt2']:,.0f} tokens/s in fp32")
    return "; ".join(parts) or "Hugging Face GPT-2 with the same dimensions"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="bundle for the real-time factor (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parts", default="train,generate,realtime,piano")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    from partita.bundle import load_bundle
    from partita.models.gpt import GPTConfig
    from partita.represent.tokens import encode, make_tokenizer

    model = args.model or str(ROOT / "src" / "partita" / "pretrained" / "gpt-small")
    tokenizer = load_bundle(model).tokenizer if Path(model, "config.json").exists() else make_tokenizer()
    fixture = ROOT / "tests" / "fixtures" / "midi" / "multitrack" / "POP909_008.mid"
    prompt = encode(tokenizer, fixture)[:16]
    cfg = GPTConfig.preset("small", vocab_size=len(tokenizer), n_labels=10, dropout=0.0, bar_embeddings=False)
    gen_cfg = cfg
    cmd = "python benchmarks/gpt.py" + (f" --threads {args.threads}" if args.threads else "")
    cmd += f" --parts {args.parts}" if parts != {"train", "generate", "realtime", "piano"} else ""
    lines = [f"Load average {os.getloadavg()[0]:.2f} at the start (each row: best of 3 rounds after a warm-up, the contenders of a table taking turns "
              f"within each round, so that the machine's changing load falls on all of them); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads. Model dimensions: the `small` preset "
              f"({cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.d_model}, context {cfg.context}, "
              f"vocabulary {cfg.vocab_size}), no bar embeddings so both models compute the same thing.", ""]
    results = {}
    from partita.nn.linear import cpu_bf16_flag
    from partita.train.common import default_precision

    if "train" in parts:
        lines += train_lines(cfg, results, default_precision, cpu_bf16_flag)
    if "generate" in parts or "generate1" in parts:  # generate1: batch 1 only (the no-cache batch 16 is slow)
        lines += generate_lines(gen_cfg, tokenizer, prompt, results, (1,) if "generate" not in parts else (1, 16))
    if "realtime" in parts and Path(model, "config.json").exists():
        seconds, compute = realtime_factor(model)
        results["realtime"] = {"music_seconds": seconds, "compute_seconds": compute}
        lines += [f"Real-time factor of the shipped model (`{Path(model).name}`): {seconds:.1f} s of music in "
                  f"{compute:.2f} s of compute (4 pieces of 1024 tokens, batch 1, one after another) = "
                  f"**{seconds / compute:.1f}x real time**.", ""]
    if "piano" in parts:
        lines += piano_lines(results)
    if torch.cuda.is_available():
        mfu = gpu_mfu()
        results["gpu_mfu"] = mfu
        peak = f"{mfu['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16" if mfu["peak_flops"] else "unknown peak"
        lines += [f"GPU ({mfu['device']}, {peak}): `base` preset ({mfu['parameters'] / 1e6:.0f}M parameters), "
                  f"batch {mfu['batch']} x {mfu['context']}, bf16 autocast, fwd+bwd+AdamW: "
                  f"{mfu['tokens_per_s']:,.0f} tokens/s"
                  + (f", **MFU {mfu['mfu']:.1%}**." if mfu["mfu"] else "."), ""]
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.2f}.")
    text = "\n".join(lines)
    print(text)
    if parts == {"train", "generate", "realtime", "piano"}:
        from results import write_section  # benchmarks/results.py

        write_section(SECTION.removeprefix("## "), cmd, text, peer_line(results))
    else:
        print("(a partial run: RESULTS.md not written)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def piano_lines(results):
    runs = piano_realtime()
    results["piano_realtime"] = {str(k): v for k, v in runs.items()}
    lines = ["| `gpt-piano`, 30 s after a piano prompt, batch 1, start-up included | threads | prompt tokens | "
             "new tokens | wall s (load) | real-time factor |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for t, rows in runs.items():
        for r in rows:
            lines.append(f"| {r['prompt'].split(',')[0]} | {'auto' if t is None else t} | {r['prompt_tokens']:,} | "
                         f"{r['new_tokens']:,} | {r['wall']:.1f} ({r['load']:.2f}) | {r['new_seconds'] / r['wall']:.2f}x |")
    lines.append("")
    for t, rows in runs.items():
        music, wall = sum(r["new_seconds"] for r in rows), sum(r["wall"] for r in rows)
        factors = sorted(r["new_seconds"] / r["wall"] for r in rows)
        lines.append(f"- {'auto' if t is None else t} thread(s): {music:.0f} s of music in {wall:.1f} s = "
                     f"**{music / wall:.2f}x real time** over the {len(rows)} prompts (target 20x); per prompt "
                     f"median {np.median(factors):.1f}x, {sum(f >= 20 for f in factors)} of {len(rows)} at 20x or more, "
                     f"slowest {factors[0]:.1f}x.")
    lines.append("")
    rates = sorted(r["new_tokens"] / r["new_seconds"] for r in runs[2])  # tokens per second of new music
    floor = step_floor(2)
    results["step_floor_ms"] = floor
    total = floor.pop("one step")
    lines += [f"Lower bound on a decoding step of `gpt-piano` with 2 threads (`step_floor`: the kernels alone, "
              f"no module calls, no sampling): " + ", ".join(f"{k} {v:.3f} ms" for k, v in floor.items())
              + f" (each alone), **{total:.2f} ms per token** back to back over a step's working set. The continuations above have {rates[0]:.0f}-{rates[-1]:.0f} "
              f"new tokens per second of music (median {np.median(rates):.0f}), so with no start-up and no "
              f"overhead at all the best real-time factor is {1e3 / (total * rates[-1]):.1f}-"
              f"{1e3 / (total * rates[0]):.1f}x (median {1e3 / (total * np.median(rates)):.1f}x); "
              f"{sum(1e3 / (total * r) >= 20 for r in rates)} of {len(rates)} prompts could reach 20x.", ""]
    return lines


def train_lines(cfg, results, default_precision, cpu_bf16_flag):
    lines = []
    ours, theirs = training_throughput(cfg, batch=4, steps=3)
    results["train"] = {"partita": ours, "hf_gpt2": theirs}
    default = default_precision(cpu_bf16=True)
    lines += ["| training (batch 4 x 512, fwd+bwd+AdamW) | tokens/s | x HF fp32 (its default) | x HF, same precision |",
              "| --- | ---: | ---: | ---: |",
              f"| partita GPT, fp32 | {ours:,.0f} | {ours / theirs:.2f} | {ours / theirs:.2f} |",
              f"| HF GPT2LMHeadModel, fp32 | {theirs:,.0f} | 1.00 | 1.00 |"]
    bf16_flag = cpu_bf16_flag()
    if bf16_flag:
        ours16, theirs16 = training_throughput(cfg, batch=4, steps=3, bf16=True)
        results["train_bf16_autocast"] = {"partita": ours16, "hf_gpt2": theirs16}
        lines += [f"| partita GPT, bf16 autocast | {ours16:,.0f} | {ours16 / theirs:.2f} | {ours16 / theirs16:.2f} |",
                  f"| HF GPT2LMHeadModel, bf16 autocast | {theirs16:,.0f} | {theirs16 / theirs:.2f} | 1.00 |"]
    lines += ["", (f"This CPU has bf16 instructions (`{bf16_flag}`)" if bf16_flag else "This CPU has no bf16 instructions")
              + f"; `partita train gpt` trains in `{default}` here by default (bf16 autocast on a GPU and on a CPU "
              "with AMX or AVX-512 BF16, fp32 elsewhere).", ""]
    return lines


def generate_lines(gen_cfg, tokenizer, prompt, results, batches=(1, 16)):
    lines = []
    lines += ["| generation (16-token prompt, 256 new tokens) | batch | new tokens/s | x HF generate | x no cache |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for batch in batches:
        g = generation_throughput(gen_cfg, tokenizer, prompt, batch, 256, rounds=5 if batch == 1 else 3)
        results[f"generate_b{batch}"] = g
        hf, nc = g["HF generate (cache)"], g["no cache (TchAIkovsky)"]
        for name, tps in g.items():
            lines.append(f"| {name} | {batch} | {tps:,.0f} | {tps / hf:.2f} | {tps / nc:.2f} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
