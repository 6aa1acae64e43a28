"""``partita demo``: what partita does, with the shipped models, on held-out pieces; a report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, progress_bar


def demo(
    out: Path = typer.Option(Path("partita-demo"), "--out", "-o", help="Folder for the demo's outputs and report."),
    fast: bool = typer.Option(False, "--fast", help="A quick pass: 2 pieces per label, short samples."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores)."),
    bars: int = typer.Option(8, "--bars", help="Bars generated after each prompt."),
    asap: Optional[Path] = typer.Option(None, "--asap", help="An ASAP folder: also attribute performances of held-out works and find their scores."),
    pop: Optional[Path] = typer.Option(None, "--pop", help="A POP909 folder: also accompany a held-out song's melody."),
) -> None:
    """Attribute held-out pieces, generate, interpolate, measure, and write OUT/index.html."""
    from contextlib import ExitStack

    from partita.demo import music_file, run_demo

    with ExitStack() as stack:
        def progress(desc):  # one bar at a time: a new step closes the previous step's bar
            stack.close()
            return stack.enter_context(progress_bar(desc))

        res = run_demo(out, fast=fast, bars=bars, workers=workers, asap=asap, pop=pop, progress=progress)

    a = res.attribution
    if a:
        table = Table(title=f"Attribution of {a['pieces']} held-out pieces (shipped embedder + index)", title_justify="left")
        for col in ("top-1", "top-1, forced", "top-3", "chance", "majority label", "said unknown"):
            table.add_column(col, justify="right")
        table.add_row(f"{a['top1']:.1%}", f"{a['top1_known']:.1%}", f"{a['top3']:.1%}", f"{a['chance']:.1%}",
                      f"{a['majority']:.1%}", str(a["unknown"]))
        console.print(table)
    p = res.piano
    if p:
        table = Table(title="Piano music never seen by the piano models (shipped piano index)", title_justify="left")
        for col in ("piece", "attributed to", "top 3"):
            table.add_column(col)
        for t in p["transcriptions"]:
            table.add_row(t["piece"], t["verdict"], t["top3"])
        for r in p["renditions"]:
            table.add_row(r["performance"], r["verdict"], f"its score ranked {r['rank_of_its_score']} of {r['scores']}")
        console.print(table)
    if res.music:
        table = Table(title="Music written (MIDI)", title_justify="left")
        table.add_column("file")
        table.add_column("what")
        for m in res.music:
            table.add_row(str(music_file(out, m)), m.caption)
        console.print(table)
    if res.metrics:
        f = res.metrics["features"]
        oa = [v["oa_gen"] for v in f.values() if v.get("oa_gen") is not None]
        console.print(f"metrics: generated vs real, mean overlap area {sum(oa) / len(oa):.2f} over {len(oa)} features "
                      f"({out / 'metrics.json'})")
    for step, why in res.problems:
        console.print(f"[yellow]{step} skipped[/yellow]: {why}")
    console.print(f"report: {res.report}  (open it in a browser; {res.seconds:.0f} s)")
