"""Training in a budget (issue 28): a new user's commands on a corpus, every default, against the
5-gram.

For each corpus: ``partita data prepare`` (skipped when the folder is prepared already),
``partita data tokenizer train`` (no --vocab), ``partita data tokenize``, then
``partita train gpt --data C --max-time 10m`` with no other option (its wall time measured around
the command, the process's start and imports included) and ``partita eval gpt`` on the test split
(the 5-gram, order chosen on valid, on the same tokens). One JSON per corpus; ``write`` turns
them into the RESULTS.md section.

    OMP_NUM_THREADS=1 python benchmarks/train_budget.py run --name pop909 --source ../shared/data/pop909 --work /tmp/tb
    OMP_NUM_THREADS=1 python benchmarks/train_budget.py run --name bundled --source bundled --work /tmp/tb
    OMP_NUM_THREADS=1 python benchmarks/train_budget.py run --name asap-scores --source ../shared/data/asap --prepare "--kind scores" --work /tmp/tb
    python benchmarks/train_budget.py write /tmp/tb/pop909.json /tmp/tb/bundled.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _run(args: list[str], log: Path) -> tuple[float, str]:
    """Run ``partita ARGS``, appending its output to ``log``; (wall seconds, output)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "partita", *args], capture_output=True, text=True)
    took = time.monotonic() - start
    with open(log, "a") as f:
        f.write(f"$ partita {' '.join(args)}\n{done.stdout}{done.stderr}[{took:.1f} s, exit {done.returncode}]\n")
    if done.returncode != 0:
        raise SystemExit(f"partita {' '.join(args)} failed (exit {done.returncode}); see {log}")
    return took, done.stdout + done.stderr


def run(name: str, source: str, work: Path, budget: str, prepare_options: list[str] = ()) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    corpus, log = work / name, work / f"{name}.log"
    steps: dict = {}
    if not (corpus / "corpus.json").exists():
        steps["prepare_s"], _ = _run(["data", "prepare", source, "--out", str(corpus), "-j", "1", *prepare_options], log)
        steps["prepare_options"] = list(prepare_options)
    if not (corpus / "tokens" / "streams.json").exists():
        steps["tokenizer_s"], said = _run(["data", "tokenizer", "train", str(corpus)], log)
        steps["tokenizer_said"] = [line for line in said.splitlines() if line.startswith(("vocabulary", "tracks", "tokenizer:"))]
        steps["tokenize_s"], said = _run(["data", "tokenize", str(corpus), "-j", "1"], log)
        steps["tokenize_said"] = [line for line in said.splitlines() if line.startswith("warning")]
    if "tokenizer_said" not in steps and log.exists():  # prepared earlier by the same commands: what they said
        earlier = log.read_text().splitlines()
        steps["tokenizer_said"] = [line for line in earlier if line.startswith(("vocabulary", "tracks", "tokenizer:"))]
        steps["tokenize_said"] = [line for line in earlier if line.startswith("warning")]
    out = work / f"run-{name}"
    wall, said = _run(["train", "gpt", "--data", str(corpus), "--out", str(out), "--max-time", budget], log)
    card = json.loads((out / "card.json").read_text())
    eval_s, _ = _run(["eval", "gpt", "--model", str(out / "bundle"), "--data", str(corpus), "--json",
                      str(work / f"eval-{name}.json")], log)
    result = {
        "name": name, "source": source, "budget": budget, "train_wall_s": round(wall, 1), "eval_s": round(eval_s, 1),
        "card": {k: card.get(k) for k in ("preset", "parameters", "steps", "best_step", "stopped", "train_seconds",
                                            "trained_on", "tokens_seen", "valid_pieces")},
        "run": {k: card["run"].get(k) for k in ("batch_size", "lr", "warmup_fraction", "val_every", "max_time")},
        "first_line": [line for line in said.splitlines() if line.startswith(("preset", "training"))],
        "eval": json.loads((work / f"eval-{name}.json").read_text()),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        **steps,
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def _row(r: dict) -> str:
    ev = r["eval"]
    gpt = ev.get("transformer") or ev.get("transformer, with memory")
    gram = next(v for k, v in ev.items() if k.endswith("(Kneser-Ney)"))
    order = next(k for k in ev if k.endswith("(Kneser-Ney)")).split("-")[0]
    c = r["card"]
    below = 100 * (1 - gpt["bits_per_token"] / gram["bits_per_token"])
    return (f"| {r['name']} ({ev['pieces']} test pieces, {ev['tokens']:,} tokens) | {c['preset']}, {c['steps']} steps "
            f"| {r['train_wall_s'] / 60:.1f} min ({c['train_seconds']:.0f} s in the card) "
            f"| **{gpt['bits_per_token']:.3f}** / {gpt['bits_per_note']:.2f} | {gram['bits_per_token']:.3f} / "
            f"{gram['bits_per_note']:.2f} ({order}-gram) | {below:.1f}% |")


def _short(line: str, roles: int = 6) -> str:
    """A command's line as quoted in RESULTS.md: a long list of track roles cut to its first few."""
    if line.startswith("tracks kept apart: "):
        head, _, tail = line.partition("; --tracks")
        items = head[len("tracks kept apart: "):].split("), ")
        if len(items) > roles:
            return f"tracks kept apart: {'), '.join(items[:roles])}), ... ({len(items)} roles)"
        return head
    return line


def write(paths: list[Path], note: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import write_section

    results = [json.loads(Path(p).read_text()) for p in paths]
    lines = [
        "| corpus, test split | preset, steps | `train gpt` wall time | transformer bits/token / bits/note "
        "| 5-gram bits/token / bits/note | transformer below the 5-gram |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *(_row(r) for r in results),
        "",
    ]
    for r in results:
        said = [_short(line) for line in r.get("tokenizer_said", []) + r.get("tokenize_said", []) + r["first_line"]
                if not line.startswith("tokenizer:")]
        valid = (r["card"].get("valid_pieces") or "every").split(" (")[0]
        lines.append(f"- {r['name']}: " + "; ".join(f"\"{line}\"" for line in said)
                     + f"; batch {r['run']['batch_size']}, lr {r['run']['lr']}, warmup {r['run']['warmup_fraction']} of the "
                     f"run, validated once, on {valid} validation songs; OMP_NUM_THREADS={r['threads']}; "
                     f"`partita eval gpt` took {r['eval_s'] / 60:.1f} min.")
    if note:
        lines += ["", note]
    names = " and ".join(r["name"] for r in results)
    write_section(
        "Training in a budget (benchmarks/train_budget.py)",
        command=("python benchmarks/train_budget.py run --name NAME --source SRC --work DIR, per corpus: "
                 "partita data prepare SRC, partita data tokenizer train C, partita data tokenize C, "
                 f"partita train gpt --data C --max-time {results[0]['budget']}, partita eval gpt --model B --data C ({names})"),
        body="\n".join(lines),
        peer="a 5-gram interpolated modified Kneser-Ney model on the same tokens (order chosen on valid)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--name", required=True)
    r.add_argument("--source", required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--budget", default="10m")
    r.add_argument("--prepare", default="", help="extra options of partita data prepare, e.g. '--kind scores'")
    w = sub.add_parser("write")
    w.add_argument("paths", nargs="+", type=Path)
    w.add_argument("--note", default="")
    args = parser.parse_args()
    if args.what == "run":
        print(run(args.name, args.source, args.work, args.budget, args.prepare.split()))
    else:
        write(args.paths, args.note)


if __name__ == "__main__":
    main()
