"""``partita demo``: what partita does, on the bundled corpus, in a few minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, print_corpus_summary, progress_bar


def demo(
    out: Path = typer.Option(Path("partita-demo"), "--out", "-o", help="Folder for the demo's outputs."),
    max_per_label: Optional[int] = typer.Option(None, "--max-per-label", help="Pieces per label of the bundled corpus."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores)."),
) -> None:
    """Build the bundled corpus (music21's corpus as labelled MIDI), prepare it, and summarise it."""
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
    print_corpus_summary(result.corpus.summary())
    console.print(f"prepared corpus: {result.corpus.path}  (inspect it again with 'partita data info {result.corpus.path}')")
