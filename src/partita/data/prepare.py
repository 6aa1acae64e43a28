"""``partita data prepare``: read a corpus of MIDI files once, in parallel, into a prepared corpus.

The work is organised so that nothing is ever lost or done twice:

- Worker processes (the pool of ``partita.data.pool``) each read one file; an exception marks
  that file bad with its reason, and a worker that dies (a crash in a C library, the OOM killer)
  marks the file it held bad too: the files that were in flight are retried one at a time in a
  fresh process to find the culprit.
- Results are flushed every ``flush_every`` pieces as a *part*: a folder written under a
  temporary name and renamed into place, so a part exists whole or not at all. A killed run
  leaves only whole parts; running the same command again skips the pieces they hold.
- When every piece is read, the parts are consolidated into the corpus files (``corpus.json``
  last, as the proof that the corpus is complete) and removed.
- ``shard=(i, n)`` reads a deterministic 1/n of the files (by a hash of the piece id), so n
  machines can work at once; ``merge`` joins their corpora into one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from partita.data.corpus import (
    CORPUS_VERSION,
    STORE_NOTE_DTYPE,
    TEMPO_DTYPE,
    TIMESIG_DTYPE,
    Corpus,
    ticks_to_seconds,
    write_corpus,
)
from partita.data.piece import Piece
from partita.data.pool import isolated_map
from partita.data.sources import scan
from partita.errors import PartitaError
from partita.io.midi import DEFAULT_MAX_BYTES, MidiError, load, sustained_durations

DEFAULT_MAX_SECONDS = 3 * 3600.0
PARTS = "parts"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class ReadOptions:
    """How each file is read; recorded in the corpus so a resumed run reads the same way."""

    sustain: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    max_seconds: float = DEFAULT_MAX_SECONDS


def read_piece(path: str, options: ReadOptions) -> dict:
    """Read one MIDI file into the arrays of the note store (runs in a worker process)."""
    score = load(path, max_bytes=options.max_bytes)
    tpq = int(score.ticks_per_quarter)
    parts = []
    names = {}
    for i, track in enumerate(score.tracks):
        n = track.notes.numpy()
        if len(n["time"]) == 0:
            continue
        if track.name.strip():
            names[str(i)] = track.name.strip()
        a = np.empty(len(n["time"]), STORE_NOTE_DTYPE)
        a["tick"] = n["time"]
        a["ticks"] = sustained_durations(n, track.pedals.numpy()) if options.sustain else n["duration"]
        a["pitch"] = n["pitch"]
        a["velocity"] = n["velocity"]
        a["program"] = track.program
        a["is_drum"] = track.is_drum
        a["track"] = i
        parts.append(a)
    notes = np.concatenate(parts)
    # Onset order, then pitch (one int64 key); one-track files usually come sorted already.
    key = (notes["tick"].astype(np.int64) << 8) | notes["pitch"]
    if len(key) > 1 and not np.all(key[1:] >= key[:-1]):
        notes = notes[np.argsort(key, kind="stable")]
    t = score.tempos.numpy()
    tempos = np.empty(len(t["time"]), TEMPO_DTYPE)
    tempos["tick"], tempos["mspq"] = t["time"], t["mspq"]
    s = score.time_signatures.numpy()
    timesigs = np.empty(len(s["time"]), TIMESIG_DTYPE)
    timesigs["tick"], timesigs["numerator"], timesigs["denominator"] = s["time"], s["numerator"], s["denominator"]
    seconds = float(ticks_to_seconds(np.array([(notes["tick"].astype(np.int64) + notes["ticks"]).max()]), tempos, tpq)[0])
    if seconds > options.max_seconds:
        raise MidiError(
            "too_long", f"{seconds / 60:.0f} minutes long, over the {options.max_seconds / 60:.0f}-minute limit", path
        )
    return {
        "tpq": tpq,
        "content": content_hash(notes, tpq),
        "notes": notes,
        "tempos": tempos,
        "timesigs": timesigs,
        "duration": seconds,
        "n_tracks": len(parts),
        "track_names": names,
    }


def content_hash(notes: np.ndarray, tpq: int) -> str:
    """A digest of what a piece plays: its notes (onset, duration, pitch, velocity, instrument) in
    ticks, whatever the track layout, file name or metadata. Equal for byte-identical files and for
    copies re-saved with other names, tempos or track orders; splits keep such pieces together."""
    fields = ["tick", "ticks", "pitch", "velocity", "program", "is_drum"]
    packed = np.empty(len(notes), np.dtype([(f, STORE_NOTE_DTYPE[f]) for f in fields]))
    for f in fields:
        packed[f] = notes[f]
    packed.sort(order=fields)
    return hashlib.sha1(np.int64(tpq).tobytes() + packed.tobytes()).hexdigest()[:20]


def _task(reader: Callable, piece: Piece, *, options: ReadOptions) -> tuple[str, dict | None, str | None, str | None]:
    """Run ``reader`` on one piece; every failure becomes (reason, message), never an exception."""
    try:
        return piece.id, reader(piece.path, options), None, None
    except MidiError as e:
        return piece.id, None, e.reason, str(e).split(": ", 1)[-1] if e.source else str(e)
    except MemoryError:
        return piece.id, None, "memory", "ran out of memory reading this file"
    except Exception as e:  # a bug or a library failure on one file must not stop the corpus
        return piece.id, None, "error", f"{type(e).__name__}: {e}".splitlines()[0][:300]


def shard_of(piece_id: str, n: int) -> int:
    """Which of ``n`` shards a piece belongs to: stable, independent of order and of other files."""
    return int.from_bytes(hashlib.sha1(piece_id.encode()).digest()[:8], "big") % n


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (1, 8): shards are numbered from 1 on the command line, from 0 inside."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise PartitaError(f"--shard must look like I/N (e.g. 1/4), not {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise PartitaError(f"--shard {text}: I must be between 1 and N")
    return i - 1, n


# --- parts -------------------------------------------------------------------------------------


@dataclass
class _Buffer:
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    tempos: list = field(default_factory=list)
    timesigs: list = field(default_factory=list)

    def add(self, piece: Piece, data: dict | None, reason: str | None, message: str | None) -> None:
        row = {**piece.to_dict(), "status": "ok" if data else "bad", "reason": reason, "message": message}
        if data:
            row.update(
                content=data.get("content"),
                tpq=data["tpq"],
                duration=data["duration"],
                n_notes=len(data["notes"]),
                n_tempos=len(data["tempos"]),
                n_timesigs=len(data["timesigs"]),
                n_tracks=data["n_tracks"],
                track_names=json.dumps(data["track_names"], ensure_ascii=False) if data.get("track_names") else None,
            )
            self.notes.append(data["notes"])
            self.tempos.append(data["tempos"])
            self.timesigs.append(data["timesigs"])
        else:
            row.update(content=None, tpq=0, duration=0.0, n_notes=0, n_tempos=0, n_timesigs=0, n_tracks=0)
        self.rows.append(row)

    def segment(self) -> Segment:
        return Segment(
            self.rows,
            np.concatenate(self.notes) if self.notes else np.zeros(0, STORE_NOTE_DTYPE),
            np.concatenate(self.tempos) if self.tempos else np.zeros(0, TEMPO_DTYPE),
            np.concatenate(self.timesigs) if self.timesigs else np.zeros(0, TIMESIG_DTYPE),
        )

    def flush(self, parts_dir: Path, written: list) -> None:
        """Write the buffer as a part, append it to ``written`` as a Segment, and empty it."""
        if not self.rows:
            return
        segment = self.segment()
        parts_dir.mkdir(parents=True, exist_ok=True)
        seq = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in parts_dir.glob("part-*")), default=0)
        tmp = parts_dir / f".tmp-{os.getpid()}-{seq:06d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        pq.write_table(pa.Table.from_pylist(segment.rows), tmp / "rows.parquet")
        for name in ("notes", "tempos", "timesigs"):
            np.save(tmp / f"{name}.npy", getattr(segment, name))
        os.replace(tmp, parts_dir / f"part-{seq:06d}")  # the part exists whole or not at all
        written.append(segment)
        self.__init__()


@dataclass
class Segment:
    """Rows plus the arrays they index, in row order (a part, or a whole corpus)."""

    rows: list
    notes: np.ndarray
    tempos: np.ndarray
    timesigs: np.ndarray


def read_part(folder: Path) -> Segment:
    rows = pq.ParquetFile(folder / "rows.parquet").read().to_pylist()
    return Segment(
        rows,
        np.load(folder / "notes.npy", allow_pickle=False),
        np.load(folder / "tempos.npy", allow_pickle=False),
        np.load(folder / "timesigs.npy", allow_pickle=False),
    )


def read_corpus_segment(corpus: Corpus) -> Segment:
    return Segment(corpus.rows, np.asarray(corpus.note_store), np.asarray(corpus.tempo_store), np.asarray(corpus.timesig_store))


def consolidate(segments: list[Segment]) -> tuple[list, list, list, list]:
    """Rows sorted by id with their arrays, each piece once (the first occurrence wins)."""
    entries = {}
    for seg in segments:
        offs = {k: np.concatenate([[0], np.cumsum([r[f"n_{k}"] for r in seg.rows])]).astype(np.int64) for k in ("notes", "tempos", "timesigs")}
        for j, r in enumerate(seg.rows):
            if r["id"] in entries:
                continue
            entries[r["id"]] = (
                r,
                seg.notes[offs["notes"][j] : offs["notes"][j + 1]],
                seg.tempos[offs["tempos"][j] : offs["tempos"][j + 1]],
                seg.timesigs[offs["timesigs"][j] : offs["timesigs"][j + 1]],
            )
    ordered = [entries[k] for k in sorted(entries)]
    return [e[0] for e in ordered], [e[1] for e in ordered], [e[2] for e in ordered], [e[3] for e in ordered]


# --- the run -----------------------------------------------------------------------------------


@dataclass
class PrepareResult:
    corpus: Corpus
    read_now: int  # pieces read by this call (the rest came from an earlier, interrupted run)


def _run_config(source: str, fmt: str, options: ReadOptions, shard: tuple[int, int], split: dict) -> dict:
    return {
        "source": source,
        "format": fmt,
        "read": {"sustain": options.sustain, "max_bytes": options.max_bytes, "max_seconds": options.max_seconds},
        "shard": list(shard),
        "split": split,
    }


def prepare(
    source: str | Path,
    out: str | Path,
    *,
    format: str | None = None,
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    options: ReadOptions = ReadOptions(),
    seed: int = 0,
    valid: float = 0.1,
    test: float = 0.1,
    split_mode: str = "pieces",
    unseen: float = 0.2,
    flush_every: int = 256,
    labels: list[str] | None = None,
    min_pieces: int = 0,
    labels_from: str = "auto",
    source_options: dict | None = None,
    reader: Callable = read_piece,
    progress: Callable[[int, int], None] | None = None,
    on_listed: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    """Prepare ``source`` (a folder or ``"bundled"``) into the corpus folder ``out``.

    Safe to interrupt and to run again: the second run finishes the work of the first.
    ``on_listed(total, already_done)`` is called once the files are listed.

    ``labels``: keep only the pieces with these labels (the others are not read);
    ``min_pieces``: leave out labels with fewer usable pieces than this (status "excluded").
    ``labels_from``: where a plain folder's labels come from (``scan_folder``: auto, folder,
    parent, none, csv).
    """
    out = Path(out).expanduser()
    source_options = {"labels_from": labels_from, **(source_options or {})}
    notes: list[str] = []
    if min_pieces < 0:
        raise PartitaError(f"--min-pieces must be 0 or more, not {min_pieces}")
    fmt, pieces = scan(source, format, **source_options, notes=notes)
    src = "bundled" if fmt == "bundled" else str(Path(source).expanduser().resolve())
    left_out = 0
    if labels:
        pieces, left_out = _only_labels(pieces, labels, src)
    i, n = shard
    if n > 1:
        pieces = [p for p in pieces if shard_of(p.id, n) == i]
    split = {"seed": seed, "valid": valid, "test": test, "mode": split_mode, "unseen": unseen}
    config = _run_config(src, fmt, options, shard, split)
    config["labels"] = {
        "from": source_options.get("labels_from", "auto"),
        "only": list(labels) if labels else None,
        "left_out": left_out,
        "min_pieces": min_pieces,
        "notes": notes,
    }

    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    if run_file.exists():
        before = json.loads(run_file.read_text())
        if {k: before.get(k) for k in ("source", "format", "read", "shard")} != {
            k: config[k] for k in ("source", "format", "read", "shard")
        }:
            raise PartitaError(
                f"{out} holds a corpus prepared from other data or with other options; use a new --out or delete it"
            )
    elif any(out.iterdir()):
        raise PartitaError(f"{out} is not empty and is not a partita corpus; choose an empty or new --out folder")
    run_file.write_text(json.dumps(config, indent=2))

    parts_dir = out / PARTS
    for stale in parts_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    segments = [read_part(p) for p in sorted(parts_dir.glob("part-*"))]
    existing = Corpus(out) if (out / "corpus.json").exists() else None
    if existing is not None:
        segments.insert(0, read_corpus_segment(existing))
    done = {r["id"] for seg in segments for r in seg.rows}
    todo = [p for p in pieces if p.id not in done]
    if on_listed:
        on_listed(len(pieces), len(pieces) - len(todo))

    buffer = _Buffer()
    completed = len(pieces) - len(todo)
    if progress:
        progress(completed, len(pieces))
    finished = False
    try:
        for piece, data, reason, message in _read_all(todo, options, workers, reader):
            buffer.add(piece, data, reason, message)
            completed += 1
            if progress:
                progress(completed, len(pieces))
            if len(buffer.rows) >= flush_every:
                buffer.flush(parts_dir, segments)
        finished = True
    finally:
        if not finished:  # Ctrl-C or an error: the pieces read so far are kept on disk
            buffer.flush(parts_dir, segments)
    if buffer.rows:  # the last pieces go straight into the corpus, no part needed
        segments.append(buffer.segment())

    rows, note_arrays, tempos, timesigs = consolidate(segments)
    listed = {p.id: p for p in pieces}
    keep = [k for k, r in enumerate(rows) if r["id"] in listed]
    write_corpus(
        out,
        # Labels, titles and groups come from this run's listing (its --labels-from, say), not
        # from the run that read the file.
        [_relisted(rows[k], listed[rows[k]["id"]]) for k in keep],
        [note_arrays[k] for k in keep],
        [tempos[k] for k in keep],
        [timesigs[k] for k in keep],
        config={**config, "version": CORPUS_VERSION},
    )
    shutil.rmtree(parts_dir, ignore_errors=True)
    return PrepareResult(Corpus(out), read_now=len(todo))


def _only_labels(pieces: list[Piece], labels: list[str], source: str) -> tuple[list[Piece], int]:
    """The pieces with one of ``labels``, and how many others were left out; an unknown label is
    an error that lists the labels there are."""
    have = {p.label for p in pieces if p.label is not None}
    missing = [lab for lab in labels if lab not in have]
    if missing:
        shown = ", ".join(sorted(have)[:12]) + (", ..." if len(have) > 12 else "") if have else "none (the pieces are unlabelled)"
        raise PartitaError(f"--labels: no piece of {source} is labelled {', '.join(map(repr, missing))}; labels there: {shown}")
    wanted = set(labels)
    kept = [p for p in pieces if p.label in wanted]
    return kept, len(pieces) - len(kept)


def _relisted(row: dict, piece: Piece) -> dict:
    listed = piece.to_dict()
    if "source_split" in row:  # a finished corpus's row: "split" is the assigned one
        listed["source_split"] = listed.pop("split")
    return {**row, **listed}


def _read_all(todo: list[Piece], options: ReadOptions, workers: int | None, reader: Callable):
    """Yield (piece, data, reason, message) for every piece, in completion order, read in the
    crash-isolated pool (``partita.data.pool``): a file that kills its reader is marked bad."""
    fn = functools.partial(_task, reader, options=options)
    for _, piece, result in isolated_map(fn, todo, workers=workers, on_crash=_crashed):
        yield (piece, *result[1:])


def _crashed(piece: Piece):
    return piece.id, None, "crashed", "the reader process crashed on this file"


def merge(shard_dirs: list[str | Path], out: str | Path) -> Corpus:
    """Join the corpora of ``prepare --shard i/n`` runs into one, splitting the union anew."""
    corpora = []
    for d in shard_dirs:
        d = Path(d)
        if not (d / "corpus.json").exists():
            raise PartitaError(f"{d}: not a finished prepared corpus (run or resume its prepare first)")
        corpora.append(Corpus(d))
    configs = [c.config for c in corpora]
    first = configs[0]
    for c, cfg in zip(corpora, configs):
        if (cfg["source"], cfg["format"], cfg["read"]) != (first["source"], first["format"], first["read"]):
            raise PartitaError(f"{c.path}: prepared from other data or with other options than {corpora[0].path}")
    shards = sorted(tuple(cfg["shard"]) for cfg in configs)
    n = first["shard"][1]
    missing = sorted(set(range(n)) - {s[0] for s in shards if s[1] == n})
    if missing:
        raise PartitaError(f"shard(s) {', '.join(f'{m + 1}/{n}' for m in missing)} missing from the merge")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise PartitaError(f"{out} is not empty; merge into a new folder")
    rows, notes, tempos, timesigs = consolidate([read_corpus_segment(c) for c in corpora])
    config = {**first, "shard": [0, 1], "version": CORPUS_VERSION}
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({k: v for k, v in config.items() if k != "version"}, indent=2))
    write_corpus(out, rows, notes, tempos, timesigs, config=config)
    return Corpus(out)
