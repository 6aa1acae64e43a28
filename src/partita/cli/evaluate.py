"""``partita eval``: honest numbers on held-out pieces, next to baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, write_json

app = typer.Typer(help="Evaluate models on held-out pieces against baselines.", no_args_is_help=True)


@app.command("gpt")
def gpt_cmd(
    model: Path = typer.Option(..., "--model", help="A GPT bundle (training's RUN/bundle)."),
    data: Path = typer.Option(..., "--data", help="The prepared corpus (tokenized with the model's tokenizer)."),
    split: str = typer.Option("test", "--split", help="Which split to score."),
    batch_size: int = typer.Option(8, "--batch-size", "-b"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Bits per token and per note: the transformer (with and without memory) vs an n-gram."""
    from partita.evaluate.gpt import evaluate_gpt

    results = evaluate_gpt(model, data, split=split, batch_size=batch_size)
    table = Table(title=f"{results['split']} split: {results['pieces']} pieces, {results['tokens']:,} tokens, {results['notes']:,} notes", title_justify="left")
    for col in ("model", "bits/token", "bits/note", "bits/token far into pieces"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in results.items():
        if isinstance(r, dict):
            far = r.get("far_bits_per_token")
            table.add_row(name, f"{r['bits_per_token']:.3f}", f"{r['bits_per_note']:.3f}", "" if far is None else f"{far:.3f} ({r['far_tokens']:,} tokens)")
    console.print(table)
    write_json(json_out, results)
