"""A prepared corpus: a Parquet table of pieces plus a compact note store.

Folder layout::

    corpus.json      what was prepared, from where, with which options (written last)
    pieces.parquet   one row per file: id, path, label, title, source, group, split, status,
                     reason, message, tpq, duration (s), n_notes, n_tempos, n_timesigs, n_tracks,
                     kind (a work's rendition where the source says: "performance" or "score"),
                     content (a hash of the notes: equal for duplicates, which splits keep together),
                     track_names (JSON {track index: name} of the file's named tracks, or null)
    notes.npy        every note of every good piece, piece after piece (STORE_NOTE_DTYPE, 14 B)
    tempos.npy       tempo changes, piece after piece (tick, microseconds per quarter)
    timesigs.npy     time signatures, piece after piece

The arrays are memory-mapped, so opening a corpus of millions of notes is instant, and every
representation (pianoroll, tokens, melodies, features) is computed from them without reading
MIDI again: ``notes(i)`` gives a note array in seconds, beats or ticks, ``score(i)`` a
symusic ``Score``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from symusic import Note, Score, Tempo, TimeSignature, Track

from partita.data.splits import assign_splits
from partita.errors import PartitaError
from partita.io.midi import NOTE_DTYPE, preprocess

CORPUS_VERSION = 1
EXCLUDED = "excluded"  # status of a usable piece left out by a filter (--min-pieces)

STORE_NOTE_DTYPE = np.dtype(
    [
        ("tick", "<i4"),
        ("ticks", "<i4"),  # duration in ticks
        ("pitch", "u1"),
        ("velocity", "u1"),
        ("program", "u1"),
        ("is_drum", "?"),
        ("track", "<u2"),
    ]
)
TEMPO_DTYPE = np.dtype([("tick", "<i4"), ("mspq", "<i4")])
TIMESIG_DTYPE = np.dtype([("tick", "<i4"), ("numerator", "u1"), ("denominator", "u1")])


def _i32(a) -> np.ndarray:
    # symusic wants writable, C-contiguous int32 buffers; memory-mapped slices are neither.
    return np.array(a, dtype=np.int32)


def _offsets(counts) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def ticks_to_seconds(ticks: np.ndarray, tempos: np.ndarray, tpq: int) -> np.ndarray:
    """Seconds at each tick under a tempo map (``TEMPO_DTYPE`` rows; ``partita.io.timing``)."""
    from partita.io.timing import ticks_to_seconds as convert

    return convert(ticks, tempos["tick"], tempos["mspq"], tpq)


class Corpus:
    """A prepared corpus folder. Indexing is over its good pieces (``status == "ok"``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        meta = self.path / "corpus.json"
        if not meta.exists():
            raise PartitaError(f"{self.path}: not a prepared corpus (no corpus.json); run 'partita data prepare' first")
        self.config = json.loads(meta.read_text())
        if self.config.get("version") != CORPUS_VERSION:
            raise PartitaError(f"{self.path}: corpus format {self.config.get('version')} is not {CORPUS_VERSION}; prepare it again")
        # ParquetFile.read, unlike pq.read_table, does not import pyarrow.dataset (~0.1 s).
        self.table = pq.ParquetFile(self.path / "pieces.parquet").read()
        self.rows: list[dict] = self.table.to_pylist()
        # Memory-mapped, viewed as plain arrays: slicing an np.memmap costs ~10x a plain slice.
        self.note_store = self._open("notes.npy")
        self.tempo_store = self._open("tempos.npy")
        self.timesig_store = self._open("timesigs.npy")
        self._note_off = _offsets([r["n_notes"] for r in self.rows])
        self._tempo_off = _offsets([r["n_tempos"] for r in self.rows])
        self._ts_off = _offsets([r["n_timesigs"] for r in self.rows])
        self._good = [j for j, r in enumerate(self.rows) if r["status"] == "ok"]
        self.pieces: list[dict] = [self.rows[j] for j in self._good]

    def _open(self, name: str) -> np.ndarray:
        return np.load(self.path / name, mmap_mode="r", allow_pickle=False).view(np.ndarray)

    def __len__(self) -> int:
        return len(self._good)

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, pieces={len(self)})"

    def indices(self, split: str | None = None, label: str | None = None) -> list[int]:
        """Positions of the good pieces in ``split`` and/or with ``label``."""
        return [
            i
            for i, r in enumerate(self.pieces)
            if (split is None or r["split"] == split) and (label is None or r["label"] == label)
        ]

    @property
    def labels(self) -> list[str]:
        return sorted({r["label"] for r in self.pieces if r["label"] is not None})

    def _slices(self, i: int):
        j = self._good[i]
        return (
            self.note_store[self._note_off[j] : self._note_off[j + 1]],
            self.tempo_store[self._tempo_off[j] : self._tempo_off[j + 1]],
            self.timesig_store[self._ts_off[j] : self._ts_off[j + 1]],
            self.rows[j]["tpq"],
        )

    def notes(self, i: int, unit: str = "second", *, drums: bool = True) -> np.ndarray:
        """Piece ``i``'s notes as a ``NOTE_DTYPE`` array (seconds, beats or ticks), onset order."""
        stored, tempos, _, tpq = self._slices(i)
        if not drums:
            stored = stored[~stored["is_drum"]]
        out = np.empty(len(stored), NOTE_DTYPE)
        if unit == "second":
            start = stored["tick"].astype(np.int64)
            both = ticks_to_seconds(np.concatenate([start, start + stored["ticks"]]), tempos, tpq)
            out["onset"] = both[: len(start)]
            out["duration"] = both[len(start) :] - out["onset"]
        elif unit == "beat":
            out["onset"] = stored["tick"] / tpq
            out["duration"] = stored["ticks"] / tpq
        elif unit == "tick":
            out["onset"] = stored["tick"]
            out["duration"] = stored["ticks"]
        else:
            raise ValueError(f"unit must be 'second', 'beat' or 'tick', not {unit!r}")
        for name in ("pitch", "velocity", "program", "is_drum", "track"):
            out[name] = stored[name]
        return out

    def score(self, i: int, *, drums: bool = True, merge: bool = False) -> Score:
        """Piece ``i`` as a symusic ``Score`` in ticks: one track per source track with notes
        (empty tracks, key signatures and controllers are not kept; tracks keep their names where
        the corpus has them, ``track_names``)."""
        stored, tempos, timesigs, tpq = self._slices(i)
        score = Score(int(tpq))
        names = self.track_names(i)
        for k in np.unique(stored["track"]):
            sel = stored[stored["track"] == k]
            track = Track(names.get(int(k), ""), int(sel["program"][0]), bool(sel["is_drum"][0]))
            track.notes = Note.from_numpy(
                time=_i32(sel["tick"]),
                duration=_i32(sel["ticks"]),
                pitch=sel["pitch"].astype(np.int8),
                velocity=sel["velocity"].astype(np.int8),
            )
            score.tracks.append(track)
        if len(tempos):
            score.tempos = Tempo.from_numpy(time=_i32(tempos["tick"]), mspq=_i32(tempos["mspq"]))
        if len(timesigs):
            score.time_signatures = TimeSignature.from_numpy(
                time=_i32(timesigs["tick"]),
                numerator=np.array(timesigs["numerator"], dtype=np.uint8),
                denominator=np.array(timesigs["denominator"], dtype=np.uint8),
            )
        return preprocess(score, drums=drums, merge=merge)

    def track_names(self, i: int) -> dict[int, str]:
        """The source file's names of piece ``i``'s tracks (``{track index: name}``, as the
        note store's ``track`` field numbers them); empty for unnamed tracks and for corpora
        prepared before names were kept."""
        text = self.pieces[i].get("track_names")
        if not text:
            return {}
        return {int(k): str(v) for k, v in json.loads(text).items()}

    def score_ref(self, i: int, *, drums: bool = True, merge: bool = False) -> "ScoreRef":
        """A small picklable stand-in for ``score(i)``, built where it is called (in a worker
        process, say, which then opens the corpus once and reads the piece from the note store)."""
        j = self._good[i]  # IndexError here, not in a worker
        return ScoreRef(str(self.path.resolve()), i, self.rows[j]["id"], drums, merge)

    def summary(self) -> dict:
        """Counts a person wants after prepare: good/bad by reason, hours, notes, labels, splits."""
        good = self.pieces
        bad = [r for r in self.rows if r["status"] not in ("ok", EXCLUDED)]
        return {
            "path": str(self.path),
            "source": self.config.get("source"),
            "format": self.config.get("format"),
            "pieces": len(self.rows),
            "ok": len(good),
            "bad": len(bad),
            "bad_by_reason": dict(sorted(Counter(r["reason"] for r in bad).items())),
            # labels dropped by --min-pieces, with their usable pieces; how labels were read
            "excluded_labels": dict(sorted(Counter(r["label"] for r in self.rows if r["status"] == EXCLUDED).items())),
            "labels": self.config.get("labels", {}),
            "hours": sum(r["duration"] for r in good) / 3600,
            "notes": int(sum(r["n_notes"] for r in good)),
            "per_label": dict(sorted(Counter(r["label"] or "(none)" for r in good).items())),
            "per_split": dict(sorted(Counter(r["split"] for r in good).items())),
            "bad_files": [{"id": r["id"], "reason": r["reason"], "message": r["message"]} for r in bad],
        }


@dataclass(frozen=True)
class ScoreRef:
    """``Corpus(path).score(i)``, deferred: calling it opens the corpus (once per process) and
    builds the score. ``piece_id`` guards against a corpus prepared again in between."""

    path: str
    i: int
    piece_id: str
    drums: bool = True
    merge: bool = False

    def __call__(self) -> Score:
        key = (self.path, os.stat(Path(self.path) / "corpus.json").st_mtime_ns)  # a corpus written again is opened again
        corpus = _OPENED.get(key)
        if corpus is None:
            corpus = _OPENED[key] = Corpus(self.path)
        if self.i >= len(corpus) or corpus.pieces[self.i]["id"] != self.piece_id:
            raise PartitaError(f"{self.path}: piece {self.i} is no longer {self.piece_id!r} (corpus prepared again?)")
        return corpus.score(self.i, drums=self.drums, merge=self.merge)


_OPENED: dict[tuple, Corpus] = {}  # corpora opened by ScoreRef in this process


def exclude_small_labels(rows: list[dict], min_pieces: int) -> list[dict]:
    """Mark the usable pieces of labels with fewer than ``min_pieces`` of them ``excluded``
    (their notes stay in the store, so a resumed or merged corpus counts them again); unlabelled
    pieces are kept. Rows excluded earlier are counted afresh."""
    rows = [{**r, "status": "ok", "reason": None, "message": None} if r["status"] == EXCLUDED else r for r in rows]
    counts = Counter(r["label"] for r in rows if r["status"] == "ok" and r["label"] is not None)
    small = {lab for lab, n in counts.items() if n < min_pieces}
    return [
        {**r, "status": EXCLUDED, "reason": "few_pieces", "message": f"label {r['label']!r} has {counts[r['label']]} usable pieces, under --min-pieces {min_pieces}"}
        if r["status"] == "ok" and r["label"] in small
        else r
        for r in rows
    ]


def write_corpus(out: Path, rows: list, notes: list, tempos: list, timesigs: list, *, config: dict) -> None:
    """Write a corpus folder from rows (sorted by id) and their arrays; splits assigned here."""
    split_cfg = config["split"]
    # Rows from a finished corpus (resume, merge) carry the source's split in "source_split" and
    # an assigned one in "split"; rows fresh from a source carry the source's split in "split".
    rows = [{**r, "split": r["source_split"]} if "source_split" in r else {**r, "source_split": r.get("split")} for r in rows]
    rows = exclude_small_labels(rows, config.get("labels", {}).get("min_pieces") or 0)
    good = [r for r in rows if r["status"] == "ok"]
    splits = assign_splits(
        good,
        seed=split_cfg["seed"],
        valid=split_cfg["valid"],
        test=split_cfg["test"],
        mode=split_cfg["mode"],
        unseen=split_cfg["unseen"],
    )
    by_id = {r["id"]: s for r, s in zip(good, splits)}
    fixed = []
    for r in rows:
        fixed.append({**r, "split": by_id.get(r["id"])})

    def tmp(name: str) -> Path:
        return out / f".{name}.tmp"

    for name, arrays, dtype in (
        ("notes.npy", notes, STORE_NOTE_DTYPE),
        ("tempos.npy", tempos, TEMPO_DTYPE),
        ("timesigs.npy", timesigs, TIMESIG_DTYPE),
    ):
        with open(tmp(name), "wb") as f:
            np.save(f, np.concatenate(arrays) if arrays else np.zeros(0, dtype))
    pq.write_table(pa.Table.from_pylist(fixed, schema=_schema()), tmp("pieces.parquet"))
    (out / "corpus.json").unlink(missing_ok=True)  # the corpus is incomplete from here ...
    for name in ("notes.npy", "tempos.npy", "timesigs.npy", "pieces.parquet"):
        os.replace(tmp(name), out / name)
    tmp_json = tmp("corpus.json")
    tmp_json.write_text(json.dumps(config, indent=2))
    os.replace(tmp_json, out / "corpus.json")  # ... to here


def _schema() -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("path", pa.string()),
            ("label", pa.string()),
            ("title", pa.string()),
            ("source", pa.string()),
            ("split", pa.string()),
            ("group", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("message", pa.string()),
            ("tpq", pa.int32()),
            ("duration", pa.float64()),
            ("n_notes", pa.int64()),
            ("n_tempos", pa.int64()),
            ("n_timesigs", pa.int64()),
            ("n_tracks", pa.int32()),
            ("source_split", pa.string()),
            ("kind", pa.string()),
            ("content", pa.string()),
            ("track_names", pa.string()),
        ]
    )
