"""``partita serve``: the local web explorer (thin over ``partita.serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, err_console
from partita.errors import PartitaError


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, "--port", "-p", help="Port (0: any free one; the address is printed)."),
    index: Optional[str] = typer.Option(None, "--index", "-i", help="Index folder, or a shipped one: piano, bundled (default: piano for piano files, else bundled)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="GPT bundle for continuations (default: gpt-piano for piano files, else gpt-small)."),
    pieces: Optional[list[Path]] = typer.Option(None, "--pieces", help="Folder holding the index's MIDI files under their ids (an ASAP folder for the piano index), so similar pieces can be played; repeat."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest upload accepted (larger: HTTP 413)."),
    workers: int = typer.Option(2, "--workers", help="Generation jobs run at once (attribution, similar pieces and the map have their own 2 threads)."),
    queue: int = typer.Option(16, "--queue", help="Calls each queue (quick calls, generation) holds at most, running and waiting; more: HTTP 503 with Retry-After."),
    keep: int = typer.Option(256, "--keep", help="Pieces kept (uploads and continuations; the oldest go first)."),
    audio_seconds: float = typer.Option(90.0, "--audio-seconds", help="Seconds of audio rendered per piece (0: all)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="PARTITA_SERVE_TOKEN",
                                        help="A secret every request must carry (needed with a --host other than this machine's loopback; the printed address logs a browser in)."),
) -> None:
    """Start the web explorer: drop a MIDI file in the page to see it, hear it, attribute it, find
    similar pieces, see it on the corpus map and continue it. Ctrl-C stops it."""
    from partita.serve import run

    if not 0 <= port <= 65535:
        raise PartitaError(f"--port must be 0 to 65535, not {port}")
    if max_upload_mb <= 0:
        raise PartitaError(f"--max-upload-mb must be positive, not {max_upload_mb}")
    if workers < 1 or queue < 1 or keep < 1:
        raise PartitaError("--workers, --queue and --keep must be at least 1")
    if host not in ("127.0.0.1", "localhost", "::1"):
        if not token:
            raise PartitaError(f"--host {host} lets other machines reach the explorer: give it --token SECRET too "
                               "(every request must then carry it)")
        err_console.print(f"warning: listening on {host}: other machines can reach the explorer; only requests "
                          "with the token are answered, over plain HTTP (use it on a network you trust)",
                          markup=False, highlight=False)

    def announce(url: str) -> None:
        console.print(f"partita explorer on {url}  (API: {url}api; Ctrl-C stops it)", markup=False, highlight=False)

    try:
        run(host, port, announce=announce, index=index, model=model, pieces=[str(p) for p in pieces] if pieces else None,
            max_upload_mb=max_upload_mb, workers=workers, queue=queue, keep=keep, audio_seconds=audio_seconds, token=token)
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C back once it has shut down: that is the normal way out
        pass
    console.print("stopped", markup=False, highlight=False)
