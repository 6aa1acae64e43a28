"""``partita generate``: sample MIDI files from a trained GPT bundle (thin over ``partita.generation``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, err_console, progress_bar, write_json
from partita.cli.sampling import sampling_options
from partita.errors import PartitaError

_TOKEN_FORMATS = ("npy", "txt")


@sampling_options(defaults={"max_new_tokens": "512, and the model may end sooner; a cap with --bars/--seconds",
                             "programs": "auto: the prompt's; piano for --chords/--scale/--motif",
                             "threads": "the faster of 1 and all, measured while decoding",
                             "max_pause": "the model's generation.json, else never"})
def generate(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Bundle folder of a trained GPT (default: gpt-piano for a piano --prompt, else gpt-small)."),
    n: int = typer.Option(4, "-n", "--num-samples", help="How many pieces to sample."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Folder for sample-000.mid, sample-001.mid, ..."),
    prompt: Optional[Path] = typer.Option(None, "--prompt", "-p", help="A MIDI file to continue after its last note; the output is that file, every note, track and event kept, with the new notes added."),
    prompt_bars: Optional[int] = typer.Option(None, "--prompt-bars", help="Keep the first N bars of the prompt, in its own metre (and continue from there)."),
    prompt_seconds: Optional[float] = typer.Option(None, "--prompt-seconds", help="Keep the first S seconds of the prompt."),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help="Keep the first N tokens of the prompt."),
    composer: Optional[str] = typer.Option(None, "--composer", "-c", help="Sample in the style of this label of the model's card (any letter case)."),
    chords: Optional[str] = typer.Option(None, "--chords", help='Start from a chord progression, e.g. "C G Am F".'),
    scale: Optional[str] = typer.Option(None, "--scale", help='Start from a scale, e.g. "D dorian".'),
    motif: Optional[str] = typer.Option(None, "--motif", help='Start from a motif, e.g. "C4:1 E4:0.5 G4:0.5".'),
    tokens: bool = typer.Option(False, "--tokens", "--tokens-out", help="Also write each sample's token ids (sample-000.npy...)."),
    tokens_format: str = typer.Option("npy", "--tokens-format", help="Format of --tokens files: npy or txt (ids separated by spaces)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:1, mps..."),
    check_copies: bool = typer.Option(False, "--check-copies", help="Compare each sample with the model's training pieces (its bundle's copy index) and flag repeated bars."),
    max_copied_bars: int = typer.Option(4, "--max-copied-bars", help="With --check-copies: flag a sample that repeats more than this many bars (with notes) of one training piece."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    sampling: dict = None,
) -> None:
    """Sample pieces from a trained GPT: unconditionally, continuing a MIDI prompt, from chords, a
    scale or a motif, or in the style of a composer. Writes MIDI files and prints a table."""
    from partita.generation import generate_samples

    fmt = tokens_format.lower().lstrip(".")
    if fmt not in _TOKEN_FORMATS:
        raise PartitaError(f"--tokens-format takes npy or txt, not {tokens_format!r}")
    if out.exists() and not out.is_dir():
        raise PartitaError(f"{out}: exists and is not a folder (choose another --out)")
    model, model_reason = _chosen_model(model, prompt)
    copies = copies_tok = None
    if check_copies:  # before sampling: a missing index is a one-line error, not a wasted run
        from partita.generation.copies import CopyIndex
        from partita.represent.tokens import load_tokenizer

        if max_copied_bars < 0:
            raise PartitaError(f"--max-copied-bars must be 0 or more, not {max_copied_bars}")
        if not Path(model, "tokenizer.json").is_file():
            raise PartitaError(f"{model}: not a gpt bundle (no tokenizer.json)")
        copies_tok = load_tokenizer(Path(model) / "tokenizer.json")
        copies = CopyIndex.load(model, copies_tok)
    with progress_bar("sampling", unit="tokens") as update:
        samples = generate_samples(
            str(model), None if prompt is None else str(prompt), n=n, composer=composer,
            chords=chords, scale=scale, motif=motif, prompt_bars=prompt_bars, prompt_seconds=prompt_seconds,
            prompt_tokens=prompt_tokens, device=device, progress=update, **sampling,
        )
    config = samples[0].meta["sampling"] if samples else None

    from rich.table import Table

    from partita.io.midi import save

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in samples:
        stem = f"sample-{s.index:03d}"
        midi = None
        if s.ok:  # a sample without notes is reported, not written as an empty file
            midi = save(s.score, out / f"{stem}.mid")
        tok_file = None
        if tokens:
            import numpy as np

            tok_file = out / f"{stem}.{fmt}"
            if fmt == "npy":
                np.save(tok_file, s.ids.astype(np.int64))
            else:
                tok_file.write_text(" ".join(str(int(i)) for i in s.ids) + "\n")
        rows.append({
            "file": None if midi is None else str(midi),
            "tokens": s.new_tokens,
            "prompt_tokens": s.prompt_length,
            "bars": s.bars,
            "seconds": round(s.seconds, 3),
            "notes": s.notes,
            "new_notes": s.new_notes,
            "new_seconds": round(s.new_seconds, 3),
            "prompt_end_seconds": round(s.prompt_end, 3),
            "stop": s.stop,
            "repaired_tokens": s.dropped,
            "token_file": None if tok_file is None else str(tok_file),
            "error": None if s.ok else "no new notes: the model wrote no note" + (" after the prompt" if s.prompt_length > 1 else "") + ", nothing saved",
        })
        if copies is not None:
            match = copies.check(copies_tok, s.ids, s.prompt_length)
            rows[-1].update(match.as_dict())
            rows[-1]["copy_flag"] = match.bars > max_copied_bars

    table = Table(title=f"Samples in {out}", title_justify="left")
    for col, justify in (("file", "left"), ("tokens", "right"), ("bars", "right"), ("seconds", "right"),
                         ("notes", "right"), ("new notes", "right"), ("new seconds", "right"), ("stop", "left")):
        table.add_column(col, justify=justify, no_wrap=col == "file")
    if copies is not None:
        table.add_column("copied bars", justify="right")
    for r in rows:
        name = Path(r["file"]).name if r["file"] else "(no new notes, not written)"
        cells = [name, f"{r['tokens']:,}", f"{r['bars']:,}", f"{r['seconds']:.1f}", f"{r['notes']:,}",
                 f"{r['new_notes']:,}", f"{r['new_seconds']:.1f}", r["stop"]]
        if copies is not None:
            cells.append(f"{r['copied_bars']}" + (" COPY" if r["copy_flag"] else ""))
        table.add_row(*cells)
    console.print(table)
    console.print(f"model: {model} ({model_reason})", markup=False, highlight=False, soft_wrap=True)
    if copies is not None:
        flagged = [r for r in rows if r["copy_flag"]]
        for r in flagged:
            a, b = r["copied_piece_bars"]
            console.print(f"{Path(r['file'] or '').name or 'a sample'} repeats {r['copied_bars']} bars of the training piece "
                          f"{r['copied_from']!r} (its bars {a + 1}-{b + 1})", markup=False, highlight=False)
        console.print(f"copy check: {len(flagged)} of {len(rows)} sample(s) repeat more than {max_copied_bars} bars of a "
                      f"training piece ({len(copies):,} pieces in {Path(str(copies.path)).name}'s copy index)")
    written = sum(1 for r in rows if r["file"])
    for k, r in enumerate(rows):
        if r["error"]:
            err_console.print(f"sample {k}: {r['error']}", markup=False, highlight=False)
    console.print(f"wrote {written} MIDI file(s) to {out}" + (f"; {len(rows) - written} sample(s) had no new notes" if written < len(rows) else ""))
    write_json(json_path, {
        "model": str(model),
        "model_reason": model_reason,
        "out": str(out),
        "settings": {
            "n": n, "prompt": None if prompt is None else str(prompt), "prompt_bars": prompt_bars,
            "prompt_seconds": prompt_seconds, "prompt_tokens": prompt_tokens, "composer": composer,
            "chords": chords, "scale": scale, "motif": motif,
            "check_copies": check_copies, "max_copied_bars": max_copied_bars if check_copies else None,
            **({} if config is None else config.as_settings()),
        },
        "samples": rows,
    })


def _chosen_model(model, prompt):
    """The bundle to sample from and why: given with --model, or the shipped default for the prompt
    (gpt-piano for a piano MIDI prompt, else gpt-small)."""
    if model is not None:
        return model, "given with --model"
    from partita.pretrained import GPT_PIANO, ROOT, default_gpt

    chosen = default_gpt(prompt)
    if chosen.name == GPT_PIANO:
        return chosen, "the default for a piano prompt: shipped gpt-piano, trained on ASAP's piano performances"
    if prompt is None:
        why = "no prompt"
    elif not (ROOT / GPT_PIANO / "config.json").exists():
        why = "gpt-piano is not installed"
    else:
        why = "the prompt is not a piano file"
    return chosen, f"the default, {why}: shipped gpt-small, trained on the bundled corpus; choose another with --model"
