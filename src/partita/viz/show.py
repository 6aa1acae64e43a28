"""``partita.show(x)``: look at and listen to a piece in Jupyter.

::

    import partita
    partita.show("piece.mid")                 # a pianoroll and an audio player
    partita.show(partita.generate(bars=8)[0])  # a generated score (or a Sample with .score)

In a notebook it displays the pianoroll and, when a SoundFont is found
(``partita.io.audio.find_soundfont``), an ``IPython.display.Audio`` player of the rendering (mono,
22.05 kHz: small enough to keep in the notebook file); it returns None so the figure is not shown
twice. Anywhere else (a script, a terminal) it returns the matplotlib ``Figure``.
"""

from __future__ import annotations

from typing import Any

from partita.errors import PartitaError

#: Sample rate of the players ``show`` embeds (the notebook stores the audio).
SHOW_SAMPLE_RATE = 22050


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell that can display images and audio)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_objects(
    x: Any,
    *,
    audio: bool = True,
    soundfont=None,
    seconds: float | None = None,
    title: str | None = None,
    **plot_kwargs,
) -> tuple[Any, Any, str | None]:
    """What :func:`show` displays: ``(figure, IPython Audio or None, note or None)``.

    ``note`` says why there is no player (no SoundFont found) when ``audio`` was asked for.
    """
    from partita.io.audio import render, to_score
    from partita.viz.pianoroll import plot_pianoroll

    score = to_score(x)  # read a file once for both the plot and the audio
    if seconds is not None and plot_kwargs.get("unit", "beat") == "second":
        plot_kwargs.setdefault("end", seconds)
    fig = plot_pianoroll(score, title=title, **plot_kwargs)
    player, note = None, None
    if audio:
        try:
            wav = render(score, soundfont=soundfont, sample_rate=SHOW_SAMPLE_RATE, stereo=False, seconds=seconds)
        except PartitaError as e:
            note = f"no audio: {e}"
        else:
            try:
                from IPython.display import Audio
            except ImportError:
                return fig, None, "no audio player: IPython is not installed (pip install ipython)"
            # normalize=False: render() has already set the level; IPython would rescale again.
            player = Audio(data=wav[0], rate=SHOW_SAMPLE_RATE, normalize=False)
    return fig, player, note


def show(
    x: Any,
    *,
    audio: bool = True,
    soundfont=None,
    seconds: float | None = None,
    title: str | None = None,
    **plot_kwargs,
):
    """Display a pianoroll of ``x`` and an audio player in Jupyter; elsewhere return the Figure.

    ``x``: a MIDI path, a symusic Score, a note array (seconds) or a generated sample (``.score``).
    ``audio=False``: no player. ``seconds``: play only the first seconds. ``soundfont``: as for
    ``partita.io.audio.render``. Other keywords go to ``plot_pianoroll`` (``unit``, ``start``, ``end``...).
    """
    if not in_notebook():
        from partita.io.audio import to_score
        from partita.viz.pianoroll import plot_pianoroll

        return plot_pianoroll(to_score(x), title=title, **plot_kwargs)
    from IPython.display import Image, display

    from partita.viz.pianoroll import figure_png

    fig, player, note = show_objects(x, audio=audio, soundfont=soundfont, seconds=seconds, title=title, **plot_kwargs)
    display(Image(data=figure_png(fig)))
    if player is not None:
        display(player)
    elif note:
        print(note)
    return None
