"""``partita infill``: regenerate a span of bars of a MIDI file (thin over ``partita.generation.infill``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, err_console, progress_bar, write_json
from partita.cli.sampling import sampling_options
from partita.errors import PartitaError


@sampling_options(exclude=("bars", "seconds", "max_new_tokens", "allow_early_end", "max_pause"),
                  defaults={"programs": "auto: the file's", "threads": "chosen while decoding; the same notes either way"})
def infill(
    file: Path = typer.Argument(..., help="The MIDI file to fill."),
    bars: Optional[str] = typer.Option(None, "--bars", help="Bars to regenerate, 1-based and inclusive: --bars 9-12."),
    seconds: Optional[str] = typer.Option(None, "--seconds", help="Or a time range: --seconds 20-30 regenerates the bars it touches."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A GPT bundle trained with --fim (default: gpt-piano)."),
    n: int = typer.Option(1, "-n", "--num-samples", help="How many versions to write."),
    candidates: int = typer.Option(1, "--candidates", "-k", help="Sample K middles per version and keep the one after which the model finds the music after the span most likely."),
    out: Path = typer.Option(Path("infilled"), "--out", "-o", help="Folder for FILE-infill-000.mid, ..."),
    composer: Optional[str] = typer.Option(None, "--composer", "-c", help="A label of the model's card (any letter case)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda..."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    sampling: dict = None,
) -> None:
    """Regenerate bars of a MIDI file given the music before and after them (fill-in-the-middle);
    every note outside the span is kept as it was."""
    from partita.generation.infill import infill as run_infill
    from partita.io.midi import save

    if out.exists() and not out.is_dir():
        raise PartitaError(f"{out}: exists and is not a folder (choose another --out)")
    with progress_bar("infilling", unit="tokens") as update:
        results = run_infill(None if model is None else str(model), str(file), bars=bars, seconds=seconds, n=n,
                             candidates=candidates, composer=composer, device=device, progress=update, **sampling)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        path = None
        if r.notes_added:  # a span the model left empty is reported, not written as a file with a hole
            path = save(r.score, out / f"{file.stem}-infill-{r.index:03d}.mid")
        rows.append({"file": None if path is None else str(path), "bars": list(r.bars), "ticks": list(r.ticks),
                     "tokens": int(len(r.middle)), "notes_removed": r.notes_removed, "notes_added": r.notes_added,
                     "new_notes": r.notes_added, "stop": r.stop, "candidates": r.candidates, "suffix_bits": r.suffix_bits,
                     "error": None if r.notes_added else "no new notes: the model wrote no note in the span, nothing saved"})
        if path is None:
            err_console.print(f"version {r.index}: bars {r.bars[0]}-{r.bars[1]}: the model wrote no note in the span "
                              f"({r.notes_removed} notes there in the file); nothing saved", markup=False, highlight=False)
            continue
        console.print(f"{path}: bars {r.bars[0]}-{r.bars[1]} regenerated ({r.notes_removed} notes of the span replaced by "
                      f"{r.notes_added} new notes, {len(r.middle)} tokens)", markup=False, highlight=False)
    write_json(json_path, {"file": str(file), "model": None if model is None else str(model), "samples": rows})
