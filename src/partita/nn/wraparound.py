"""Rolled wraparound 3D convolution over helical pianorolls (``[12 pitch classes, 6 octaves, T]``).

The 72 notes of ``partita.represent.pianoroll`` form a helix: reading the grid in (octave, pitch
class) order is chromatic, so the pitch-class neighbour "one above" the last pitch class of
octave k is the *first* pitch class of octave k + 1, and the octave neighbour "one above" octave 5
is octave 0 (the helix closes into a 72-note cycle). ``WraparoundConv3d`` pads the pitch-class and
octave axes with exactly those neighbours before an ordinary (unpadded) ``nn.Conv3d``, so a kernel
of size ``(kp, ko, kt)`` at cell ``(c, o)`` reads the notes ``29 + 12 * (o + j) + (c + i)`` taken
modulo 72, for every ``|i| <= kp // 2`` and ``|j| <= ko // 2``.

Why rolled and not a plain circular pad: padding the pitch-class axis circularly (Harmonixr's
``WraparoundConv3D``) makes B of octave k the neighbour of C of the *same* octave, a pitch 11
semitones away, so the kernel has a seam at the row where the axis happens to start. With the
rolled pad every cell has the same neighbourhood (pitch +-1 semitone, +-1 octave), there is no
fixed "lowest" pitch class, and the layer is exactly equivariant to transposition along the
helix: rolling the input one semitone (``roll_helix(x, 1)``) rolls the output by one semitone
(tested). Stride and dilation act on time only, for the same reason. Time is zero-padded (silence).

The padding is one ``index_select`` with a precomputed index table, so it costs a copy of the
input, and the convolution itself is torch's (oneDNN / cuDNN).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WRAP_MODES", "WraparoundConv3d", "helix_index", "roll_helix"]

N_PITCH_CLASSES = 12
N_OCTAVES = 6

#: ``"helix"``: rolled wraparound (this module's point). ``"pitch"``: circular pad of the
#: pitch-class axis within each octave and zeros beyond the octaves (Harmonixr's layer, kept for
#: the faithful baseline). ``"zeros"``: ordinary zero padding.
WRAP_MODES = ("helix", "pitch", "zeros")

Size3 = Union[int, Sequence[int]]


def _triple(v: Size3) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 sizes (pitch, octave, time), got {v!r}")
    return t  # type: ignore[return-value]


def helix_index(pad_pitch: int, pad_octave: int, mode: str = "helix") -> tuple[Tensor, Tensor]:
    """Index table of the padded grid: ``(index [P, O], valid [P, O])`` with ``P = 12 + 2 pad_pitch``
    and ``O = 6 + 2 pad_octave``; cell ``(a, b)`` of the padded grid holds chromatic note
    ``index[a, b]`` (``octave * 12 + pitch_class``) of the input, or zero where ``valid`` is False."""
    if mode not in WRAP_MODES:
        raise ValueError(f"wrap mode must be one of {WRAP_MODES}, not {mode!r}")
    a = torch.arange(-pad_pitch, N_PITCH_CLASSES + pad_pitch)[:, None]
    b = torch.arange(-pad_octave, N_OCTAVES + pad_octave)[None, :]
    n = N_PITCH_CLASSES * N_OCTAVES
    if mode == "helix":
        index = (b * N_PITCH_CLASSES + a) % n
        valid = torch.ones_like(index, dtype=torch.bool)
    else:
        inside_o = (b >= 0) & (b < N_OCTAVES)
        if mode == "pitch":
            pc = a % N_PITCH_CLASSES
            valid = inside_o.expand(len(a), -1)
        else:
            pc = a.clamp(0, N_PITCH_CLASSES - 1)
            valid = inside_o & (a >= 0) & (a < N_PITCH_CLASSES)
        index = (b.clamp(0, N_OCTAVES - 1) * N_PITCH_CLASSES + pc).expand(len(a), len(b[0]))
        index = index.clone()
    return index, valid


def roll_helix(x: Tensor, semitones: int) -> Tensor:
    """Transpose ``x [..., 12, 6, T]`` by ``semitones`` along the 72-note helix (the top wraps to
    the bottom): what the wraparound convolution is equivariant to."""
    *lead, p, o, t = x.shape
    if (p, o) != (N_PITCH_CLASSES, N_OCTAVES):
        raise ValueError(f"expected [..., 12, 6, T], got {tuple(x.shape)}")
    flat = x.transpose(-3, -2).reshape(*lead, o * p, t)  # chromatic order
    flat = torch.roll(flat, semitones, dims=-2)
    return flat.reshape(*lead, o, p, t).transpose(-3, -2)


class WraparoundConv3d(nn.Module):
    """``nn.Conv3d`` over ``[B, C, 12, 6, T]`` with rolled wraparound padding of pitch and octave.

    ``kernel_size`` is ``(pitch, octave, time)`` with odd pitch/octave sizes (a "same" output grid
    of 12 x 6). ``stride``/``dilation`` apply to time; time is zero-padded by ``padding``
    (default: ``kernel_t // 2``, "same" length at stride 1). ``wrap``: see ``WRAP_MODES``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size3 = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = True,
        wrap: str = "helix",
    ):
        super().__init__()
        kp, ko, kt = _triple(kernel_size)
        if kp % 2 == 0 or ko % 2 == 0:
            raise ValueError(f"pitch and octave kernel sizes must be odd, got {(kp, ko)}")
        if kp > 2 * N_PITCH_CLASSES + 1 or ko > 2 * N_OCTAVES + 1:
            raise ValueError(f"kernel {(kp, ko)} is wider than the helix")
        self.kernel_size = (kp, ko, kt)
        self.wrap = wrap
        self.pad_time = (dilation * (kt - 1)) // 2 if padding is None else int(padding)
        index, valid = helix_index(kp // 2, ko // 2, wrap)
        self.grid = tuple(index.shape)
        # Buffers (not parameters, not saved): rebuilt from the config on load.
        self.register_buffer("index", index.reshape(-1), persistent=False)
        self.register_buffer("valid", valid.reshape(-1).float(), persistent=False)
        self.all_valid = bool(valid.all())
        self.conv = nn.Conv3d(in_channels, out_channels, (kp, ko, kt), stride=(1, 1, stride),
                              dilation=(1, 1, dilation), padding=0, bias=bias)

    def pad(self, x: Tensor) -> Tensor:
        """``[B, C, 12, 6, T]`` -> ``[B, C, 12 + 2 pp, 6 + 2 po, T + 2 pt]`` with helix neighbours."""
        B, C, P, O, T = x.shape
        if (P, O) != (N_PITCH_CLASSES, N_OCTAVES):
            raise ValueError(f"expected [B, C, 12, 6, T], got {tuple(x.shape)}")
        flat = x.transpose(2, 3).reshape(B, C, O * P, T)  # chromatic: octave * 12 + pitch class
        out = flat.index_select(2, self.index)
        if not self.all_valid:
            out = out * self.valid.to(out.dtype)[None, None, :, None]
        out = out.view(B, C, *self.grid, T)
        if self.pad_time:
            out = F.pad(out, (self.pad_time, self.pad_time))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))

    def extra_repr(self) -> str:
        return f"wrap={self.wrap!r}, pad_time={self.pad_time}"
