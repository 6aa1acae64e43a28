"""Piece embeddings: a FeatNet applied to a piece's descriptor, or a SiaViT applied to several
windows of a piece, averaged, re-normalised.

A FeatNet (``partita.models.featnet``) reads the whole piece at once: one descriptor
(``piano_descriptor``), one vector; ``windows`` does not apply. For a SiaViT, a piece's vector
is the mean of the embeddings of ``windows`` crops spread evenly over it (the
first starts at the first note, the last ends at the last note-off, the rest evenly between, on
the model's frame grid), re-normalised to unit length, so cosine similarity is a dot product. A
piece no longer than one window is embedded once, zero-padded at the end. Windows are rendered
with the model's own input settings (``config.frame_seconds``, ``window_seconds``, ``mode``), and
all windows of all pieces are run through the model in batches of ``batch_size``.

Inputs are note arrays in seconds (``Corpus.notes(i)``, ``partita.io.note_array``); drum notes
are ignored. A piece without a single pitched note cannot be embedded: ``embed_notes`` raises a
``PartitaError``, ``embed_files`` and ``embed_corpus`` report it as a failure and go on.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from partita.errors import PartitaError
from partita.io.midi import pitched
from partita.represent.pianoroll import note_frames, pianoroll

__all__ = ["embed_corpus", "embed_files", "embed_notes", "window_starts"]

Progress = Optional[Callable[[int, int], None]]


def window_starts(notes: np.ndarray, *, frame_seconds: float, window_seconds: float, windows: int) -> np.ndarray:
    """Start frames of up to ``windows`` evenly spread windows over the piece (distinct, sorted).

    Raises ``PartitaError`` for a piece with no pitched notes.
    """
    notes = pitched(notes)
    if len(notes) == 0:
        raise PartitaError("no pitched notes to embed (empty, or drums only)")
    onset = notes["onset"].astype(np.float64)
    first, last = note_frames(onset, onset + notes["duration"], frame_seconds)
    lo, hi = int(first.min()), int(last.max()) + 1
    n = int(round(window_seconds / frame_seconds))
    top = max(lo, hi - n)
    starts = np.unique(np.round(np.linspace(lo, top, max(1, int(windows)))).astype(np.int64))
    return starts


def _rolls(model, notes: np.ndarray, windows: int) -> list[np.ndarray]:
    c = model.config
    n = c.window_frames
    out = []
    for s in window_starts(notes, frame_seconds=c.frame_seconds, window_seconds=c.window_seconds, windows=windows):
        out.append(pianoroll(notes, frame_seconds=c.frame_seconds, mode=c.mode, start=s * c.frame_seconds,
                             duration=n * c.frame_seconds))
    return out


@torch.no_grad()
def _embed(model, rolls: list[np.ndarray], batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rolls), batch_size):
        x = torch.from_numpy(np.stack(rolls[i : i + batch_size])).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)


#: Bundle families that embed pieces: the SiaViT (pianoroll windows) and FeatNet (descriptors).
EMBEDDERS = ("siavit", "featnet")


def _model(model):
    """An embedder (SiaViT or FeatNet) from a model, a Bundle, or a bundle folder (None: the
    shipped SiaViT)."""
    if not hasattr(model, "config_class"):  # not a bare model: a name, a folder, a Bundle or None
        from partita.bundle import load
        from partita.pretrained import SIAVIT

        return load(model, EMBEDDERS, default=SIAVIT).model
    if getattr(type(model), "family", None) not in EMBEDDERS:
        raise PartitaError(f"{type(model).__name__} is not an embedder (SiaViT or FeatNet)")
    return model


def _descriptors(model, notes: np.ndarray) -> list[np.ndarray]:
    """A FeatNet's input for a whole piece (one descriptor: the model averages nothing)."""
    from partita.represent.features import piano_descriptor

    try:
        return [piano_descriptor(pitched(notes), chord_tolerance=model.config.chord_tolerance)]
    except ValueError as e:
        raise PartitaError(f"cannot embed: {e}") from None


def _run(model, items: Iterable[tuple[int, np.ndarray]], total: int, windows: int, batch_size: int,
         progress: Progress) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Embed ``(key, notes)`` items; returns vectors of the good ones, their keys, and failures."""
    was_training = model.training
    model.eval()
    dim = model.config.dim
    vectors: list[np.ndarray] = []
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    pending: list[np.ndarray] = []  # rolls waiting for a batch
    owners: list[int] = []  # index into kept of each pending roll
    sums: list[np.ndarray] = []
    done = 0

    def flush(all_: bool) -> None:
        while len(pending) >= batch_size or (all_ and pending):
            k = min(batch_size, len(pending))
            emb = _embed(model, pending[:k], k)
            for owner, e in zip(owners[:k], emb):
                sums[owner] += e
            del pending[:k], owners[:k]

    try:
        for key, notes in items:
            try:
                rolls = _rolls(model, notes, windows) if model.family == "siavit" else _descriptors(model, notes)
            except PartitaError as e:
                failures.append((key, str(e)))
            else:
                kept.append(key)
                sums.append(np.zeros(dim, np.float64))
                pending.extend(rolls)
                owners.extend([len(kept) - 1] * len(rolls))
                flush(False)
            done += 1
            if progress:
                progress(done, total)
        flush(True)
    finally:
        model.train(was_training)
    for s in sums:
        norm = np.linalg.norm(s)
        vectors.append((s / norm if norm > 0 else s).astype(np.float32))
    out = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return out, kept, failures


def embed_notes(model, notes_list: Sequence[np.ndarray], *, windows: int = 8, seed: int = 0, batch_size: int = 32,
                progress: Progress = None) -> np.ndarray:
    """Unit-length embeddings ``(N, dim)`` float32 of note arrays (seconds), one row per piece.

    ``model``: a ``SiaViT``, a loaded siavit ``Bundle``, a bundle folder, or None (the shipped
    model). ``windows``: crops per piece (module doc). Window placement is deterministic, so
    ``seed`` changes nothing for a model in eval mode; it is accepted so that every partita
    function that could draw at random takes one. A piece with no pitched notes raises
    ``PartitaError`` (use ``embed_files`` / ``embed_corpus`` to skip such pieces instead).
    """
    del seed
    if windows < 1 or batch_size < 1:
        raise PartitaError("windows and batch_size must be >= 1")
    model = _model(model)
    vectors, kept, failures = _run(model, enumerate(notes_list), len(notes_list), windows, batch_size, progress)
    if failures:
        i, reason = failures[0]
        raise PartitaError(f"piece {i}: {reason}")
    return vectors


def embed_files(model, paths: Sequence[str | os.PathLike], *, windows: int = 8, seed: int = 0, batch_size: int = 32,
                sustain: bool = True, progress: Progress = None, stats: Optional[dict] = None):
    """Embed MIDI files: ``(vectors (N, dim), kept_paths, failures)``.

    Each file is loaded with ``partita.io.load`` (sustain pedal applied unless ``sustain=False``);
    a file that cannot be used (missing, not MIDI, corrupt, no pitched notes...) is skipped and
    listed in ``failures`` as ``(path, one-line reason)``, never fatal. ``stats``, a dict: filled
    with ``str(path) -> (seconds to the last note-off, notes)`` of each file read (each file is
    read once).
    """
    from partita.io import MidiError, load, note_array, preprocess

    if windows < 1 or batch_size < 1:
        raise PartitaError("windows and batch_size must be >= 1")
    model = _model(model)
    paths = list(paths)
    load_failures: list[tuple[int, str]] = []

    def items():
        for i, path in enumerate(paths):
            try:
                score = load(path)
                notes = note_array(preprocess(score, sustain=sustain), unit="second")
                if stats is not None and len(notes):
                    stats[str(path)] = (float((notes["onset"] + notes["duration"]).max()), int(len(notes)))
            except MidiError as e:
                load_failures.append((i, str(e)))
                continue
            except Exception as e:  # a reader crash on a damaged file: reported, never fatal
                load_failures.append((i, f"{path}: cannot read the file ({type(e).__name__})"))
                continue
            yield i, notes

    vectors, kept, failures = _run(model, items(), len(paths), windows, batch_size, progress)
    failures = [(i, r if str(paths[i]) in r else f"{paths[i]}: {r}") for i, r in failures]
    bad = sorted(load_failures + failures)
    return vectors, [paths[i] for i in kept], [(paths[i], reason) for i, reason in bad]


def embed_corpus(model, corpus, indices: Optional[Sequence[int]] = None, *, windows: int = 8, seed: int = 0,
                 batch_size: int = 32, progress: Progress = None):
    """Embed pieces of a prepared ``Corpus``: ``(vectors (N, dim), kept_indices, failures)``.

    ``indices``: corpus positions (default: every piece); failures are ``(index, reason)``.
    """
    if windows < 1 or batch_size < 1:
        raise PartitaError("windows and batch_size must be >= 1")
    model = _model(model)
    indices = list(range(len(corpus))) if indices is None else [int(i) for i in indices]
    items = ((i, corpus.notes(i)) for i in indices)
    return _run(model, items, len(indices), windows, batch_size, progress)
