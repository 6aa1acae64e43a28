"""The unit every corpus source yields."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Piece:
    """One MIDI file of a corpus.

    ``id`` is unique within the corpus and stable across runs (the path relative to the corpus
    root, with '/' separators). ``label`` is what models learn to name: composer, artist or
    collection; ``None`` when the source has none. ``split`` is the source's own split
    ("train"/"valid"/"test") when it has one, else ``None`` and partita assigns one.
    ``group`` ties together versions of one work (performances, arrangements) so that a split
    never puts them on both sides; ``None`` means "derive it from label and title".
    ``kind`` tells renditions of a work apart where a source has several (ASAP: "performance" or
    "score"); ``None`` where the source does not say.
    """

    id: str
    path: str
    label: str | None = None
    title: str | None = None
    source: str = "folder"
    split: str | None = None
    group: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
