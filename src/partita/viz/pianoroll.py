"""Pianoroll plots: one rectangle per note, velocity as colour, bar lines, one colour per track.

::

    from partita.viz.pianoroll import plot_pianoroll, save_pianoroll_png
    fig = plot_pianoroll("piece.mid", title="Prelude")         # a matplotlib Figure
    save_pianoroll_png(score, "roll.png", width_px=900)         # a compact PNG for a report

Figures are made with matplotlib's object API (``Figure`` on an Agg canvas), not ``pyplot``: no
display is needed, and plotting a thousand pieces in a loop leaks no figures. Pass ``ax=`` to draw
into your own pyplot axes instead.

Colours: with one track, the velocity picks a colour of a colormap (``viridis``; a colour bar says
which); with several, each track has its own hue (``tab10``) and the velocity sets its opacity, so
both stay readable. Bar lines follow the score's time signatures (4/4 when it has none, as MIDI
assumes); the time axis is in beats (quarter notes, ``unit="beat"``) or seconds.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from partita.errors import PartitaError

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

#: General MIDI program names (the GM 1 sound set), by program number.
GM_PROGRAMS: tuple[str, ...] = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavi", "Celesta", "Glockenspiel", "Music Box",
    "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer", "Drawbar Organ", "Percussive Organ",
    "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar",
    "Guitar Harmonics", "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani", "String Ensembles 1",
    "String Ensembles 2", "SynthStrings 1", "SynthStrings 2", "Choir Aahs", "Voice Oohs", "Synth Voice",
    "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section",
    "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe",
    "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle",
    "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)",
    "Lead 4 (chiff)", "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)",
    "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)", "FX 1 (rain)", "FX 2 (soundtrack)",
    "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)",
    "FX 8 (sci-fi)", "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bag pipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal", "Guitar Fret Noise, Guitar Cutting Noise", "Breath Noise, Flute Key Click",
    "Seashore, Rain, Thunder, Wind, Stream, Bubbles", "Bird Tweet, Dog, Horse Gallop",
    "Telephone Ring, Door Creaking, Door, Scratch, Wind Chime", "Helicopter, Car Sounds",
    "Applause, Laughing, Screaming, Punch, Heart Beat, Footstep",
    "Gunshot, Machine Gun, Lasergun, Explosion",
)


def pitch_name(pitch: int) -> str:
    """MIDI pitch to a name with octave, middle C (60) being ``C4``."""
    return f"{PITCH_NAMES[int(pitch) % 12]}{int(pitch) // 12 - 1}"


def program_name(program: int, is_drum: bool = False) -> str:
    """General MIDI instrument name of ``program`` (0-127), or ``Drums``."""
    if is_drum:
        return "Drums"
    return GM_PROGRAMS[int(program)] if 0 <= int(program) < 128 else f"program {int(program)}"


def bar_ticks(score) -> np.ndarray:
    """Tick of every bar start from 0 to the score's end: the file's bar grid
    (``partita.io.timing.bar_starts``: its time signatures, 4/4 when there is none)."""
    from partita.io.timing import bar_starts

    end = max(int(score.end()), 1)
    starts = bar_starts(score, end)
    return starts[starts <= end]


def _as_score(x):
    from partita.io.audio import to_score

    return to_score(x)


def _to_unit(ticks: np.ndarray, score, unit: str) -> np.ndarray:
    if unit == "beat":
        return np.asarray(ticks, np.float64) / score.tpq
    from partita.io.timing import seconds_at

    return seconds_at(score, np.asarray(ticks))


def plot_pianoroll(
    x: Any,
    *,
    ax=None,
    title: str | None = None,
    unit: str = "beat",
    start: float | None = None,
    end: float | None = None,
    bar_lines: bool = True,
    cmap: str = "viridis",
    legend: bool = True,
    figsize: tuple[float, float] = (12.0, 4.0),
    dpi: int = 100,
):
    """Draw a pianoroll of ``x`` (a MIDI path, a symusic Score, a note array in seconds, or a
    generated sample with ``.score``) and return its matplotlib ``Figure``.

    ``unit``: the time axis, ``"beat"`` (quarter notes) or ``"second"``; ``start``/``end`` crop it
    (in that unit). ``ax``: draw into these axes (the figure returned is theirs).
    """
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize, to_rgba
    from matplotlib.lines import Line2D

    if unit not in ("beat", "second"):
        raise PartitaError(f"unit must be 'beat' or 'second', not {unit!r}")
    score = _as_score(x)
    from partita.io.midi import note_array

    notes = note_array(score, unit="tick")
    on = _to_unit(notes["onset"], score, unit)
    off = _to_unit(notes["onset"] + notes["duration"], score, unit)
    lo_t = 0.0 if start is None else float(start)
    hi_t = (float(off.max()) if len(off) else 1.0) if end is None else float(end)
    if hi_t <= lo_t:
        raise PartitaError(f"nothing to draw between {lo_t:g} and {hi_t:g} {unit}s; check start and end")
    keep = (off > lo_t) & (on < hi_t)
    notes, on, off = notes[keep], on[keep], off[keep]

    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure

    # One polygon per note, built at once: 10k notes draw in well under a second.
    pitch = notes["pitch"].astype(np.float64)
    verts = np.empty((len(notes), 4, 2))
    verts[:, 0, 0] = verts[:, 1, 0] = on
    verts[:, 2, 0] = verts[:, 3, 0] = np.maximum(off, on + 1e-6)
    verts[:, [0, 3], 1] = (pitch - 0.4)[:, None]
    verts[:, [1, 2], 1] = (pitch + 0.4)[:, None]
    vel = notes["velocity"].astype(np.float64) / 127.0
    tracks = sorted(set(zip(notes["track"].tolist(), notes["program"].tolist(), notes["is_drum"].tolist())))
    norm = Normalize(0, 127)
    if len({t for t, _, _ in tracks}) <= 1:
        import matplotlib

        colors = matplotlib.colormaps[cmap](norm(notes["velocity"].astype(np.float64)))
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        if len(notes):
            fig.colorbar(mappable, ax=ax, pad=0.01, fraction=0.03, label="velocity")
    else:
        import matplotlib

        palette = matplotlib.colormaps["tab10"]
        index = {t: k for k, (t, _, _) in enumerate(tracks)}
        colors = np.array([palette(index[int(t)] % 10) for t in notes["track"]]).reshape(-1, 4)
        colors[:, 3] = 0.25 + 0.75 * vel  # velocity as opacity, hue for the track
        if legend:
            handles = [
                Line2D([], [], color=palette(k % 10), lw=6, label=f"{t}: {program_name(p, d)}")
                for k, (t, p, d) in enumerate(tracks)
            ]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False,
                      ncol=max(1, (len(handles) + 11) // 12), title="track", title_fontsize=7)
    ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors=to_rgba("black", 0.35), linewidths=0.3))

    lo_p = int(pitch.min()) - 2 if len(pitch) else 58
    hi_p = int(pitch.max()) + 2 if len(pitch) else 74
    ax.set_xlim(lo_t, hi_t)
    ax.set_ylim(lo_p - 0.5, hi_p + 0.5)
    if bar_lines:
        bars = _to_unit(bar_ticks(score), score, unit)
        bars = bars[(bars >= lo_t) & (bars <= hi_t)]
        if len(bars) <= 400:  # beyond that they would paint the plot grey
            ax.vlines(bars, lo_p - 0.5, hi_p + 0.5, colors="0.55", linewidths=0.6, zorder=0)
    # Pitch labels: every C, plus every E and A when the range is small enough to read them.
    step = (0, 4, 9) if hi_p - lo_p <= 36 else (0,)
    ticks = [p for p in range(lo_p, hi_p + 1) if p % 12 in step]
    ax.set_yticks(ticks)
    ax.set_yticklabels([pitch_name(p) for p in ticks], fontsize=8)
    ax.set_xlabel("beats (quarter notes)" if unit == "beat" else "seconds")
    ax.grid(axis="y", color="0.9", lw=0.5)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, loc="left", fontsize=10)
    return fig


def figure_png(fig, *, dpi: int | None = None) -> bytes:
    """The PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def pianoroll_png(x: Any, *, width_px: int = 900, height_px: int = 260, **kwargs) -> bytes:
    """A compact pianoroll PNG of ``x`` (about ``width_px`` x ``height_px``), as bytes, for reports."""
    if width_px < 100 or height_px < 60:
        raise PartitaError(f"a {width_px}x{height_px} pixel pianoroll is too small to read; use at least 100x60")
    dpi = 100
    kwargs.setdefault("legend", True)
    fig = plot_pianoroll(x, figsize=(width_px / dpi, height_px / dpi), dpi=dpi, **kwargs)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_pianoroll_png(x: Any, path: str | os.PathLike, *, width_px: int = 900, height_px: int = 260, **kwargs) -> Path:
    """Write :func:`pianoroll_png` of ``x`` to ``path``."""
    path = Path(path)
    data = pianoroll_png(x, width_px=width_px, height_px=height_px, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
