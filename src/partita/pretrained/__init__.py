"""Bundles that ship inside the package, trained by partita's own commands on the bundled corpus
(music21's), on ASAP (real piano performances and scores; the piano models, CC BY-NC-SA 4.0 data)
or on POP909 (the chord tagger ``pop-chords``, MIT data).

Each folder is a bundle (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``card.json``); its card records the commands that made it and its test-split metrics.
"""

from __future__ import annotations

from pathlib import Path

from partita.errors import PartitaError

ROOT = Path(__file__).resolve().parent
GPT = "gpt-small"
GPT_PIANO = "gpt-piano"
POP_CHORDS = "pop-chords"  # the chords under a melody, learnt from POP909 (partita accompany --style pop)
CHORALE_HARMONY = "chorale-harmony"  # alto, tenor and bass under a soprano (accompany --style chorale)
CLASSIFIER = "classifier-small"
TVAE = "tvae-small"
MUSICVAE_2BAR = "musicvae-2bar"
MUSICVAE_16BAR = "musicvae-16bar"
MUSICVAE_16BAR_FLAT = "musicvae-16bar-flat"  # the flat decoder of the same size, for the comparison
SIAVIT = "siavit-small"
FEATNET = "featnet-piano"
INDEX = "bundled-index"
PIANO_INDEX = "piano-index"


def bundle_path(name: str = GPT) -> Path:
    """The folder of a shipped bundle."""
    path = ROOT / name
    if not (path / "config.json").exists():
        shipped = sorted(p.name for p in ROOT.iterdir() if (p / "config.json").exists())
        raise PartitaError(f"{name}: no such bundle folder or shipped model (shipped: {', '.join(shipped) or 'none'})")
    return path


def default_gpt(prompt=None) -> Path:
    """The shipped transformer for a prompt: ``gpt-piano`` (trained on ASAP's piano performances)
    when the prompt is a piano MIDI file (``partita.io.is_piano``), else ``gpt-small`` (the bundled
    corpus's chorales, madrigals, quartets and folk tunes)."""
    import os

    if isinstance(prompt, (str, os.PathLike)) and (ROOT / GPT_PIANO / "config.json").exists():
        from partita.io import is_piano

        if is_piano(prompt):
            return bundle_path(GPT_PIANO)
    return bundle_path(GPT)
