"""Pictures and sound for people: pianorolls (``partita.viz.pianoroll``), ``partita.show``
(``partita.viz.show``) and reports (``partita.viz.report``).

Names are imported on first use, so ``import partita`` (which exposes ``partita.show``) stays
light: numpy and matplotlib load only when something is drawn.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "plot_pianoroll": "partita.viz.pianoroll",
    "pianoroll_png": "partita.viz.pianoroll",
    "save_pianoroll_png": "partita.viz.pianoroll",
    "show": "partita.viz.show",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'partita.viz' has no attribute {name!r}")
