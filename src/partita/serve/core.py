"""What ``partita serve`` holds between requests, with no web framework in it: the uploaded and
generated pieces (files in a private temporary folder, under generated names), the models and
indexes (loaded once, kept in small LRU caches), the bounded queue that runs every model call off
the event loop, and the jobs (continuations) that report their progress.

Every operation calls the library functions the CLI calls: ``partita.io.load`` checks uploads,
``partita.search`` embeds, attributes, searches and maps, ``partita.generation.generate_samples``
continues, ``partita.viz.pianoroll`` draws and ``partita.io.audio`` renders.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from partita.errors import PartitaError

#: Ids of pieces and jobs: 16 lowercase hex digits from ``secrets`` (never a name from a request).
ID_PATTERN = re.compile(r"[0-9a-f]{16}")
#: Settings a continuation may ask for, at most (the server is shared).
MAX_SAMPLES, MAX_SECONDS, MAX_BARS, MAX_TOKENS = 4, 60.0, 32, 4096
MAX_CANDIDATES = 8  # infilling: middles sampled per version
MAX_TEMPERATURE = 5.0
#: Threads of the analysis lane (attribution, similar pieces, map, pianoroll, audio).
ANALYSIS_WORKERS = 2
#: The longest a generation job pauses at a token while an analysis call runs.
YIELD_SECONDS = 0.5
#: The largest piece accepted (an upload over any of these is refused with 413 before anything is
#: drawn or embedded): notes, length, tracks, and beats (a file's ticks over its resolution: a
#: 66-byte file can claim centuries, or a million bars a second). The largest real piano pieces
#: hold some 30,000 notes over under an hour.
MAX_PIECE_NOTES, MAX_PIECE_HOURS, MAX_PIECE_TRACKS, MAX_PIECE_BEATS = 200_000, 2.0, 128, 100_000


class NotFound(PartitaError):
    """An id that names nothing (or is not an id at all)."""


class QueueFull(PartitaError):
    """The model queue holds as many calls as it may; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Invalid(PartitaError):
    """A request whose settings do not fit the piece (HTTP 422)."""


class PieceTooLarge(PartitaError):
    """An upload over the explorer's limits on a piece (HTTP 413)."""


class Stopped(Exception):
    """Raised inside a job when the server stops, or its job is cancelled."""


def check_id(value: str, what: str = "piece") -> str:
    """``value`` when it is an id this server hands out, else ``NotFound``: a request's string
    never reaches the file system unless it is 16 hex digits."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise NotFound(f"no {what} {value[:40]!r}: ids are 16 hex digits, as POST /api/pieces returns them")
    return value


def display_name(name: Optional[str], fallback: str = "piece.mid") -> str:
    """A file name to show and to offer for download: its last component, printable, at most 80
    characters. Never used as a path on the server."""
    name = (name or "").replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*').strip(" .")
    return name[:80] or fallback


# --------------------------------------------------------------------------- the queue


def release_memory() -> None:
    """Hand the heap memory freed by a request back to the system (glibc's ``malloc_trim``;
    nothing elsewhere): a large piece's note arrays and renders are made per request and
    dropped after, and without this the process would keep their pages."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


class ModelQueue:
    """A lane of model calls: a thread pool of ``workers`` threads that holds at most ``size``
    calls (running and waiting); one more is refused with ``QueueFull`` (HTTP 503 with
    Retry-After: when the first running call is expected to end, from the mean duration of the
    lane's calls, ``seconds`` until one has ended). ``idle`` is set while it holds no call."""

    def __init__(self, workers: int = 2, size: int = 16, *, name: str = "model", seconds: float = 1.0):
        if workers < 1 or size < 1:
            raise PartitaError("workers and the queue size must be at least 1")
        self.workers, self.size, self.name = int(workers), int(size), name
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"partita-{name}")
        self._lock = threading.Lock()
        self._held = 0
        self._running: dict = {}  # call number -> when it started
        self._calls = 0
        self._seconds = float(seconds)  # running mean of a call's duration, for Retry-After
        self.idle = threading.Event()
        self.idle.set()

    @property
    def held(self) -> int:
        return self._held

    def retry_after(self) -> int:
        """Seconds until a place is expected to free up (at least 1)."""
        now = time.perf_counter()
        with self._lock:
            elapsed = max((now - t for t in self._running.values()), default=0.0)
            waiting = max(self._held - self.workers, 0)
        rounds = 1 + waiting // self.workers  # the waiting calls run before a new one
        return max(int(np.ceil(self._seconds * rounds - elapsed)), 1)

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            full = self._held >= self.size
            if not full:
                self._held += 1
                self.idle.clear()
                self._calls += 1
                number = self._calls
        if full:
            wait = self.retry_after()
            raise QueueFull(f"the server is busy ({self.size} {self.name} calls held); the page retries in {wait} s",
                            retry_after=wait)
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._held -= 1
                    started = self._running.pop(number, None)
                    if started is not None:
                        self._seconds = 0.7 * self._seconds + 0.3 * (time.perf_counter() - started)
                    if self._held == 0:
                        self.idle.set()

        def call():
            # The place is given back in the worker, before the future completes: a caller
            # woken by ``result()`` may submit again at once and must find it free (a done
            # callback runs after waiters wake).
            with self._lock:
                self._running[number] = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                release()
                release_memory()

        try:
            fut = self._pool.submit(call)
        except RuntimeError:  # shut down
            release()
            raise QueueFull("the server is stopping", retry_after=5) from None
        fut.add_done_callback(lambda _: release())  # a call cancelled before it ran
        return fut

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LRU:
    """A small thread-safe LRU map; ``get_or_make`` builds a missing value once (other callers
    of the same key wait for it)."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict = {}

    def get_or_make(self, key, make: Callable[[], Any]):
        while True:
            with self._lock:
                if key in self._d:
                    self._d.move_to_end(key)
                    return self._d[key]
                event = self._making.get(key)
                mine = event is None
                if mine:
                    event = self._making[key] = threading.Event()
            if not mine:
                event.wait()
                continue
            try:
                value = make()
                with self._lock:
                    self._d[key] = value
                    while len(self._d) > self.size:
                        self._d.popitem(last=False)
                return value
            finally:
                with self._lock:
                    self._making.pop(key, None)
                event.set()


# --------------------------------------------------------------------------- pieces


@dataclass
class Piece:
    """An uploaded or generated MIDI file kept by the server (``path`` is in its private folder)."""

    id: str
    name: str
    path: Path
    kind: str  # "upload" | "continuation"
    notes: int
    seconds: float
    tracks: list
    piano: bool
    bars: int  # bars of its own metre (``partita.io.timing.bar_starts``) up to its last note-off
    parent: Optional[str] = None
    settings: dict = field(default_factory=dict)
    audio_from: float = 0.0  # where its audio starts (a continuation: shortly before the new music)
    vectors: dict = field(default_factory=dict)  # index key -> its embedding
    readouts: dict = field(default_factory=dict)  # (index key, k) -> its attribution by the index's readout
    choice: Optional[dict] = None  # the index chosen for it from its notes (Explorer.index_choice)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def public(self) -> dict:
        base = f"/api/pieces/{self.id}"
        return {
            "id": self.id, "name": self.name, "kind": self.kind, "notes": self.notes, "seconds": round(self.seconds, 3), "bars": self.bars,
            "tracks": self.tracks, "piano": self.piano, "parent": self.parent, "settings": self.settings,
            "audio_from": round(self.audio_from, 3),
            "links": {
                "self": base, "notes": f"{base}/notes", "pianoroll": f"{base}/pianoroll.png", "audio": f"{base}/audio",
                "midi": f"{base}/midi", "attribution": f"{base}/attribution", "similar": f"{base}/similar",
                "map": f"{base}/map", "continue": f"{base}/continue", "infill": f"{base}/infill",
                "accompany": f"{base}/accompany",
            },
        }


def describe_score(score) -> tuple[int, float, list, int]:
    """(notes, seconds, tracks, bars) of a score, with partita's own helpers."""
    from partita.io import duration_seconds
    from partita.io.timing import bar_of, bar_starts
    from partita.viz.pianoroll import program_name

    tracks = [{"program": int(t.program), "drum": bool(t.is_drum), "notes": int(t.note_num()),
               "instrument": program_name(int(t.program), bool(t.is_drum)), "name": str(t.name)[:60]}
              for t in score.tracks if t.note_num() > 0]
    end = max(int(score.end()) - 1, 0)
    bars = int(bar_of(bar_starts(score), [end])[0]) + 1
    return int(score.note_num()), duration_seconds(score), tracks, bars


def check_size(score, name: str) -> None:
    """``PieceTooLarge`` for a score over the explorer's limits on a piece (``MAX_PIECE_*``),
    checked from counts the file's header and events give, before any array is made."""
    notes = int(score.note_num())
    if notes > MAX_PIECE_NOTES:
        raise PieceTooLarge(f"{name} has {notes:,} notes; the explorer takes pieces of at most {MAX_PIECE_NOTES:,}")
    tracks = sum(1 for t in score.tracks if t.note_num() > 0)
    if tracks > MAX_PIECE_TRACKS:
        raise PieceTooLarge(f"{name} has {tracks} tracks with notes; the explorer takes at most {MAX_PIECE_TRACKS}")
    beats = int(score.end()) / max(int(score.ticks_per_quarter), 1)
    if beats > MAX_PIECE_BEATS:
        raise PieceTooLarge(f"{name} lasts {beats:,.0f} beats; the explorer takes pieces of at most {MAX_PIECE_BEATS:,}")
    from partita.io import duration_seconds

    hours = duration_seconds(score) / 3600
    if hours > MAX_PIECE_HOURS:
        raise PieceTooLarge(f"{name} lasts {hours:,.1f} hours; the explorer takes pieces of at most {MAX_PIECE_HOURS:g}")


class PieceStore:
    """Pieces in a private folder (mode 0700), each file named by its id; at most ``limit``
    pieces are kept, the oldest go first (their files and cached renderings with them)."""

    def __init__(self, folder: Path, limit: int = 256):
        self.folder = folder
        self.limit = int(limit)
        self._pieces: OrderedDict[str, Piece] = OrderedDict()
        self._lock = threading.Lock()

    def file(self, pid: str, suffix: str) -> Path:
        return self.folder / f"{check_id(pid)}{suffix}"

    def add(self, data: bytes, score, name: str, kind: str = "upload", **extra: Any) -> Piece:
        pid = secrets.token_hex(8)
        path = self.file(pid, ".mid")
        with open(path, "xb") as f:  # "x": a name is never reused
            f.write(data)
        from partita.io import is_piano

        notes, seconds, tracks, bars = describe_score(score)
        piano = is_piano(path)
        piece = Piece(pid, display_name(name), path, kind, notes, seconds, tracks, piano, bars, **extra)
        evicted = []
        with self._lock:
            self._pieces[pid] = piece
            while len(self._pieces) > self.limit:
                evicted.append(self._pieces.popitem(last=False)[1])
        for old in evicted:
            for f in self.folder.glob(f"{old.id}.*"):
                f.unlink(missing_ok=True)
        return piece

    def get(self, pid: str) -> Piece:
        check_id(pid)
        with self._lock:
            piece = self._pieces.get(pid)
        if piece is None:
            raise NotFound(f"no piece {pid} on this server (pieces are kept while it runs, the {self.limit} newest)")
        return piece

    def score(self, piece: Piece):
        from partita.io import load

        return load(piece.path)


# --------------------------------------------------------------------------- indexes and models


@dataclass
class IndexEntry:
    """A loaded index with its attribution (the composer readout ``partita attribute`` uses, else
    the older centroid attribution of an index without one), its embedder and (once drawn) its map."""

    key: str
    path: Path
    index: Any
    attribution: Any
    embedder: Any
    embed_settings: dict
    roots: list  # folders where the index's pieces are found by id (to play them)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    map: Optional[dict] = None
    years: dict = field(default_factory=dict)  # a performance's id -> its year, where the data says it
    reader: Any = None  # partita.search.reader.Readout of the index, where it has one

    def piece_file(self, row: int) -> Optional[Path]:
        """The MIDI file of index row ``row`` on this machine, or None. Only paths the index
        itself stores are tried, and an id must stay inside its root folder."""
        p = self.index.pieces[row]
        if p.get("path"):
            path = Path(p["path"])
            if path.is_file():
                return path
        pid = p.get("id") or ""
        for root in self.roots:
            try:
                cand = (root / pid).resolve()
                cand.relative_to(root.resolve())
            except (ValueError, OSError):
                continue
            if cand.is_file():
                return cand
        return None


#: An ASAP performance's file: the performer's name, then digits or _ (``Shi05M.mid``, ``Lisiecki02.mid``, ``Na_2006_02.mid``).
_PERFORMANCE = re.compile(r"([A-Za-z][A-Za-z\-]*)[_0-9].*\.midi?")
_YEAR_IN_NAME = re.compile(r"_((?:19|20)\d\d)(?:_|\d|M|\.)")  # Na_2006_02.mid, FALIKS02_2004.mid


def performance(piece_id: str, years: dict, source: Optional[str] = "asap") -> dict:
    """``{"performer", "year"}`` of an index piece from its id, where the id says it: an ASAP
    performance is named after its pianist (``Chopin/Etudes_op_10/1/MunA07M.mid``: MunA), its
    notated score is ``midi_score.mid`` (performer None, ``score``: True); the year comes from
    the data's own metadata (``years``) or a year the file's name holds (``Na_2006_02.mid``)."""
    name = piece_id.rsplit("/", 1)[-1]
    if source != "asap":
        return {"performer": None, "score": False, "year": years.get(piece_id)}
    if name.lower() in ("midi_score.mid", "midi_score.midi"):
        return {"performer": None, "score": True, "year": None}
    m = _PERFORMANCE.fullmatch(name)
    year = years.get(piece_id)
    if year is None and _YEAR_IN_NAME.search(name):
        year = int(_YEAR_IN_NAME.search(name).group(1))
    return {"performer": m.group(1) if m else None, "score": False, "year": year}


def performance_years(roots: list) -> dict:
    """Year of each ASAP performance under ``roots`` (its ``metadata.csv`` points at the MAESTRO
    recording, whose folder is its year): ``{"Bach/Fugue/bwv_846/Shi05M.mid": 2006}``."""
    import csv

    years = {}
    for root in roots:
        meta = Path(root) / "metadata.csv"
        try:
            with open(meta, newline="") as f:
                for row in csv.DictReader(f):
                    m = re.match(r"\{maestro\}/(\d{4})/", row.get("maestro_midi_performance") or "")
                    if m and row.get("midi_performance"):
                        years[row["midi_performance"]] = int(m.group(1))
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
    return years


def group_by_work(hits: list) -> list:
    """Hits of one work (the same composer and title: performances and the score of one piece)
    as one entry, in the order of each work's best hit."""
    works: dict = {}
    for h in hits:
        key = (h.get("label") or "", h.get("title") or h.get("id") or "")
        w = works.setdefault(key, {"label": key[0] or None, "title": key[1], "rank": h["rank"], "distance": h["distance"],
                                   "hits": []})
        w["hits"].append(h["rank"])
    return list(works.values())


def _bundled_exports() -> list:
    """The bundled corpus's cached MIDI exports (``partita data prepare bundled`` writes them):
    the files of the shipped bundled index, by id."""
    try:
        from partita.data.sources.bundled import default_out_dir

        cache = default_out_dir(None).parent
        return sorted(p for p in cache.glob("bundled-*") if (p / "manifest.json").is_file())
    except Exception:  # no cache folder, no music21: nothing to play
        return []


class Explorer:
    """The state behind the API (see the module doc). ``index``: an index folder or a shipped
    index's name for every piece (None: the piano index for piano music, else the bundled one,
    as ``partita attribute`` chooses); ``model``: a GPT bundle for continuations (None: the
    shipped one for the piece, as ``partita generate`` chooses); ``pieces``: folders holding the
    index's MIDI files under their ids, so that similar pieces can be played (None: the bundled
    corpus's cached export, where ``partita data prepare bundled`` left one, for the bundled index)."""

    def __init__(
        self,
        *,
        index: Optional[str] = None,
        model: Optional[str] = None,
        pieces: Optional[list] = None,
        max_upload_mb: float = 20.0,
        workers: int = 2,
        queue: int = 16,
        keep: int = 256,
        audio_seconds: float = 90.0,
    ):
        from partita.search import choose_index
        from partita.search.index import SHIPPED_INDEXES, shipped_index

        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.audio_seconds = float(audio_seconds) if audio_seconds and audio_seconds > 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="partita-serve-"))  # private: mode 0700
        self.store = PieceStore(self.folder, keep)
        # Two lanes: the page's quick calls (attribution, similar pieces, map, pianoroll, audio)
        # never wait behind generation, which has its own threads, and yields to them between
        # tokens (``_run_job``).
        self.queue = ModelQueue(ANALYSIS_WORKERS, queue, name="analysis", seconds=2.0)
        self.generation = ModelQueue(workers, queue, name="generation", seconds=30.0)
        self.closing = False
        # None: find the bundled index's files in the bundled corpus's cached export; a list: only these.
        self.auto_roots = pieces is None
        self.roots = [Path(p).expanduser() for p in (pieces or [])]
        for root in self.roots:
            if not root.is_dir():
                raise PartitaError(f"{root}: no such folder (--pieces takes folders holding the index's MIDI files)")
        # Index choices by name: the request names one of these keys, never a path.
        if index is not None:
            path = choose_index([], index).index  # a folder or a shipped name, as every command takes it
            from partita.search.index import Index

            Index.load(path)  # a bad --index is a one-line error at start, not at the first request
            self.index_paths = {path.name: path}
        else:
            self.index_paths = {name: shipped_index(name) for name in SHIPPED_INDEXES}
        self.index_option = index
        self.indexes = LRU(4)
        # Generation models by name: "auto" picks the shipped one for the piece.
        from partita import pretrained

        if model is not None:
            path = Path(model).expanduser()
            if not (path / "config.json").is_file():
                path = pretrained.bundle_path(str(model))
            self.model_paths = {path.parent.name if path.name == "bundle" else path.name: path}  # runs/x/bundle: "x"
        else:
            self.model_paths = {name: pretrained.bundle_path(name) for name in (pretrained.GPT, pretrained.GPT_PIANO)
                                if (pretrained.ROOT / name / "config.json").is_file()}
        self.model_option = model
        self.gpts = LRU(3)
        self.index_audio_cache = LRU(16)  # rendered index pieces (bytes, MIME), the last 16 played
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._jobs_lock = threading.Lock()
        self._audio = None

    # ----------------------------------------------------------------- facts
    def audio_status(self) -> dict:
        """Whether audio can be rendered here, and why not."""
        if self._audio is None:
            from symusic import Note, Score, Track

            from partita.io import audio

            one = Score(480)  # one note, rendered once: the SoundFont and the synthesizer both work
            track = Track("", 0, False)
            track.notes.append(Note(0, 240, 60, 80))
            one.tracks.append(track)
            try:
                _, mime = audio.audio_clip(one, seconds=0.5)
                self._audio = {"available": True, "format": mime.split("/")[-1], "reason": None}
            except (PartitaError, ImportError, OSError) as e:
                self._audio = {"available": False, "format": None, "reason": str(e).splitlines()[0]}
        return self._audio

    def info(self) -> dict:
        from partita import __version__

        return {
            "partita": __version__,
            "indexes": sorted(self.index_paths),
            "index": self.index_option or "auto (piano for piano music, else bundled)",
            "models": sorted(self.model_paths),
            "model": self.model_option or "auto (gpt-piano for piano music, else gpt-small)",
            "audio": self.audio_status(),
            "infill": self.infill_models(),
            "accompany": {"styles": ["pop", "folk", "chorale"], "models": self.accompany_models()},
            "limits": {
                "max_upload_mb": round(self.max_upload_bytes / 2**20, 3), "workers": self.generation.workers,
                "analysis_workers": self.queue.workers,
                "piece_notes": MAX_PIECE_NOTES, "piece_hours": MAX_PIECE_HOURS, "piece_tracks": MAX_PIECE_TRACKS,
                "queue": self.queue.size, "pieces_kept": self.store.limit, "audio_seconds": self.audio_seconds,
                "samples": MAX_SAMPLES, "seconds": MAX_SECONDS, "bars": MAX_BARS, "max_tokens": MAX_TOKENS,
            },
        }

    # ----------------------------------------------------------------- pieces
    def upload(self, data: bytes, name: Optional[str]) -> Piece:
        """Check the bytes with ``partita.io.load`` (MIDI header, chunks, notes: a ``MidiError``
        with its reason otherwise) and keep them."""
        from partita.io import MidiError, load

        shown = display_name(name)
        try:
            score = load(data, max_bytes=self.max_upload_bytes)
        except MidiError as e:
            raise MidiError(e.reason, str(e), shown) from None
        check_size(score, shown)
        return self.store.add(data, score, shown)

    def notes(self, piece: Piece) -> dict:
        """Note data for the page's pianoroll (seconds, from ``partita.io.note_array``): every
        note (uploads are at most ``MAX_PIECE_NOTES``), the bar lines, and for a piece a model
        wrote, which notes are new (``new``: 1 for a note its parent does not hold)."""
        from partita.io import note_array
        from partita.io.timing import bar_starts, seconds_at

        score = self.store.score(piece)
        notes = note_array(score, unit="second")
        bars = seconds_at(score, bar_starts(score)[: piece.bars + 1])
        new = self._new_notes(piece, notes)
        new_tracks = None
        if piece.kind == "accompaniment" and piece.parent is not None:  # the tracks it added, whole: in their own colours
            first = len(self.store.score(self.store.get(piece.parent)).tracks)
            new_tracks = [{"track": i, "name": t.name} for i, t in enumerate(score.tracks) if i >= first]
            new = notes["track"] >= first
        r = lambda a: np.round(a.astype(np.float64), 4).tolist()  # noqa: E731
        return {
            "id": piece.id, "seconds": round(piece.seconds, 3), "count": int(len(notes)),
            "audio_from": round(piece.audio_from, 3), "new_music": self._new_music(piece), "bars": r(bars),
            "onset": r(notes["onset"]), "duration": r(notes["duration"]), "pitch": notes["pitch"].tolist(),
            "velocity": notes["velocity"].tolist(), "track": notes["track"].tolist(),
            "drum": notes["is_drum"].astype(int).tolist(), "new": None if new is None else new.astype(int).tolist(),
            "new_tracks": new_tracks,
        }

    #: A note of a generated piece is its parent's when the parent has a note of the same pitch
    #: starting within this many seconds (a tokenizer may move a prompt's notes to its grid).
    SAME_NOTE_SECONDS = 0.07

    def _new_notes(self, piece: Piece, notes: np.ndarray) -> Optional[np.ndarray]:
        """Which of ``notes`` (the piece's) its parent piece does not hold: what the model added,
        read off the two files whatever the library returned (None: an upload, or a parent gone)."""
        from partita.io import note_array

        if piece.parent is None:
            return None
        try:
            parent = note_array(self.store.score(self.store.get(piece.parent)), unit="second")
        except PartitaError:
            return None
        new = np.ones(len(notes), bool)
        for pitch in np.unique(notes["pitch"]):
            mine = np.flatnonzero(notes["pitch"] == pitch)
            theirs = np.sort(parent["onset"][parent["pitch"] == pitch].astype(np.float64))
            if not len(theirs):
                continue
            t = notes["onset"][mine].astype(np.float64)
            j = np.searchsorted(theirs, t)  # the parent's nearest onsets of this pitch: before and after
            before, after = theirs[np.clip(j - 1, 0, len(theirs) - 1)], theirs[np.clip(j, 0, len(theirs) - 1)]
            new[mine] = np.minimum(np.abs(before - t), np.abs(after - t)) > self.SAME_NOTE_SECONDS
        return new

    @staticmethod
    def _new_music(piece: Piece) -> Optional[list]:
        """[start, end] seconds of the music a model wrote into the piece (None: an upload)."""
        if piece.kind == "infill":
            return piece.settings.get("span_seconds")
        if piece.kind == "continuation":
            return [piece.settings.get("prompt_end", 0.0), round(piece.seconds, 3)]
        if piece.kind == "accompaniment":
            return [0.0, round(piece.seconds, 3)]
        return None

    def pianoroll(self, piece: Piece) -> bytes:
        from partita.viz.pianoroll import pianoroll_png

        path = self.store.file(piece.id, ".png")
        if not path.is_file():
            _write(path, pianoroll_png(self.store.score(piece), width_px=1100, height_px=300, title=piece.name))
        return path.read_bytes()

    def audio_file(self, piece: Piece) -> Optional[tuple[Path, str]]:
        """The piece's audio file and MIME type when it was rendered already, else None."""
        for path in self.folder.glob(f"{check_id(piece.id)}.audio.*"):
            return path, _MIME.get(path.suffix, "application/octet-stream")
        return None

    def audio(self, piece: Piece) -> tuple[Path, str]:
        """The piece rendered with the SoundFont (``partita.io.audio.audio_clip``): the first
        ``audio_seconds``, or for a generated piece from 5 s before its new music; kept as a
        file next to the MIDI file."""
        from partita.io import audio

        status = self.audio_status()
        if not status["available"]:
            raise AudioUnavailable(status["reason"])
        done = self.audio_file(piece)
        if done is not None:
            return done
        score = self.store.score(piece)
        if piece.audio_from > 0:
            sec = score.to("second")
            score = sec.clip(piece.audio_from, sec.end() + 1, clip_end=False).shift_time(-piece.audio_from).to("tick")
        data, mime = audio.audio_clip(score, seconds=self.audio_seconds)
        path = self.store.file(piece.id, f".audio{ {v: k for k, v in _MIME.items()}.get(mime, '.bin') }")
        _write(path, data)
        return path, mime

    # ----------------------------------------------------------------- indexes
    def index_key(self, piece: Piece, name: Optional[str]) -> str:
        """The index for a piece: ``name`` (one of ``info()["indexes"]``) or the library's choice."""
        return self.index_choice(piece, name)["index"]

    def index_choice(self, piece: Piece, name: Optional[str]) -> dict:
        """``{"index": key, "reason": one line, "given": bool}``: ``name`` (one of
        ``info()["indexes"]``, "auto" or None for the choice), the one index this server was
        started with, or what :func:`partita.search.choose_index` decides from the piece's notes
        (the choice every command makes), made once per piece."""
        if name not in (None, "", "auto"):
            if name not in self.index_paths:
                raise NotFound(f"no index {name[:40]!r} here; choose auto or one of {', '.join(sorted(self.index_paths))}")
            return {"index": name, "reason": f"chosen: {name}", "given": True}
        if len(self.index_paths) == 1:
            key = next(iter(self.index_paths))
            return {"index": key, "reason": f"given: --index {self.index_option} -> {key}", "given": True}
        with piece.lock:
            if piece.choice is None:
                from partita.search import choose_index

                chosen = choose_index([piece.path])
                key = next((k for k, path in self.index_paths.items() if path.resolve() == chosen.index.resolve()),
                           sorted(self.index_paths)[0])
                piece.choice = {"index": key, "reason": chosen.reason, "given": False}
            return dict(piece.choice)

    def index(self, key: str) -> IndexEntry:
        if key not in self.index_paths:
            raise NotFound(f"no index {key[:40]!r} here; choose one of {', '.join(sorted(self.index_paths))}")
        return self.indexes.get_or_make(key, lambda: self._load_index(key))

    def _load_index(self, key: str) -> IndexEntry:
        import partita
        from partita.search.attribute import load_attribution
        from partita.search.index import Index, is_shipped, resolve_model
        from partita.search.reader import load_reader

        path = self.index_paths[key]
        index = Index.load(path)
        reader = load_reader(path)
        attribution = None
        try:
            attribution = load_attribution(path)
            if attribution.model_fingerprint and attribution.model_fingerprint != index.model.get("fingerprint"):
                attribution = None
        except PartitaError:
            pass
        bundle_path, _ = resolve_model(index.model)
        embedder = partita.load(str(bundle_path)).model
        roots = list(self.roots)
        if self.auto_roots and is_shipped(path) and path.name == "bundled-index":
            roots += _bundled_exports()
        settings = {"windows": int(index.embed.get("windows", 8)), "seed": int(index.embed.get("seed", 0))}
        return IndexEntry(key, path, index, attribution, embedder, settings, roots, years=performance_years(roots), reader=reader)

    def vector(self, piece: Piece, entry: IndexEntry) -> np.ndarray:
        """The piece's embedding by the index's embedder, with the index's settings (as
        ``partita.search.index.embed_queries``), computed once per piece and index."""
        from partita.search.embed import embed_files

        with piece.lock:
            if entry.key not in piece.vectors:
                # No lock around the model: inference leaves it as it was (eval mode, no state), so
                # two threads may embed at once.
                vecs, kept, failures = embed_files(entry.embedder, [piece.path], **entry.embed_settings)
                if not kept:
                    reason = failures[0][1] if failures else "cannot embed this piece"
                    raise PartitaError(str(reason).replace(str(piece.path), piece.name))
                piece.vectors[entry.key] = np.asarray(vecs, np.float32).reshape(1, -1)
            return piece.vectors[entry.key]

    def attribution(self, piece: Piece, index: Optional[str], k: int) -> dict:
        """The piece's composers as ``partita attribute`` gives them: the index's readout
        (calibrated probabilities, the length-aware "unknown", and why: the features between the
        top two composers and their nearest pieces), or the centroid attribution of an index
        without a readout."""
        choice = self.index_choice(piece, index)
        entry = self.index(choice["index"])
        if entry.reader is not None:
            return self._read_composer(piece, entry, choice, k)
        if entry.attribution is None:
            raise PartitaError(f"the index {entry.key} has no attribution (it needs labelled pieces)")
        result = entry.attribution.attribute(self.vector(piece, entry), k=k)[0]
        f = entry.attribution.fitted
        return {"piece": piece.id, "index": entry.key, "choice": choice, "k": k, "method": "centroids", **result,
                "temperature": entry.attribution.temperature, "calibration": f.get("calibration"),
                "labels": len(entry.attribution.labels), "why": None, "nearest": {}}

    def _read_composer(self, piece: Piece, entry: IndexEntry, choice: dict, k: int) -> dict:
        from partita.search.reader import attribute_files

        with piece.lock:
            cached = piece.readouts.get((entry.key, k))
        if cached is None:
            results, failures = attribute_files(entry.index, entry.reader, [piece.path], k=k)
            if not results:
                reason = failures[0][1] if failures else "cannot read this piece"
                raise PartitaError(str(reason).replace(str(piece.path), piece.name))
            cached = dict(results[0])
            cached.pop("query", None)  # where the upload lies on this machine is not the client's business
            with piece.lock:
                piece.readouts[(entry.key, k)] = cached
        f = entry.reader.fitted
        return {"piece": piece.id, "index": entry.key, "choice": choice, "k": k, "method": "readout", **cached,
                "temperature": entry.reader.temperature, "calibration": f.get("held_out"),
                "labels": len(entry.reader.labels)}

    def similar(self, piece: Piece, index: Optional[str], k: int) -> dict:
        choice = self.index_choice(piece, index)
        entry = self.index(choice["index"])
        hits = entry.index.search(self.vector(piece, entry), k)[0]
        out = []
        for h in hits:
            d = h.to_dict()
            d.pop("path", None)  # where the index's files are on this machine is not the client's business
            playable = entry.piece_file(h.row) is not None
            base = f"/api/indexes/{entry.key}/pieces/{h.row}"
            d["links"] = {"audio": f"{base}/audio", "midi": f"{base}/midi"} if playable else None
            d.update(performance(d.get("id") or "", entry.years, d.get("source")))
            out.append(d)
        return {"piece": piece.id, "index": entry.key, "choice": choice, "k": k, "hits": out, "works": group_by_work(out),
                "playable": any(h["links"] for h in out),
                "note": None if any(h["links"] for h in out) else
                "the index's MIDI files are not on this machine: start partita serve with --pieces FOLDER to play them"}

    def index_piece(self, key: str, row: int) -> tuple[IndexEntry, Path]:
        entry = self.index(key)
        if not 0 <= row < len(entry.index):
            raise NotFound(f"index {key} has no row {row} (it has {len(entry.index)} pieces)")
        path = entry.piece_file(row)
        if path is None:
            raise NotFound(f"the file of {entry.index.pieces[row].get('id')} is not on this machine (see --pieces)")
        return entry, path

    def index_audio(self, key: str, row: int) -> tuple[bytes, str]:
        from partita.io import audio, load

        status = self.audio_status()
        if not status["available"]:
            raise AudioUnavailable(status["reason"])
        _, path = self.index_piece(key, row)
        return self.index_audio_cache.get_or_make((key, row), lambda: audio.audio_clip(load(path), seconds=self.audio_seconds))

    def map_points(self, key: str) -> dict:
        """The index's 2-D map (``partita.search.maps.map_coordinates``: the stored t-SNE map, or
        one fitted once and kept for this process), as points for the page."""
        from partita.search.maps import map_coordinates

        entry = self.index(key)
        with entry.lock:
            if entry.map is None:
                coords, state, info = map_coordinates(entry.index, method="tsne", dims=2, save=False)
                rows = [entry.index.row_of(i) for i in state.ids]
                entry.map = {
                    "state": state, "reference": entry.index.vectors(rows),
                    "json": {
                        "index": key, "method": "tsne", "fitted_now": bool(info.get("fitted")), "count": len(entry.index),
                        "x": np.round(coords[:, 0], 3).tolist(), "y": np.round(coords[:, 1], 3).tolist(),
                        "label": [p.get("label") or "(no label)" for p in entry.index.pieces],
                        "title": [p.get("title") or p.get("id") or "" for p in entry.index.pieces],
                    },
                }
            return entry.map

    def place(self, piece: Piece, index: Optional[str]) -> dict:
        """Where the piece falls on the index's map (``partita.search.maps.place``: the map does not move)."""
        from partita.search.maps import place

        choice = self.index_choice(piece, index)
        key = choice["index"]
        m = self.map_points(key)
        entry = self.index(key)
        xy = place(m["state"], m["reference"], self.vector(piece, entry))[0]
        verdict = None
        if entry.reader is not None:
            verdict = self._read_composer(piece, entry, choice, 3)["verdict"]
        elif entry.attribution is not None:
            verdict = entry.attribution.attribute(self.vector(piece, entry), k=1)[0]["verdict"]
        return {"piece": piece.id, "index": key, "choice": choice, "x": round(float(xy[0]), 3), "y": round(float(xy[1]), 3),
                "verdict": verdict, "points": f"/api/indexes/{key}/map"}

    # ----------------------------------------------------------------- generation
    def model_path(self, piece: Piece, name: Optional[str]) -> Path:
        if name in (None, "", "auto"):
            if len(self.model_paths) == 1:
                return next(iter(self.model_paths.values()))
            from partita.pretrained import default_gpt

            return default_gpt(piece.path)
        if name not in self.model_paths:
            raise NotFound(f"no model {str(name)[:40]!r} here; choose auto or one of {', '.join(sorted(self.model_paths))}")
        return self.model_paths[name]

    def gpt(self, path: Path):
        import partita

        def make():
            import torch

            return partita.load(str(path), device="cuda" if torch.cuda.is_available() else "cpu")

        return self.gpts.get_or_make(str(path), make)

    def infill_models(self) -> list:
        """The models here that were trained to fill a span (``GPTConfig.fim``)."""
        import json

        if _infill_module() is None:
            return []
        out = []
        for name, path in sorted(self.model_paths.items()):
            try:
                config = json.loads((path / "config.json").read_text())
                if config.get("config", config).get("fim"):  # a bundle's config.json holds the model's under "config"
                    out.append(name)
            except (OSError, ValueError):
                pass
        return out

    def _sampling(self, s: dict) -> dict:
        """The sampling options the request gave (checked now, before anything is queued); the
        model's ``generation.json`` and ``SamplingConfig``'s defaults fill in the rest."""
        from partita.generation import SamplingConfig

        given = {k: v for k, v in s.items() if v is not None}
        SamplingConfig().replace(**given).checked()
        return given

    def start_continuation(self, piece: Piece, settings: dict) -> "Job":
        """Check the settings, then queue the continuation; returns its job at once."""
        s = dict(settings)
        n = _samples(s.pop("n", 1))
        prompt_seconds = s.pop("prompt_seconds", None)
        if prompt_seconds is not None and not 0 < prompt_seconds <= piece.seconds:
            raise Invalid(f"prompt_seconds must be within the piece (0 to {piece.seconds:.1f} s), not {prompt_seconds:.4g}")
        model = self.model_path(piece, s.pop("model", None))
        for key, cap in (("seconds", MAX_SECONDS), ("bars", MAX_BARS), ("max_new_tokens", MAX_TOKENS)):
            if s.get(key) is not None and not 0 < s[key] <= cap:
                raise Invalid(f"{key} must be above 0 and at most {cap:g} on this server, not {s[key]:.4g}")
        if s.get("seconds") is None and s.get("bars") is None and s.get("max_new_tokens") is None:
            s["seconds"] = 10.0
        options = self._sampling(s)
        shown = {"n": n, "prompt_seconds": prompt_seconds, "model": model.name, **{k: v for k, v in s.items() if v is not None}}
        return self._queue_job("continuation", piece, model, shown, self._continue, piece, model, options, n, prompt_seconds)

    def accompany_models(self) -> list:
        """The models here that write an accompaniment under a melody (``partita train gpt
        --accompany``: their card's task)."""
        import json

        out = []
        for name, path in sorted(self.model_paths.items()):
            try:
                if json.loads((path / "card.json").read_text()).get("task") == "accompany":
                    out.append(name)
            except (OSError, ValueError):
                pass
        return out

    def start_accompany(self, piece: Piece, settings: dict) -> "Job":
        """Check the settings (the style, a model for ``pop`` if one is asked for, the melody track,
        the chords), then queue the accompaniment (``partita.generation.accompany``)."""
        from partita.generation.accompany import PATTERNS, STYLES, choose_melody_track, default_pattern, parse_progression
        from partita.pretrained import POP_CHORDS

        s = dict(settings)
        n = _samples(s.pop("n", 1))
        style, pattern = s.pop("style", "pop"), s.pop("pattern", None)
        chords, melody_track, density = s.pop("chords", None), s.pop("melody_track", None), s.pop("density", None)
        if density is not None and style == "chorale":
            raise Invalid("density works with the pop and folk styles; a chorale moves one chord a beat")
        if style not in STYLES or pattern not in (None, *PATTERNS):
            raise Invalid(f"style must be one of {', '.join(STYLES)} and pattern one of {', '.join(PATTERNS)}")
        if chords is not None:
            if style == "chorale":
                raise Invalid("chords work with the pop and folk styles; a chorale's chords are the model's")
            try:
                parse_progression(chords)
            except PartitaError as e:
                raise Invalid(str(e).replace("--", "")) from None
        try:
            choose_melody_track(self.store.score(piece), melody_track, name=piece.name)
        except PartitaError as e:
            raise Invalid(str(e).replace("--melody-track N", "melody_track").replace("--", "")) from None
        name = s.pop("model", None)
        if style == "pop" and name not in (None, "", "auto"):
            capable = self.accompany_models()
            if name not in capable:
                raise Invalid(f"{str(name)[:40]!r} is not an accompaniment model here (these are: {', '.join(capable) or 'none'}; "
                              "without a model, pop plays the tagged chords)")
            if pattern is not None:
                raise Invalid("pattern plays the chords without a model; with a model the texture is the model's")
            model = self.model_path(piece, name)
        elif style == "pop":
            from partita.pretrained import bundle_path

            model = bundle_path(POP_CHORDS)
        elif style == "chorale":
            from partita.pretrained import CHORALE_HARMONY, bundle_path

            model = bundle_path(CHORALE_HARMONY)
        else:
            model = Path("rule")
        options = self._sampling(s)
        shown = {"n": n, "style": style, "model": model.name, "melody_track": melody_track, "density": density,
                 **({"pattern": pattern or default_pattern(style)} if model.name in ("rule", POP_CHORDS) else {}),
                 **({"chords": chords} if chords else {}),
                 **{k: v for k, v in s.items() if v is not None}}
        return self._queue_job("accompaniment", piece, model, shown, self._accompany, piece, model, options, n, style,
                               pattern, chords, melody_track, density)

    def _accompany(self, progress, piece: Piece, model: Path, options: dict, n: int, style: str, pattern: str,
                   chords: Optional[str], melody_track: Optional[int], density: Optional[float] = None) -> list:
        from partita.generation.accompany import accompany
        from partita.pretrained import POP_CHORDS

        chords_played = model.name in ("rule", POP_CHORDS)  # no model writes the notes: the chords are played
        bundle = None if chords_played else self.gpt(model) if style == "pop" else str(model)
        results = accompany(str(piece.path), style=style, model=bundle, melody_track=melody_track, chords=chords, n=n,
                            pattern=pattern, density=density, progress=progress, **options)
        stem = piece.name.rsplit(".", 1)[0]
        return [(r.score, f"{stem}-accompanied-{r.index + 1}.mid",
                 {"melody_track": r.melody_track + 1, "melody_name": r.melody_name, "added": r.added, "bars": r.bars}, 0.0)
                for r in results]

    def start_infill(self, piece: Piece, settings: dict) -> "Job":
        """Check the settings, then queue the infilling (``partita.generation.infill``)."""
        module = _infill_module()
        if module is None:
            raise PartitaError("infilling is not in this version of partita")
        parse_span = module.parse_span
        s = dict(settings)
        n = _samples(s.pop("n", 1))
        candidates = s.pop("candidates", 1)
        if not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
            raise Invalid(f"candidates must be 1 to {MAX_CANDIDATES}, not {candidates!r}")
        bars, seconds = s.pop("bars", None), s.pop("seconds", None)
        if (bars is None) == (seconds is None):
            raise Invalid('give the span to fill as bars ("9-12") or seconds ("10-20"), one of them')
        try:
            span = parse_span(str(bars)[:40], "bars") if bars is not None else parse_span(str(seconds)[:40], "seconds")
        except (PartitaError, ValueError, OverflowError) as e:
            raise Invalid(str(e).replace("--", "")) from None
        if bars is not None and span[1] - span[0] + 1 > MAX_BARS:
            raise Invalid(f"at most {MAX_BARS} bars are filled on this server, not {span[1] - span[0] + 1:g}")
        if bars is not None and span[1] > piece.bars:
            raise Invalid(f"bars {bars}: the piece has {piece.bars} bars")
        if seconds is not None and span[0] >= piece.seconds:
            raise Invalid(f"seconds {seconds}: the piece lasts {piece.seconds:.1f} s")
        name = s.pop("model", None)
        if name in (None, "", "auto"):
            capable = self.infill_models()
            if not capable:
                raise PartitaError("no model here was trained for infilling (partita train gpt --fim 0.5); start partita serve with --model such a bundle")
            default = self.model_path(piece, None).name
            name = default if default in capable else capable[0]
        model = self.model_path(piece, name)
        options = self._sampling(s)
        shown = {"n": n, "candidates": int(candidates), "model": model.name, "bars": bars, "seconds": seconds,
                 **{k: v for k, v in s.items() if v is not None}}
        return self._queue_job("infill", piece, model, shown, self._infill, piece, model, options, n, bars, seconds,
                               int(candidates))

    def _queue_job(self, kind: str, piece: Piece, model: Path, shown: dict, fn: Callable, *args: Any) -> "Job":
        job = Job(secrets.token_hex(8), kind, piece.id, model=model.name, settings=shown)
        with self._jobs_lock:
            self.jobs[job.id] = job
            while len(self.jobs) > 256:
                old = next((j for j in self.jobs.values() if j.state in ("done", "error", "cancelled")), None)
                if old is None:
                    break
                del self.jobs[old.id]
        job.future = self.generation.submit(self._run_job, job, fn, *args)
        return job

    def _run_job(self, job: "Job", fn: Callable, *args: Any) -> None:
        """Run a generation job: ``fn(progress, *args)`` returns ``(score, name, settings,
        audio_from)`` per new piece (None: a sample without notes); the job says how it went."""
        from partita.io import save

        if job.cancelled:
            job.state = "cancelled"
            return
        job.state = "running"

        def progress(done: int, total: int) -> None:
            if self.closing or job.cancelled:
                raise Stopped()
            # A quick call of the page is running: let it have the processor first (at most
            # YIELD_SECONDS a token), so that attribution answers while generation runs.
            if not self.queue.idle.is_set():
                self.queue.idle.wait(YIELD_SECONDS)
            job.done, job.total = int(done), int(total)

        try:
            for i, made in enumerate(fn(progress, *args)):
                if made is None:
                    job.empty += 1
                    continue
                score, name, settings, audio_from = made
                tmp = self.store.file(job.id, f".{i}.tmp.mid")
                save(score, tmp)
                data = tmp.read_bytes()
                tmp.unlink()
                new = self.store.add(data, score, name, kind=job.kind, parent=job.piece,
                                     settings={**job.settings, **settings}, audio_from=audio_from)
                job.pieces.append(new.id)
            job.state = "done"
        except Stopped:
            if job.cancelled:
                job.state, job.error = "cancelled", {"error": "cancelled", "message": "cancelled"}
            else:
                job.state, job.error = "error", {"error": "stopped", "message": "the server stopped"}
        except PartitaError as e:
            job.state, job.error = "error", error_body(e, self.folder)[1]
        except Exception as e:  # a bug: said in one line, the traceback stays in the server's log
            import logging

            logging.getLogger("partita.serve").exception("%s %s failed", job.kind, job.id)
            job.state, job.error = "error", {"error": "internal", "message": f"internal error ({type(e).__name__}); see the server's log"}

    def _continue(self, progress, piece: Piece, model: Path, options: dict, n: int, prompt_seconds) -> list:
        from partita.generation import generate_samples

        # Sampling keeps its state (KV cache, memories) in objects of its own, not in the model,
        # so continuations of one model run side by side in the queue's threads.
        bundle = self.gpt(model)
        samples = generate_samples(bundle, str(piece.path), n=n, prompt_seconds=prompt_seconds, progress=progress,
                                   **options)
        stem = piece.name.rsplit(".", 1)[0]
        out = []
        for s in samples:
            if not s.ok:
                out.append(None)
                continue
            prompt_end = s.prompt_end  # where the prompt ends in the new piece: the user's file, new notes added
            out.append((s.score, f"{stem}-continued-{s.index + 1}.mid",
                        {"stop": s.stop, "new_tokens": s.new_tokens, "prompt_end": round(prompt_end, 3)},
                        max(0.0, prompt_end - 5.0)))
        return out

    def _infill(self, progress, piece: Piece, model: Path, options: dict, n: int, bars, seconds, candidates: int = 1) -> list:
        from partita.io.timing import seconds_at

        results = _infill_module().infill(self.gpt(model), str(piece.path), bars=bars, seconds=seconds, n=n,
                                          candidates=candidates, progress=progress, **options)
        stem = piece.name.rsplit(".", 1)[0]
        out = []
        for r in results:
            start, end = (float(x) for x in seconds_at(r.score, list(r.ticks[:2])))
            out.append((r.score, f"{stem}-filled-{r.bars[0]}-{r.bars[1]}-{r.index + 1}.mid",
                        {"stop": r.stop, "filled_bars": list(r.bars), "notes_removed": r.notes_removed,
                         "notes_added": r.notes_added, "span_seconds": [round(start, 3), round(end, 3)]},
                        max(0.0, start - 5.0)))
        return out

    def public_job(self, job: "Job") -> dict:
        """A job as the API shows it, with its place in the generation queue (``position``: 1
        for the next to run; None once it runs) and how many jobs run now."""
        with self._jobs_lock:
            queued = [j for j in self.jobs.values() if j.state == "queued" and not j.cancelled]
            running = sum(1 for j in self.jobs.values() if j.state == "running")
        position = next((i + 1 for i, j in enumerate(queued) if j is job), None)
        return {**job.public(self.store), "queue": {"position": position, "running": running,
                                                    "workers": self.generation.workers}}

    def job(self, jid: str) -> "Job":
        check_id(jid, "job")
        with self._jobs_lock:
            job = self.jobs.get(jid)
        if job is None:
            raise NotFound(f"no job {jid} on this server")
        return job

    def cancel(self, job: "Job") -> "Job":
        """Cancel a job: a queued one never runs, a running one stops at its next token (the
        pieces it finished stay); a finished one is left as it is."""
        if job.state in ("queued", "running"):
            job.cancelled = True
            if job.future is not None and job.future.cancel():
                job.state = "cancelled"
        return job

    def close(self) -> None:
        self.closing = True
        self.queue.close()
        self.generation.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Job:
    id: str
    kind: str
    piece: str
    model: str = ""
    settings: dict = field(default_factory=dict)
    state: str = "queued"  # queued | running | done | error | cancelled
    done: int = 0
    total: int = 0
    pieces: list = field(default_factory=list)
    empty: int = 0
    error: Optional[dict] = None
    cancelled: bool = False
    future: Optional[Future] = field(default=None, repr=False)

    def public(self, store: PieceStore) -> dict:
        pieces = []
        for pid in self.pieces:
            try:
                pieces.append(store.get(pid).public())
            except NotFound:
                pass
        return {
            "id": self.id, "kind": self.kind, "piece": self.piece, "model": self.model, "settings": self.settings,
            "state": self.state, "progress": {"done": self.done, "total": self.total}, "pieces": pieces,
            "empty_samples": self.empty, "error": self.error, "links": {"self": f"/api/jobs/{self.id}"},
        }


def _infill_module():
    """``partita.generation.infill`` (the infilling function and its span parser), or None in a
    version of partita without it."""
    try:
        import importlib

        return importlib.import_module("partita.generation.infill")
    except ImportError:
        return None


def _samples(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
        raise Invalid(f"n must be 1 to {MAX_SAMPLES}, not {n!r}")
    return n


class AudioUnavailable(PartitaError):
    """No SoundFont here: the page says so instead of playing."""


_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    tmp.replace(path)


def error_body(e: BaseException, private: Optional[Path] = None) -> tuple[int, dict]:
    """HTTP status and JSON body of an error: one line, never a traceback, and never the path of
    the ``private`` folder (a piece's file is named by its id there)."""
    from partita.io import MidiError

    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if private is not None:
        msg = msg.replace(f"{private}{os.sep}", "").replace(str(private), "")
    if isinstance(e, NotFound):
        return 404, {"error": "not_found", "message": msg}
    if isinstance(e, QueueFull):
        return 503, {"error": "busy", "message": msg, "retry_after": e.retry_after}
    if isinstance(e, Invalid):
        return 422, {"error": "invalid_request", "message": msg}
    if isinstance(e, PieceTooLarge):
        return 413, {"error": "too_large", "message": msg}
    if isinstance(e, MidiError):
        return 422, {"error": "bad_midi", "reason": e.reason, "message": msg}
    if isinstance(e, AudioUnavailable):
        return 501, {"error": "audio_unavailable", "message": msg}
    if isinstance(e, PartitaError):
        return 400, {"error": "bad_request", "message": msg}
    return 500, {"error": "internal", "message": f"internal error ({type(e).__name__}); see the server's log"}
