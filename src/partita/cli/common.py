"""What every command shares: consoles, progress bars, summary tables, JSON output."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# soft_wrap: a long message stays one line (errors must be one line, whatever the terminal width).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def progress_bar(description: str, unit: str | None = None):
    """Yields a ``callback(done, total)`` that drives a Rich progress bar (with ``unit``: a count
    of that unit and its rate per second, e.g. tokens/s).

    The bar appears at the first call, so an error found before any work starts (a missing
    folder, say) is printed alone. It redraws from the calls (at most 10 times a second), not
    from a refresh thread, so the worker pool never forks while another thread holds a lock.
    """
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            if unit:
                counts = [TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"), TextColumn("{task.fields[rate]}")]
            else:
                counts = [MofNCompleteColumn()]
            bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                *counts,
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                auto_refresh=False,
            )
            bar.start()
            state.update(bar=bar, task=bar.add_task(description, total=total, rate=""), t0=time.perf_counter())
        rate = f"{done / max(time.perf_counter() - state['t0'], 1e-9):,.0f} {unit}/s" if unit else ""
        now = time.perf_counter()
        redraw = done >= total or now - state.get("drawn", 0.0) >= 0.1
        state["bar"].update(state["task"], completed=done, total=max(total, 1), rate=rate, refresh=redraw)
        if redraw:
            state["drawn"] = now

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()


def print_corpus_summary(summary: dict) -> None:
    head = Table(title=f"Corpus {summary['path']}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_row("source", f"{summary['source']} ({summary['format']})")
    head.add_row("pieces ok", f"{summary['ok']:,}")
    head.add_row("pieces bad", f"{summary['bad']:,}")
    for reason, n in summary["bad_by_reason"].items():
        head.add_row(f"  bad: {reason}", f"{n:,}")
    head.add_row("hours of music", f"{summary['hours']:.2f}")
    head.add_row("notes", f"{summary['notes']:,}")
    head.add_row("splits", ", ".join(f"{k} {v:,}" for k, v in summary["per_split"].items()))
    labels = summary.get("labels") or {}
    if labels.get("only"):
        head.add_row("labels kept", f"{', '.join(labels['only'])} ({labels['left_out']:,} files of other labels not read)")
    excluded = summary.get("excluded_labels") or {}
    if excluded:
        shown = ", ".join(f"{k} ({v})" for k, v in list(excluded.items())[:8]) + (", ..." if len(excluded) > 8 else "")
        head.add_row(f"labels left out (< {labels.get('min_pieces')} pieces)", f"{len(excluded):,}: {shown}")
    console.print(head)
    for note in labels.get("notes") or []:
        console.print(f"labels: {note}", markup=False, highlight=False)
    labels = Table(title="Pieces per label", title_justify="left")
    labels.add_column("label")
    labels.add_column("pieces", justify="right")
    for label, n in summary["per_label"].items():
        labels.add_row(label, f"{n:,}")
    console.print(labels)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False))
        console.print(f"wrote {path}")
