"""partita: deep learning on symbolic music."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path, **kwargs):
    """Load a bundle folder (model, config, tokenizer, card): ``partita.bundle.load_bundle``.

    Returns a ``partita.bundle.Bundle``; ``bundle.model`` is the model, in eval mode.
    ``kwargs``: ``device``, ``dtype``. torch is imported only here, not by ``import partita``.
    """
    from partita.bundle import load_bundle

    return load_bundle(path, **kwargs)
