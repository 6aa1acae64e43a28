"""ASAP (Aligned Scores and Performances): piano performances and the score of each work.

Layout: ``Composer/Work.../Performer.mid`` and ``Composer/Work.../midi_score.mid`` with a
``metadata.csv`` at the top that has one row per performance: ``composer``, ``title``, ``folder``
(the work), ``midi_performance`` and ``midi_score`` (paths relative to the top folder).

Every piece is labelled with its composer and grouped by its work (``folder``), so the
performances and the score of one work always land in the same split (``partita.data.splits``
keeps a group whole). ``kind`` says what a file is: ``"performance"`` (a pianist playing, with
expressive timing and dynamics) or ``"score"`` (the work as written, quantised, flat velocities);
a work's score is listed once however many performances it has.
"""

from __future__ import annotations

import csv
from pathlib import Path

from partita.data.piece import Piece
from partita.errors import PartitaError

METADATA = "metadata.csv"
NEED = ("composer", "folder", "midi_performance", "midi_score")
KINDS = ("performances", "scores", "both")
SOURCE = "asap"


def _columns(csv_path: Path) -> list[str]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError):
        return []


def is_asap(root: Path) -> bool:
    """Whether ``root`` has an ASAP ``metadata.csv`` (its ``folder``, ``midi_performance`` and
    ``midi_score`` columns)."""
    csv_path = Path(root) / METADATA
    return csv_path.is_file() and {"folder", "midi_performance", "midi_score"} <= set(_columns(csv_path))


def scan_asap(root: Path, kind: str = "both") -> list[Piece]:
    """The performances and/or scores listed in ``root/metadata.csv`` (module doc).

    ``kind``: ``"performances"``, ``"scores"`` or ``"both"``. Listed files that do not exist are
    kept: prepare reports them as missing, so a damaged copy of the data set is visible.
    """
    from partita.data.sources.folders import _require_dir

    root = _require_dir(root)
    if kind not in KINDS:
        raise PartitaError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    csv_path = root / METADATA
    if not csv_path.is_file():
        raise PartitaError(f"{root}: no {METADATA} here; give the ASAP folder that holds it")
    pieces: dict[str, Piece] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NEED if c not in (reader.fieldnames or [])]
        if missing:
            raise PartitaError(f"{csv_path}: missing column(s) {', '.join(missing)}")
        for n, row in enumerate(reader, 2):
            composer = (row["composer"] or "").strip() or None
            work = (row["folder"] or "").strip().strip("/")
            if not work:
                raise PartitaError(f"{csv_path}:{n}: empty 'folder' (every row needs its work's folder)")
            title = (row.get("title") or "").strip().replace("_", " ") or work
            wanted = []
            if kind in ("performances", "both") and (row["midi_performance"] or "").strip():
                wanted.append((row["midi_performance"].strip(), "performance"))
            if kind in ("scores", "both") and (row["midi_score"] or "").strip():
                wanted.append((row["midi_score"].strip(), "score"))
            for rel, what in wanted:
                if rel not in pieces:  # a score is named on every row of its work: list it once
                    pieces[rel] = Piece(
                        id=rel, path=str(root / rel), label=composer, title=title, source=SOURCE, group=work, kind=what
                    )
    return list(pieces.values())


__all__ = ["KINDS", "is_asap", "scan_asap"]
