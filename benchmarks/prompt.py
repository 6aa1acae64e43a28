"""Long prompts and threads with the shipped model, on this machine's cores.

1. Time to the first new token for a 10-minute piano prompt (the first 600 s of
   ``tests/fixtures/midi/performance/Maestro_2.mid``, 15 min of a MAESTRO performance): read the
   MIDI file, load the shipped model for it (``gpt-piano``), encode, read the prompt window by
   window (XL + kNN memory) and sample one token, as ``partita generate --prompt FILE`` does.
   Best of ``--rounds``.
2. Decoding speed of ``gpt-piano`` (new tokens/s, batch 1, after the first ``--prompt-tokens``
   of the same piano file) with 1 thread, with all threads and with the automatic choice
   (``SamplingConfig.threads=None``), on the machine as it is and with ``--busy`` other
   processes spinning on the cores; the tokens are checked to be the same in every setting.

    python benchmarks/prompt.py [--rounds 3] [--busy 1] [--tokens 256] [--prompt-tokens 1500]

Writes the "Long prompts and threads" section of benchmarks/RESULTS.md (``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = ROOT / "tests" / "fixtures" / "midi" / "performance" / "Maestro_2.mid"


def _spin(_):  # a busy process
    while True:
        pass


def first_token(seconds: float = 600.0) -> tuple[float, int]:
    from partita.generation import _tick_at_seconds, build_prompt, resolve_model
    from partita.generation.sampling import sample
    from partita.io import load

    t = time.perf_counter()
    score = load(PROMPT)
    score = score.clip(0, _tick_at_seconds(score, seconds), clip_end=False)
    model, tok, _, _ = resolve_model(None, device="cpu", prompt=str(PROMPT))
    ids = build_prompt(tok, score)
    sample(model, tok, prompts=ids, max_new_tokens=1, seed=0)
    return time.perf_counter() - t, len(ids)


def decode_speed(threads, tokens: int, prompt) -> tuple[float, np.ndarray]:
    from partita.generation import resolve_model
    from partita.generation.sampling import sample

    model, tok, _, _ = resolve_model(None, device="cpu", prompt=str(PROMPT))
    t = time.perf_counter()
    out = sample(model, tok, prompts=prompt, max_new_tokens=tokens, seed=0, threads=threads)[0]
    return tokens / (time.perf_counter() - t), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=1, help="spinning processes for the loaded case")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    args = ap.parse_args()
    n = torch.get_num_threads()
    lines = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(f"- {line}")

    say(f"{n} intra-op threads, load average {os.getloadavg()[0]:.2f} at the start")
    from partita.pretrained import default_gpt

    say(f"model: `{default_gpt(str(PROMPT)).name}`")
    best, length = min(first_token() for _ in range(args.rounds))
    say(f"time to first new token, 10-minute piano prompt ({length:,} tokens): **{best:.2f} s** (best of {args.rounds})")

    from partita.generation import build_prompt, resolve_model

    _, tok, _, _ = resolve_model(None, device="cpu", prompt=str(PROMPT))
    prompt = build_prompt(tok, str(PROMPT), prompt_tokens=args.prompt_tokens)
    settings = [("1 thread", 1), (f"{n} threads", n), ("auto", None)]
    for case in ("as it is", f"{args.busy} busy process(es)"):
        pool = None
        if case != "as it is":
            pool = [mp.Process(target=_spin, args=(0,), daemon=True) for _ in range(args.busy)]
            for p in pool:
                p.start()
            time.sleep(1.0)
        try:
            outs = {}
            speed = {name: 0.0 for name, _ in settings}
            for _ in range(args.rounds):  # interleaved rounds, best of each
                for name, threads in settings:
                    s, outs[name] = decode_speed(threads, args.tokens, prompt)
                    speed[name] = max(speed[name], s)
            same = all(np.array_equal(outs[settings[0][0]], o) for o in outs.values())
            say(f"decoding after {args.prompt_tokens:,} prompt tokens, batch 1, {case}: "
                + ", ".join(f"{k} {v:.0f} tokens/s" for k, v in speed.items())
                + f"; same tokens: {same}; load average {os.getloadavg()[0]:.2f}")
        finally:
            for p in pool or []:
                p.terminate()
                p.join()
    from results import write_section  # benchmarks/results.py

    command = (f"python benchmarks/prompt.py --rounds {args.rounds} --busy {args.busy} --tokens {args.tokens} "
               f"--prompt-tokens {args.prompt_tokens}")
    write_section("Long prompts and threads (benchmarks/prompt.py)", command, "\n".join(lines),
                  "none run beside it; the target is under 3 s to the first token after a 10-minute piano prompt")


if __name__ == "__main__":
    main()
