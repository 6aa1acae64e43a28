"""Which embedder and index a set of pieces gets: one decision, made once, for every command.

``partita embed``, ``similar``, ``attribute``, ``map``, ``classify``, the web explorer and the demo
all call :func:`choose_index`; they print its ``reason`` in their table title and put
:meth:`IndexChoice.to_dict` in their JSON, so a user always sees which model read the music.

The decision is made from the notes, after folders are expanded (never from a folder's name):
piano music (on average at least ``PIANO_SHARE`` of a piece's pitched notes on piano programs 0-7,
in tracks of keyboard texture: a score that leaves every voice on the default program 0, as a
chorale or a folk tune exported from notation does, is one line a track) gets the piano
index, made by FeatNet from ASAP's performances and scores; anything else gets the bundled
corpus's index (music21's chorales, madrigals, quartets, folk; SiaViT). An explicit index (a
folder or a shipped name) wins over the notes, and is reported as given. A large set is judged on
``SAMPLE`` files spread evenly through it, so choosing costs the same for 300 files as for 20,000.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from partita.errors import PartitaError

__all__ = ["IndexChoice", "PIANO_SHARE", "choose_index", "piano_share", "shipped_model"]

#: Share of pitched notes on piano programs from which a set of pieces counts as piano music.
PIANO_SHARE = 0.8
#: A track of piano-program notes is keyboard music from this many notes sounding at once on
#: average (a single line is 1.0; ASAP's piano pieces 1.6-3.4; POP909's piano tracks about 3).
KEYBOARD_SOUNDING = 1.5
#: At most this many files (evenly spread) are read to decide.
SAMPLE = 64


@dataclass(frozen=True)
class IndexChoice:
    """The index a set of pieces is compared with, the embedder that reads them, and why."""

    index: Optional[Path]  # the index folder (None: ``embed`` into a new index)
    index_name: str  # a shipped index's name (piano-index, bundled-index) or the folder's name
    embedder: str  # the embedder's name (featnet-piano, siavit-small, or the index's own)
    reason: str  # one line: "piano music (93% of notes on piano programs) -> piano-index/featnet-piano"
    piano_share: Optional[float] = None  # share of pitched notes on piano programs (None: not measured)
    given: bool = False  # the user named the index (or model); the notes did not decide

    def to_dict(self) -> dict:
        return {"index": None if self.index is None else str(self.index), "index_name": self.index_name,
                "embedder": self.embedder, "reason": self.reason, "piano_share": self.piano_share, "given": self.given}

    @property
    def label(self) -> str:
        """``index/embedder`` as the tables show it."""
        return f"{self.index_name}/{self.embedder}"


def shipped_model(model: Optional[str | os.PathLike]) -> Optional[Path]:
    """A model option as a bundle folder: an existing path as it is, else the shipped bundle of
    that name (``-m featnet-piano``; typer hands a ``Path``, so the lookup cannot depend on a str)."""
    if model is None:
        return None
    path = Path(model).expanduser()
    if path.exists() or len(path.parts) != 1:
        return path
    from partita import pretrained

    return pretrained.bundle_path(path.name)  # the shipped one, or a one-line error listing them


def _sounding(onset: np.ndarray, end: np.ndarray) -> float:
    """Mean number of notes sounding while any sounds (time-weighted): 1 for a single line."""
    if len(onset) == 0:
        return 0.0
    times = np.concatenate([onset, np.maximum(end, onset + 1e-6)])
    step = np.concatenate([np.ones(len(onset)), -np.ones(len(onset))])
    order = np.lexsort((step, times))
    count = np.cumsum(step[order])[:-1]
    width = np.diff(times[order])
    on = count > 0
    return float((count[on] * width[on]).sum() / max(width[on].sum(), 1e-12))


def _keyboard_share(onset, end, program, track, drum) -> Optional[float]:
    """Share of the pitched notes that are on piano programs in tracks of keyboard texture
    (``KEYBOARD_SOUNDING`` notes or more sounding on average): a score exported with the default
    program 0 for every voice (a chorale, a madrigal, a folk tune) has one line a track, and is not
    piano music for being on program 0. Exactly two piano-program tracks are judged together: a
    solo piece exported from notation keeps each hand on its own staff, and its two lines sound as
    one keyboard part. None: no pitched note."""
    keep = ~drum
    if not keep.any():
        return None
    onset, end, program, track = onset[keep], end[keep], program[keep], track[keep]
    piano = 0
    tracks = [t for t in np.unique(track) if (program[track == t] < 8).all()]
    if len(tracks) == 2:  # a piano's two staves, one hand a track (a solo piece exported from notation)
        m = np.isin(track, tracks)
        if _sounding(onset[m], end[m]) >= KEYBOARD_SOUNDING:
            return int(m.sum()) / len(onset)
    for t in tracks:
        m = track == t
        if _sounding(onset[m], end[m]) >= KEYBOARD_SOUNDING:
            piano += int(m.sum())
    return piano / len(onset)


def _piece_share(item) -> Optional[float]:
    """The keyboard share of one expanded input (None: unreadable or no pitched notes)."""
    kind = item[0]
    if kind == "piece":  # (corpus, i)
        item = ("notes", item[1].notes(item[2]))
    if item[0] == "notes":
        n = item[1]
        names = n.dtype.names or ()
        if "onset" not in names or "duration" not in names:
            return None
        zeros = np.zeros(len(n), np.int64)
        return _keyboard_share(n["onset"].astype(np.float64), (n["onset"] + n["duration"]).astype(np.float64),
                               n["program"] if "program" in names else zeros, n["track"] if "track" in names else zeros,
                               n["is_drum"].astype(bool) if "is_drum" in names else zeros.astype(bool))
    from partita.io import load

    try:
        score = load(item[1])
    except Exception:  # unreadable: the command that reads it for real reports why
        return None
    parts = [(t, t.notes.numpy()) for t in score.tracks if t.note_num() > 0]
    if not parts:
        return None
    onset = np.concatenate([a["time"] for _, a in parts]).astype(np.float64)
    end = onset + np.concatenate([a["duration"] for _, a in parts])
    per = lambda f: np.concatenate([np.full(len(a["time"]), f(i, t)) for i, (t, a) in enumerate(parts)])
    return _keyboard_share(onset, end, per(lambda i, t: t.program), per(lambda i, t: i), per(lambda i, t: t.is_drum).astype(bool))


def _items(pieces_or_paths) -> list:
    """Files, corpus pieces and note arrays of the inputs, folders expanded (as embed does)."""
    from partita.search.index import MIDI_SUFFIXES, is_corpus

    out: list = []
    for raw in pieces_or_paths:
        if isinstance(raw, np.ndarray):
            out.append(("notes", raw))
            continue
        p = Path(raw).expanduser()
        if is_corpus(p):
            from partita.data.corpus import Corpus

            corpus = Corpus(p)
            out.extend(("piece", corpus, i) for i in range(len(corpus)))
        elif p.is_dir():
            out.extend(("file", f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in MIDI_SUFFIXES)
        else:
            out.append(("file", p))
    return out


def piano_share(pieces_or_paths, sample: int = SAMPLE) -> tuple[Optional[float], int]:
    """(share of pitched notes on piano programs in keyboard-texture tracks, pieces read): each piece's share, averaged
    with the same weight per piece (a long piano performance does not outvote a band song), over
    up to ``sample`` inputs spread evenly; None when no input had a pitched note."""
    items = _items(pieces_or_paths)
    if len(items) > sample:
        items = [items[int(j)] for j in np.linspace(0, len(items) - 1, sample).round().astype(int)]
    shares = [x for x in map(_piece_share, items) if x is not None]
    return (float(np.mean(shares)) if shares else None), len(shares)


def _named_index(index: str | os.PathLike) -> tuple[Path, str]:
    from partita.search.index import SHIPPED_INDEXES, shipped_index

    path = Path(index).expanduser()
    names = {**SHIPPED_INDEXES, **{v: v for v in SHIPPED_INDEXES.values()}}
    if not path.exists() and str(index) in names:
        path = shipped_index(str(index))
        return path, path.name
    return path, path.name


def _index_embedder(path: Path) -> str:
    from partita.search.index import META_FILE, read_json

    if (path / META_FILE).is_file():
        return str((read_json(path / META_FILE, "index metadata").get("model") or {}).get("name") or "its own embedder")
    return "its own embedder"


def choose_index(pieces_or_paths: Sequence = (), index: Optional[str | os.PathLike] = None, *,
                 model: Optional[str | os.PathLike] = None, new_index: bool = False) -> IndexChoice:
    """The index and embedder for ``pieces_or_paths`` (MIDI files, folders of them, prepared
    corpora, note arrays), decided from their notes (module doc).

    ``index``: a folder or a shipped index's name (piano, bundled, piano-index, bundled-index):
    used as given. ``new_index=True`` (``partita embed`` into a folder that is not an index yet):
    only the embedder is chosen (``model`` if given, else featnet-piano for piano music,
    siavit-small otherwise), and ``index`` is where it goes.
    """
    from partita import pretrained

    if index is not None and not new_index:
        path, name = _named_index(index)
        embedder = Path(model).name if model is not None else _index_embedder(path)
        return IndexChoice(path, name, embedder, f"given: --index {index} -> {name}/{embedder}", given=True)
    if model is not None and new_index:
        name = Path(index).name if index is not None else "new index"
        return IndexChoice(None if index is None else Path(index), name, Path(model).name,
                           f"given: --model {model} -> {name}/{Path(model).name}", given=True)
    if model is not None and not new_index:  # the shipped index this embedder made, if one did
        from partita.search.index import SHIPPED_INDEXES, fingerprint, shipped_index

        mine = fingerprint(shipped_model(model))
        for short in SHIPPED_INDEXES:
            path = shipped_index(short)
            from partita.search.index import META_FILE, read_json

            if (read_json(path / META_FILE, "index metadata").get("model") or {}).get("fingerprint") == mine:
                name = Path(model).name
                return IndexChoice(path, path.name, name, f"given: --model {model} -> {path.name}/{name}", given=True)
    share, read = piano_share(pieces_or_paths) if len(pieces_or_paths) else (None, 0)
    piano = share is not None and share >= PIANO_SHARE
    if new_index:
        embedder = pretrained.FEATNET if piano else pretrained.SIAVIT
        path = None if index is None else Path(index)
        name = path.name if path is not None else "new index"
    else:
        from partita.search.index import shipped_index

        path = shipped_index("piano" if piano else "bundled")
        name = path.name
        embedder = Path(model).name if model is not None else _index_embedder(path)
    if share is None:
        what = "no pieces with pitched notes to judge"
    else:
        what = f"{'piano music' if piano else 'not piano music'} ({share:.0%} of notes in keyboard parts on piano programs"
        what += f", mean of {read} pieces)" if read > 1 else ")"
    return IndexChoice(path, name, embedder, f"{what} -> {name}/{embedder}", piano_share=None if share is None else round(share, 4))
