"""partita: deep learning on symbolic music."""

from __future__ import annotations

__version__ = "0.1.0"

from partita.viz.show import show  # noqa: E402  (display a pianoroll and a player in Jupyter)

__all__ = ["__version__", "accompany", "generate", "infill", "load"]


def load(name_or_path, family=None, **kwargs):
    """Load a model: a shipped name (``"gpt-piano"``, ``"featnet-piano"``...) or a bundle folder
    (model, config, tokenizer, card): ``partita.bundle.load``.

    Returns a ``partita.bundle.Bundle``; ``bundle.model`` is the model, in eval mode. ``family``
    (``"gpt"``, ``"musicvae"``...) checks the kind; ``kwargs``: ``device``, ``dtype``. torch is
    imported only here, not by ``import partita``.
    """
    from partita.bundle import load as _load

    return _load(name_or_path, family, **kwargs)


def generate(model=None, prompt=None, **kwargs):
    """Generate pieces with a GPT bundle: ``partita.generation.generate`` (same arguments).

    ``model``: a bundle folder, a loaded ``Bundle``, or None for the shipped model; ``prompt``: None, a MIDI file, a
    ``symusic.Score`` or token ids; ``kwargs``: ``n``, ``composer``, ``chords``/``scale``/``motif``,
    ``prompt_bars``/``prompt_seconds``/``prompt_tokens``, ``temperature``, ``top_k``, ``top_p``,
    ``min_p``, ``max_new_tokens``/``bars``/``seconds``, ``seed``... Returns a list of
    ``symusic.Score``. torch is imported only when this is called.
    """
    from partita.generation import generate as _generate

    return _generate(model, prompt, **kwargs)


def infill(model=None, midi=None, **kwargs):
    """Regenerate a span of a MIDI file with a GPT bundle trained with fill-in-the-middle:
    ``partita.generation.infill.infill`` (same arguments: ``bars=(9, 12)`` or ``seconds=(20, 30)``,
    ``n``, ``config``/sampling options). ``model``: a bundle folder, a shipped name, or None for
    ``gpt-piano``. Returns one result per sample (``.score``, ``.bars``, ``.notes_removed``,
    ``.notes_added``); every note outside the span is kept.
    """
    from partita.generation.infill import infill as _infill

    return _infill(model, midi, **kwargs)


def accompany(midi, **kwargs):
    """Write an accompaniment under the melody of a MIDI file: ``partita.generation.accompany.accompany``
    (same arguments: ``style`` pop/folk, ``melody_track``, ``chords``, ``n``, ``model``, sampling
    options). Returns one result per version (``.score``: the file with every note kept and the new
    track added, ``.melody_track``, ``.added``).
    """
    from partita.generation.accompany import accompany as _accompany

    return _accompany(midi, **kwargs)
