"""``partita demo``: what partita does, on the bundled corpus, in a few minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, print_corpus_summary, progress_bar


def demo(
    out: Path = typer.Option(Path("partita-demo"), "--out", "-o", help="Folder for the demo's outputs."),
    max_per_label: Optional[int] = typer.Option(None, "--max-per-label", help="Pieces per label of the bundled corpus."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores)."),
    bars: int = typer.Option(8, "--bars", help="Bars generated after each prompt."),
) -> None:
    """Build the bundled corpus, prepare it, and continue music with the shipped transformer."""
    from partita.data.prepare import prepare
    from partita.data.sources.bundled import DEFAULT_MAX_PER_LABEL, export_bundled

    per_label = max_per_label or DEFAULT_MAX_PER_LABEL
    with progress_bar("exporting music21 corpus") as update:
        export = export_bundled(max_per_label=per_label, workers=workers, progress=update)
    console.print(f"bundled corpus: {len(export.pieces)} MIDI files in {export.out_dir}")
    with progress_bar("preparing") as update:
        result = prepare(
            "bundled",
            out / "corpus",
            workers=workers,
            source_options={"max_per_label": per_label, "workers": workers},
            progress=update,
        )
    corpus = result.corpus
    print_corpus_summary(corpus.summary())
    console.print(f"prepared corpus: {corpus.path}  (inspect it again with 'partita data info {corpus.path}')")
    _continuations(corpus, out / "generated", bars)


def _held_out_prompt(corpus, label: str, held_out: set) -> tuple[str, object] | None:
    """A piece of ``label`` that the shipped model never trained on (its card lists its held-out ids)."""
    for i, row in enumerate(corpus.pieces):
        if row["label"] == label and (not held_out or row["id"] in held_out):
            return row["id"], corpus.score(i)
    return None


def _continuations(corpus, out: Path, bars: int) -> None:
    """Continue a Bach chorale opening, a folk tune and a chord progression with the shipped GPT."""
    from partita.bundle import load_bundle
    from partita.errors import PartitaError
    from partita.generate import generate_samples
    from partita.io.midi import save
    from partita.pretrained import bundle_path

    try:
        bundle = load_bundle(bundle_path())
    except PartitaError as e:
        console.print(f"(no generation: {e})")
        return
    held_out = set(bundle.card.get("held_out_ids", []))
    jobs = []
    for label in ("Bach", "Essen"):
        found = _held_out_prompt(corpus, label, held_out)
        if found:
            jobs.append((f"{label.lower()}-continuation", f"first 2 bars of {found[0]}", dict(prompt=found[1], prompt_bars=2, composer=label)))
    jobs.append(("chords-continuation", "chords C G Am F", dict(chords="C G Am F", composer="Bach")))
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"Continuations by the shipped model ({bundle.path.name}), {bars} bars each", title_justify="left")
    for col in ("file", "prompt", "notes", "seconds"):
        table.add_column(col, justify="right" if col in ("notes", "seconds") else "left")
    for name, prompt_text, kwargs in jobs:
        [s] = generate_samples(bundle, n=1, bars=bars, seed=0, temperature=0.9, top_p=0.95, **kwargs)
        if s.ok:
            path = save(s.score, out / f"{name}.mid")
            table.add_row(str(path), prompt_text, str(s.notes), f"{s.seconds:.1f}")
        else:
            table.add_row(f"{name} (no notes)", prompt_text, "0", "0")
    console.print(table)
