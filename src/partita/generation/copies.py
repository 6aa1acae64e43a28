"""Copy check: does a generated piece repeat bars of a training piece?

A **copy index** holds one 64-bit hash per bar of every training piece (hashes only, never the
music: a gpt bundle ships its own, ``copies.npz`` + ``copies.json`` in the bundle folder). A
bar's hash covers the base tokens that say which notes it has and when: positions (or time
shifts), pitches, durations and programs, BPE merges expanded; velocities, tempo, time
signatures and the Bar token itself are left out, so a repeated passage is found whatever its
dynamics. Bars without a note (rests) are left out on both sides: a run counts bars with notes
and goes on across a rest.

``CopyIndex.longest(bar_hashes)`` finds the longest run of consecutive bars of a sample equal to
consecutive bars of one training piece (bar-aligned, exact hash equality): a dynamic programme
over the positions of each bar's hash in the index, linear in the matches. A sample is flagged
when that run is longer than ``max_copied_bars``. What a held-out real piece shares with the
training pieces by chance is the yardstick (``benchmarks/RESULTS.md``, "Copy check").

::

    from partita.generation.copies import CopyIndex, build_copy_index
    index = build_copy_index("corpora/asap", "runs/gpt/bundle", split="train")   # writes into the bundle
    match = CopyIndex.load("runs/gpt/bundle").check(tokenizer, sample.ids, sample.prompt_length)
    match.bars, match.piece, match.piece_bars
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from partita.errors import PartitaError
from partita.io.files import atomic_path, atomic_write

__all__ = ["COPY_FILE", "COPY_META", "CopyIndex", "CopyMatch", "bar_hashes", "build_copy_index", "new_bar_start"]

COPY_FILE = "copies.npz"
COPY_META = "copies.json"
#: Base token types left out of a bar's hash (besides special tokens).
IGNORED_TYPES = ("Velocity", "Tempo", "TimeSig", "Bar")
NOTE_TYPES = ("Pitch", "PitchDrum", "NoteOn", "DrumOn", "PitchIntervalTime", "PitchIntervalChord")
_ROOT = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = np.asarray(x, np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class _BarHasher:
    """Per tokenizer: which base tokens a bar's hash reads, and a random-looking code per token."""

    def __init__(self, tokenizer: Any):
        from partita.represent.token_tables import token_tables

        self.table = table = token_tables(tokenizer)
        n_base = len(table.base_special)
        types = [""] * n_base
        for tok, i in tokenizer.vocab.items():
            types[i] = tok.split("_")[0]
        self.kept = np.array([t not in IGNORED_TYPES for t in types], bool) & ~table.base_special
        self.note = np.array([t in NOTE_TYPES for t in types], bool)
        # the code of a base token: its vocabulary string, so a hash means the same for any tokenizer
        # with the same base vocabulary (BPE merges do not change it)
        inv = {i: s for s, i in tokenizer.vocab.items()}
        self.code = np.array([int.from_bytes(hashlib.blake2b(inv.get(i, "").encode(), digest_size=8).digest(), "little")
                              for i in range(n_base)], np.uint64)


def _hasher(tokenizer: Any) -> _BarHasher:
    from partita.represent.token_tables import token_tables

    return token_tables(tokenizer).memo("bar_hasher", lambda: _BarHasher(tokenizer))


def bar_hashes(tokenizer: Any, ids: Any) -> np.ndarray:
    """One uint64 per bar of ``ids`` (token ids of the tokenizer; special tokens ignored): the hash
    of the bar's notes (module doc), 0 for a bar without a note."""
    from partita.represent.tokens import token_timing

    h = _hasher(tokenizer)
    t = h.table
    ids = np.asarray(ids, np.int64).ravel()
    ids = ids[~t.special[ids]] if ids.size else ids
    if ids.size == 0:
        return np.zeros(0, np.uint64)
    bars = token_timing(tokenizer, ids)[0].astype(np.int64)
    base, _ = t.expand(ids)
    base_bars = np.repeat(bars, t.lengths[ids])
    n_bars = int(bars.max()) + 1
    keep = h.kept[base]
    base, base_bars = base[keep], base_bars[keep]
    order = np.argsort(base_bars, kind="stable")  # bars never go back in a tokenizer's output; be safe
    base, base_bars = base[order], base_bars[order]
    start = np.searchsorted(base_bars, np.arange(n_bars))
    k = np.arange(len(base)) - start[base_bars]  # place of the token in its bar
    powers = np.cumprod(np.full(int(k.max()) + 1 if len(k) else 1, _ROOT, np.uint64), dtype=np.uint64) if len(k) else None
    out = np.zeros(n_bars, np.uint64)
    if len(base):
        with np.errstate(over="ignore"):
            np.add.at(out, base_bars, h.code[base] * powers[k])
    counts = np.bincount(base_bars, minlength=n_bars).astype(np.uint64)
    out = _mix(out ^ _mix(counts))
    has_note = np.zeros(n_bars, bool)
    has_note[base_bars[h.note[base]]] = True
    out[out == 0] = 1
    out[~has_note] = 0
    return out


def new_bar_start(tokenizer: Any, ids: Any, prompt_length: int) -> int:
    """The first bar of ``ids`` that is wholly new: the bar after the prompt's last note bar (0
    without a prompt with music): a continuation completing the prompt's last bar is not counted."""
    from partita.represent.token_tables import token_tables
    from partita.represent.tokens import token_timing

    ids = np.asarray(ids, np.int64).ravel()
    prompt = ids[:prompt_length]
    special = token_tables(tokenizer).special
    music = prompt[~special[prompt]] if prompt.size else prompt
    if music.size == 0:
        return 0
    return int(token_timing(tokenizer, music)[0].max()) + 1


@dataclass
class CopyMatch:
    """The longest run of a sample's bars found in one training piece (``bars`` 0: none)."""

    bars: int
    piece: Optional[str] = None  # the training piece's name (its corpus id or title)
    piece_bars: Optional[tuple[int, int]] = None  # first and last bar in the training piece
    sample_bars: Optional[tuple[int, int]] = None  # first and last bar in the sample

    def as_dict(self) -> dict:
        return {"copied_bars": self.bars, "copied_from": self.piece,
                "copied_piece_bars": None if self.piece_bars is None else list(self.piece_bars),
                "copied_sample_bars": None if self.sample_bars is None else list(self.sample_bars)}


class CopyIndex:
    """Bar hashes of a set of pieces (training pieces of a model) for ``longest``/``check``."""

    def __init__(self, hashes: np.ndarray, offsets: np.ndarray, pieces: Sequence[str], meta: Optional[dict] = None,
                 path: Optional[Path] = None, bar_numbers: Optional[np.ndarray] = None):
        """``hashes``: the hashes of the pieces' bars with notes, piece after piece (piece ``p``'s
        are ``hashes[offsets[p]:offsets[p+1]]``); ``bar_numbers``: each one's bar in its piece."""
        self.hashes = np.asarray(hashes, np.uint64)
        self.offsets = np.asarray(offsets, np.int64)
        self.pieces = [str(p) for p in pieces]
        self.meta = dict(meta or {})
        self.path = path
        self.bar_numbers = (np.asarray(bar_numbers, np.uint32) if bar_numbers is not None
                            else np.zeros(len(self.hashes), np.uint32))
        if (len(self.offsets) != len(self.pieces) + 1 or int(self.offsets[-1]) != len(self.hashes)
                or len(self.bar_numbers) != len(self.hashes)):
            raise PartitaError("a damaged copy index: offsets do not match the bars")
        self._order = np.argsort(self.hashes, kind="stable")
        self._sorted = self.hashes[self._order]
        self._first = np.zeros(len(self.hashes) + 1, bool)
        self._first[self.offsets[:-1]] = True

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def bars(self) -> int:
        return len(self.hashes)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        with atomic_path(folder / COPY_FILE, suffix=".npz") as tmp:
            np.savez_compressed(tmp, hashes=self.hashes, offsets=self.offsets, bar_numbers=self.bar_numbers)
        meta = {**self.meta, "pieces": self.pieces, "bars": self.bars}
        atomic_write(folder / COPY_META, json.dumps(meta, indent=1, ensure_ascii=False))
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, tokenizer: Any = None) -> "CopyIndex":
        """The copy index in ``folder`` (a bundle folder); with ``tokenizer``, checks it is the one
        the index was built with (the hashes read its base tokens)."""
        folder = Path(folder)
        if not (folder / COPY_FILE).is_file() or not (folder / COPY_META).is_file():
            raise PartitaError(f"{folder}: no copy index ({COPY_FILE}); build one with "
                               f"'partita data copy-index CORPUS --model {folder}'")
        try:
            meta = json.loads((folder / COPY_META).read_text(encoding="utf-8"))
            with np.load(folder / COPY_FILE, allow_pickle=False) as z:
                hashes, offsets, numbers = z["hashes"], z["offsets"], z["bar_numbers"]
        except (OSError, ValueError, KeyError) as e:
            raise PartitaError(f"{folder / COPY_FILE}: unreadable copy index ({e})") from None
        pieces = meta.pop("pieces", [])
        meta.pop("bars", None)
        index = cls(hashes, offsets, pieces, meta, path=folder, bar_numbers=numbers)
        if tokenizer is not None and meta.get("base_vocab") and meta["base_vocab"] != _base_vocab_hash(tokenizer):
            raise PartitaError(f"{folder / COPY_FILE}: built with another tokenizer than this model's; rebuild it "
                               f"with 'partita data copy-index CORPUS --model {folder}'")
        return index

    # ------------------------------------------------------------------ queries

    def longest(self, hashes: np.ndarray, start: int = 0) -> CopyMatch:
        """The longest run of consecutive bars with notes of ``hashes`` (bar hashes of a sample,
        from bar ``start`` on; rests skipped) equal to consecutive bars with notes of one indexed
        piece."""
        hashes = np.asarray(hashes, np.uint64)
        where = np.flatnonzero(hashes[max(int(start), 0):]) + max(int(start), 0)  # sample bars with notes
        hashes = hashes[where]
        best = (0, -1, -1)  # run length, last global bar, last sample bar
        prev_g = np.zeros(0, np.int64)
        prev_run = np.zeros(0, np.int64)
        for i in range(len(hashes)):
            h = hashes[i]
            lo, hi = np.searchsorted(self._sorted, h, "left"), np.searchsorted(self._sorted, h, "right")
            if lo == hi:
                prev_g, prev_run = np.zeros(0, np.int64), np.zeros(0, np.int64)
                continue
            g = np.sort(self._order[lo:hi]).astype(np.int64)
            run = np.ones(len(g), np.int64)
            if len(prev_g):
                j = np.searchsorted(prev_g, g - 1)
                j = np.minimum(j, len(prev_g) - 1)
                cont = (prev_g[j] == g - 1) & ~self._first[g]
                run[cont] += prev_run[j[cont]]
            k = int(run.argmax())
            if run[k] > best[0]:
                best = (int(run[k]), int(g[k]), i)
            prev_g, prev_run = g, run
        n, g, i = best
        if n == 0:
            return CopyMatch(0)
        p = int(np.searchsorted(self.offsets, g, "right") - 1)
        return CopyMatch(n, self.pieces[p], (int(self.bar_numbers[g - n + 1]), int(self.bar_numbers[g])),
                         (int(where[i - n + 1]), int(where[i])))

    def check(self, tokenizer: Any, ids: Any, prompt_length: int = 0) -> CopyMatch:
        """The longest run of a sample's new bars (after its prompt's last bar) in the index."""
        return self.longest(bar_hashes(tokenizer, ids), new_bar_start(tokenizer, ids, prompt_length))


def _base_vocab_hash(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def _splits(split: str) -> Optional[set]:
    s = {x.strip() for x in str(split).split(",") if x.strip()}
    return None if "all" in s else s


def build_copy_index(corpus_dir: str | os.PathLike, model: str | os.PathLike, *, split: str = "train",
                     out: Optional[str | os.PathLike] = None, progress: Any = None,
                     command: Optional[str] = None) -> CopyIndex:
    """Hash every bar of the ``split`` pieces (``"train"``, ``"train,valid"``, ``"all"``) of a
    prepared corpus with the tokenizer of the gpt bundle ``model``; write the index to ``out``
    (default: the bundle folder) and record it in the bundle's card when written there.

    The corpus's token streams are read when they were made with the same tokenizer; otherwise
    each piece is encoded from the corpus's notes (the corpus is not changed)."""
    from partita.data.corpus import Corpus
    from partita.represent.tokens import TokenStreams, encode, load_tokenizer

    model = Path(model)
    if not (model / "tokenizer.json").is_file():
        raise PartitaError(f"{model}: not a gpt bundle (no tokenizer.json)")
    tokenizer = load_tokenizer(model / "tokenizer.json")
    corpus = Corpus(corpus_dir)
    wanted = _splits(split)
    members = [i for i, r in enumerate(corpus.pieces) if wanted is None or r["split"] in wanted]
    if not members:
        raise PartitaError(f"{corpus_dir}: no pieces in split {split!r}")
    streams = None
    tok_dir = corpus.path / "tokens"
    if (tok_dir / "streams.json").is_file():
        s = TokenStreams(tok_dir)
        sha = hashlib.sha256((model / "tokenizer.json").read_bytes()).hexdigest()
        if s.meta.get("tokenizer_sha256") == sha:
            streams = s
    all_hashes, numbers, offsets, names = [], [], [0], []
    for done, i in enumerate(members, 1):
        row = corpus.pieces[i]
        ids = None
        if streams is not None:
            try:
                ids = np.asarray(streams.piece(streams.index(row["id"])), np.int64)
            except KeyError:
                ids = None
        if ids is None:
            try:
                ids = encode(tokenizer, corpus.score(i))
            except Exception:  # a piece the tokenizer cannot encode has no bar to copy
                ids = np.zeros(0, np.int64)
        h = bar_hashes(tokenizer, ids)
        kept = np.flatnonzero(h)
        all_hashes.append(h[kept])
        numbers.append(kept.astype(np.uint32))
        h = kept
        offsets.append(offsets[-1] + len(h))
        names.append(str(row.get("title") or row["id"]))
        if progress is not None:
            progress(done, len(members))
    meta = {
        "format": "partita-copy-index", "version": 1, "corpus": str(corpus.path), "split": split,
        "base_vocab": _base_vocab_hash(tokenizer), "ignored_types": list(IGNORED_TYPES),
        "tokens_from": "token streams" if streams is not None else "encoded from the corpus",
    }
    if command:
        meta["command"] = command
    index = CopyIndex(np.concatenate(all_hashes), np.asarray(offsets, np.int64), names, meta,
                      bar_numbers=np.concatenate(numbers))
    target = Path(out) if out is not None else model
    index.save(target)
    if target.resolve() == model.resolve() and (model / "card.json").is_file():
        card = json.loads((model / "card.json").read_text(encoding="utf-8"))
        card["copy_index"] = {k: meta[k] for k in ("corpus", "split", "command") if k in meta}
        card["copy_index"].update({"pieces": len(index), "bars": index.bars, "files": [COPY_FILE, COPY_META]})
        atomic_write(model / "card.json", json.dumps(card, indent=2, ensure_ascii=False))
    return index
