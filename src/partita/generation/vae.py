"""What a MusicVAE does for a user: reconstruct a melody, sample new ones, interpolate between two.

::

    from partita.generation.vae import reconstruct, sample, interpolate, interpolate_files
    rec = reconstruct(None, "tune.mid")            # the shipped 2-bar model; rec.score is a Score
    melodies = sample(None, n=8, seed=0)           # Melody objects; .to_score() for MIDI
    path = interpolate(None, "a.mid", "b.mid", steps=7)
    scores = interpolate_files("a.mid", "b.mid")   # [A's reconstruction, 7 steps, B's reconstruction]

``bundle`` is a MusicVAE bundle folder, a loaded ``Bundle``, or None for the shipped model of the
window length (``bars=2``: ``musicvae-2bar``, ``bars=16``: ``musicvae-16bar``, hierarchical).

Reading a melody (``melody_of``): a MIDI file, a ``symusic.Score``, a ``Melody`` or an events
array. From a score we take one line per track (``extract_melodies``, skyline for a polyphonic
track) and use the track with the most notes, or ``track=`` (an index of ``score.tracks``). The
line is cut into consecutive windows of the model's length; the last one is completed with rest.
A file with no usable line, or whose line is shorter than one window, is a ``PartitaError``
(``MidiError``) with a one-line message.

Outputs keep the input's clock: a reconstruction (and the input line written beside it) goes
back where the line was, with the file's tempo map, time and key signatures (``Reconstruction.frame``);
interpolations take the tempo, time and key signature in force where A's melody starts. The padding
rest that completes the last window stays silent in the reconstruction (a note the model holds
into it ends where the input's music ends), and the input line is written as read: a note held
across a window boundary is not struck again.

Decoding is greedy (temperature 0) for ``reconstruct`` and ``interpolate`` by default: a
reconstruction is the model's best guess, and the same input always gives the same output; with
a temperature > 0 it samples, seeded by ``seed``. The code of a window is the mean of its
posterior (``mu``). Interpolation is spherical (``slerp``) between the codes of A's and B's
first windows, so its first and last melodies are exactly the reconstructions of A and B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import symusic
from symusic import Score

from partita.errors import PartitaError
from partita.io.midi import MidiError
from partita.represent.melody import (
    HOLD,
    NOTE_OFF,
    STEPS_PER_BAR,
    Melody,
    canonicalize,
    extract_melodies,
    validate,
)

__all__ = [
    "Reconstruction",
    "interpolation_frame",
    "interpolate",
    "interpolate_files",
    "load_vae",
    "melody_of",
    "reconstruct",
    "sample",
]

Source = Union[str, os.PathLike, Score, Melody, np.ndarray]


# --- the model ---------------------------------------------------------------------------------


def load_vae(bundle: Any = None, *, bars: int = 2, device: Any = "cpu"):
    """A loaded MusicVAE ``Bundle`` from a folder, a ``Bundle``, or None (the shipped model for ``bars``)."""
    from partita import pretrained
    from partita.bundle import load

    shipped = {2: pretrained.MUSICVAE_2BAR, 16: pretrained.MUSICVAE_16BAR}
    if bundle is None and bars not in shipped:
        raise PartitaError(f"partita ships 2-bar and 16-bar MusicVAEs, not {bars}-bar; pass --model for your own")
    bundle = load(bundle, "musicvae", default=shipped.get(bars), device=device)
    bundle.model.eval()
    return bundle


def _generator(seed: int, device: Any):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# --- melodies in -------------------------------------------------------------------------------


def _qpm(score: Score) -> float:
    return float(score.tempos[0].qpm) if len(score.tempos) else 120.0


def melody_of(source: Source, *, track: Optional[int] = None, skyline: bool = True) -> tuple[Melody, float]:
    """``(melody, qpm)`` of a MIDI file, score, ``Melody`` or events array (see the module doc)."""
    if isinstance(source, Melody):
        return source, 120.0
    if isinstance(source, np.ndarray):
        try:
            events = canonicalize(validate(source))
        except ValueError as e:
            raise PartitaError(f"not melody events: {e}") from None
        if events.ndim != 1:
            raise PartitaError(f"one melody is a 1-D events array, got shape {events.shape}")
        return Melody(events, 0, 0), 120.0
    name = None
    if isinstance(source, (str, os.PathLike)):
        from partita.io.midi import load

        name = str(source)
        score = load(source)
    elif isinstance(source, Score):
        score = source
    else:
        raise PartitaError(f"expected a MIDI file, a symusic Score or melody events, got {type(source).__name__}")
    try:
        melodies = extract_melodies(score, skyline=skyline)
    except MidiError as e:
        raise MidiError(e.reason, str(e) + "; give a file with a melody line of at least 4 notes", name) from None
    if track is None:
        melody = max(melodies, key=lambda m: (m.n_notes, -m.track))
    else:
        hits = [m for m in melodies if m.track == track]
        if not hits:
            have = ", ".join(str(m.track) for m in melodies)
            raise MidiError("no_melody", f"track {track} has no melody line (tracks with one: {have})", name)
        melody = hits[0]
    return melody, _qpm(score.to("tick") if score.ttype != symusic.TimeUnit.tick else score)


def _windows(melody: Melody, bars: int, max_windows: Optional[int] = None, what: str = "input") -> np.ndarray:
    """The melody cut into consecutive ``bars``-bar windows ``[n, bars * 16]``, the last completed with rest."""
    return _cut(melody, bars, max_windows, what)[0]


def _cut(melody: Melody, bars: int, max_windows: Optional[int] = None, what: str = "input") -> tuple[np.ndarray, np.ndarray, int]:
    """``(windows, line, music)``: the windows the model reads (a window that opens mid-note starts
    with that note), the same steps as read (no note struck again at a window's start), and how
    many of those steps are the melody's (the rest is the padding that completes the last window)."""
    size = bars * STEPS_PER_BAR
    ev = canonicalize(melody.events)
    if len(ev) < size:
        raise MidiError(
            "too_short",
            f"the {what} melody is {len(ev) // STEPS_PER_BAR} bar(s) long; this model needs at least {bars} bar(s)",
        )
    n = -(-len(ev) // size)
    if max_windows is not None:
        n = min(n, max(1, int(max_windows)))
    padded = np.full(n * size, HOLD, ev.dtype)
    keep = min(len(ev), n * size)
    padded[:keep] = ev[:keep]
    if keep < n * size:
        padded[keep] = NOTE_OFF  # end the last note where the melody ended; a no-op (HOLD) in silence
    rows = padded.reshape(n, size).copy()
    from partita.represent.melody import sounding

    # A window that opens mid-note starts with that note (the model never saw a leading HOLD as sound).
    pitch = sounding(padded)
    starts = np.arange(n) * size
    carried = (rows[:, 0] == HOLD) & (pitch[starts] >= 0)
    rows[carried, 0] = pitch[starts[carried]]
    return canonicalize(rows), canonicalize(padded), keep


def _encode(model, windows: np.ndarray):
    import torch

    x = torch.as_tensor(np.asarray(windows, np.int64), device=next(model.parameters()).device)
    with torch.no_grad():
        mu, _ = model.encode(x)
    return mu


def _decode(model, z, temperature: float, seed: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        events = model.decode(z, temperature=temperature, generator=_generator(seed, z.device) if temperature > 0 else None)
    return canonicalize(events.cpu().numpy().astype(np.int16))


# --- operations --------------------------------------------------------------------------------


@dataclass(eq=False)
class Reconstruction:
    """A melody and what the model made of it, window by window (same length)."""

    original: Melody  # the input line as read, cut and completed to whole windows
    melody: Melody  # the reconstruction (silent in the padding that completes the last window)
    qpm: float = 120.0
    windows: int = 0
    frame: Optional[Score] = None  # the input's tempo map, time and key signatures (None: 4/4 at qpm)

    @property
    def accuracy(self) -> float:
        """Fraction of steps whose event the reconstruction got right."""
        return float(np.mean(self.original.events == self.melody.events))

    @property
    def score(self) -> Score:
        """The reconstruction where the input line was, in the input's tempo and metre."""
        return self.melody.to_score(qpm=self.qpm, frame=self.frame, start_step=self.melody.start_step)

    @property
    def input_score(self) -> Score:
        """The input line as read, in the same place, tempo and metre."""
        return self.original.to_score(qpm=self.qpm, frame=self.frame, start_step=self.original.start_step)


def reconstruct(
    bundle: Any,
    source: Source,
    *,
    track: Optional[int] = None,
    max_windows: Optional[int] = None,
    temperature: float = 0.0,
    seed: int = 0,
    bars: int = 2,
) -> Reconstruction:
    """Encode a melody window by window and decode it again (greedy unless ``temperature`` > 0)."""
    vae = load_vae(bundle, bars=bars)
    model = vae.model
    melody, qpm = melody_of(source, track=track)
    rows, line, music = _cut(melody, model.config.bars, max_windows)
    out = _decode(model, _encode(model, rows), temperature, seed)
    original = Melody(line, melody.track, melody.program, melody.start_step, melody.name)
    rebuilt = Melody(_silent_after(out.reshape(-1), music), melody.track, melody.program, melody.start_step, melody.name)
    return Reconstruction(original, rebuilt, qpm, len(rows), _frame_of(source))


def _silent_after(events: np.ndarray, step: int) -> np.ndarray:
    """``events`` with nothing sounding from ``step`` on: the padding rest that completes the last
    window is the input's silence, never a note the model held into it."""
    ev = np.array(events, copy=True)
    if step < len(ev):
        ev[step:] = HOLD
        ev[step] = NOTE_OFF  # canonical form turns it back into HOLD where nothing sounds
    return canonicalize(ev)


def _frame_of(source: Source, at_step: Optional[int] = None) -> Optional[Score]:
    """The tempo map, time and key signatures of a MIDI file or score (None for events); with
    ``at_step``, only those in force at that 16th-note step, moved to 0."""
    if isinstance(source, (str, os.PathLike)):
        from partita.io.midi import load

        score = load(source)
    elif isinstance(source, Score):
        score = source if source.ttype == symusic.TimeUnit.tick else source.to("tick")
    else:
        return None
    frame = Score(int(score.ticks_per_quarter))
    if at_step is None:
        frame.tempos, frame.time_signatures, frame.key_signatures = score.tempos, score.time_signatures, score.key_signatures
        return frame
    tick = int(at_step) * int(score.ticks_per_quarter) // 4
    for name in ("tempos", "time_signatures", "key_signatures"):
        events = sorted(getattr(score, name), key=lambda e: e.time)
        before = [e for e in events if e.time <= tick]
        if before:
            e = before[-1].copy()
            e.time = 0
            getattr(frame, name).append(e)
    return frame



def sample(
    bundle: Any = None,
    n: int = 8,
    seed: int = 0,
    temperature: float = 0.5,
    *,
    bars: int = 2,
) -> list[Melody]:
    """``n`` melodies decoded from codes drawn from the model's prior (``sample_prior``); sample j is the same whatever ``n``."""
    import torch

    if n < 1:
        raise PartitaError(f"-n must be at least 1, got {n}")
    if temperature < 0:
        raise PartitaError(f"temperature must be >= 0, got {temperature}")
    vae = load_vae(bundle, bars=bars)
    model = vae.model
    device = next(model.parameters()).device
    out = []
    for j in range(n):  # one generator per sample: sample j does not depend on n
        g = _generator(seed * 1_000_003 + j, "cpu")
        z = model.sample_prior(1, g).to(device)
        with torch.no_grad():
            ev = model.decode(z, temperature=temperature, generator=g if temperature > 0 else None)
        out.append(Melody(canonicalize(ev[0].cpu().numpy().astype(np.int16)), 0, 0, 0, f"sample-{j}"))
    return out


def interpolate(
    bundle: Any,
    a: Source,
    b: Source,
    steps: int = 7,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    bars: int = 2,
    track_a: Optional[int] = None,
    track_b: Optional[int] = None,
) -> list[Melody]:
    """``steps + 2`` melodies: A's reconstruction, ``steps`` points along the great circle from A's
    code to B's (slerp), and B's reconstruction. A and B are their first windows of the model's length."""
    import torch

    from partita.models.musicvae import slerp

    if steps < 0:
        raise PartitaError(f"--steps must be >= 0, got {steps}")
    vae = load_vae(bundle, bars=bars)
    model = vae.model
    ma, qpm = melody_of(a, track=track_a)
    mb, _ = melody_of(b, track=track_b)
    wa = _windows(ma, model.config.bars, 1, "first")
    wb = _windows(mb, model.config.bars, 1, "second")
    z = _encode(model, np.concatenate([wa, wb]))
    ts = np.linspace(0.0, 1.0, steps + 2)
    zs = torch.cat([slerp(z[:1], z[1:], float(t)) for t in ts])
    out = _decode(model, zs, temperature, seed)
    return [Melody(row, 0, ma.program, 0, f"interpolation-{k}") for k, row in enumerate(out)]


def interpolation_frame(a: Source, track: Optional[int] = None) -> Optional[Score]:
    """The tempo, time and key signature in force where A's melody starts (the first window
    every interpolation step stands for), at tick 0."""
    if not isinstance(a, (str, os.PathLike, Score)):
        return None
    melody, _ = melody_of(a, track=track)
    return _frame_of(a, melody.start_step)


def interpolate_files(a, b, steps: int = 7, bundle: Any = None, seed: int = 0, temperature: float = 0.0,
                      bars: int = 2) -> list[Score]:
    """The demo's interpolation: ``interpolate`` with the shipped model for ``bars`` by default, as Scores."""
    frame = interpolation_frame(a)
    return [m.to_score(frame=frame) for m in interpolate(bundle, a, b, steps, temperature=temperature, seed=seed, bars=bars)]
