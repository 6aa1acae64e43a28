"""Where pieces come from: user folders in known layouts, and the bundled music21 corpus."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from partita.data.piece import Piece
from partita.data.sources.asap import KINDS, is_asap, scan_asap
from partita.data.sources.folders import (
    FORMATS,
    LABELS_FROM,
    detect,
    midi_files,
    parse_giantmidi_name,
    scan_folder,
    scan_giantmidi,
    scan_lakh,
    scan_maestro,
)
from partita.errors import PartitaError


def scan(
    source: str | Path,
    format: str | None = None,
    *,
    labels_csv: str | Path | None = None,
    composite: str = "keep",
    kind: str = "both",
    labels_from: str = "auto",
    notes: list[str] | None = None,
    max_per_label: int | None = None,
    full: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, list[Piece]]:
    """List the pieces of ``source``: a folder (layout detected unless ``format`` is given) or the
    word ``"bundled"``. Returns the format used and the pieces, sorted by id.

    ``kind``: for sources with several renditions of a work (ASAP), list its ``"performances"``,
    ``"scores"`` or ``"both"``.

    ``labels_from``: where a plain folder's labels come from (``scan_folder``); ``"none"`` drops
    the labels of any format. What was decided for the user is appended to ``notes``."""
    if kind not in KINDS:
        raise PartitaError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if str(source) == "bundled" or format == "bundled":
        from partita.data.sources.bundled import DEFAULT_MAX_PER_LABEL, export_bundled

        export = export_bundled(
            max_per_label=max_per_label or DEFAULT_MAX_PER_LABEL, full=full, workers=workers, progress=progress
        )
        return "bundled", sorted(export.pieces, key=lambda p: p.id)
    root = Path(source).expanduser()
    if format is not None and format not in FORMATS:
        raise PartitaError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = format or detect(root)
    if kind != "both" and fmt != "asap":
        raise PartitaError(f"--kind {kind} needs a source with performances and scores (asap), not a {fmt} folder")
    if labels_from not in LABELS_FROM:
        raise PartitaError(f"--labels-from must be one of {', '.join(LABELS_FROM)}, not {labels_from!r}")
    if fmt != "folder" and labels_from not in ("auto", "none"):
        raise PartitaError(f"--labels-from {labels_from} reads plain folders; a {fmt} source has its own labels (or use none)")
    if fmt == "folder":
        pieces = scan_folder(root, Path(labels_csv) if labels_csv else None, labels_from=labels_from, notes=notes)
    elif fmt == "giantmidi":
        pieces = scan_giantmidi(root)
    elif fmt == "maestro":
        pieces = scan_maestro(root, composite=composite)
    elif fmt == "asap":
        pieces = scan_asap(root, kind=kind)
    else:
        pieces = scan_lakh(root)
    if not pieces:
        raise PartitaError(f"{root}: no MIDI files found (looked for .mid/.midi/.kar/.rmi at any depth)")
    if labels_from == "none" and fmt != "folder":
        pieces = [dataclasses.replace(p, label=None) for p in pieces]
    ids = [p.id for p in pieces]
    if len(set(ids)) != len(ids):
        raise PartitaError(f"{root}: the same file is listed twice (check the labels CSV)")
    return fmt, sorted(pieces, key=lambda p: p.id)


__all__ = [
    "FORMATS",
    "LABELS_FROM",
    "KINDS",
    "Piece",
    "detect",
    "is_asap",
    "midi_files",
    "parse_giantmidi_name",
    "scan",
    "scan_asap",
    "scan_folder",
    "scan_giantmidi",
    "scan_lakh",
    "scan_maestro",
]
