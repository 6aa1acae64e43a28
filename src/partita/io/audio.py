"""Audio from MIDI: render a score through a SoundFont, write WAV/FLAC/OGG/MP3, small clips for reports.

::

    from partita.io.audio import render, write_audio, find_soundfont
    audio = render("piece.mid", "piece.wav")            # (channels, samples) float32 in [-1, 1]
    audio = render(score, soundfont="MyFont.sf2", sample_rate=22050, stereo=False)

The SoundFont is ``soundfont=`` when given, else the file or folder in the environment variable
``PARTITA_SOUNDFONT``, else the first General MIDI font found in the usual system folders
(Debian's ``fluid-soundfont-gm`` and ``timgm6mb-soundfont`` install into ``/usr/share/sounds/sf2``).
When none is found the error says how to get one. symusic's own default SoundFont is downloaded
from the internet, so partita never asks symusic for it: machines running this may be offline.

Engines. ``engine="symusic"`` uses symusic's synthesizer (Prestosynth). symusic 0.6.0's wheel
cannot return the rendered buffer to Python (its binding lacks the Eigen caster, so every
``Synthesizer.render`` call raises ``TypeError: Unable to convert function return value``), so
partita carries its own small SoundFont 2 sample player (``engine="sampler"``, below): it reads the
same SF2 file and plays each note's sample zones with pitch shifting, loops, the volume envelope,
attenuation, velocity and pan, like a basic SF2 synthesizer (no filters, modulation LFOs, chorus or
reverb). ``engine="auto"`` (the default) uses symusic where its render works and the sampler
elsewhere. Both are deterministic: the same score and font give the same samples.

Writing: ``.wav`` with the standard library (16-bit PCM); ``.flac``, ``.ogg`` (Vorbis) and ``.mp3``
through libsndfile (the ``soundfile`` package when installed, else the system's ``libsndfile``
through ctypes); without it those suffixes give a one-line error that says to write ``.wav``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import tempfile
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from partita.errors import PartitaError

#: Folders searched for a SoundFont, in order, when neither ``soundfont=`` nor PARTITA_SOUNDFONT is set.
SOUNDFONT_DIRS: tuple[str, ...] = (
    "/usr/share/sounds/sf2",
    "/usr/share/soundfonts",
    "/usr/share/sounds/sf3",
    "/usr/local/share/soundfonts",
    "/usr/local/share/sounds/sf2",
    "/opt/homebrew/share/soundfonts",
    "~/.local/share/soundfonts",
)
#: Preferred file names inside those folders (General MIDI fonts); any other .sf2/.sf3 comes after.
PREFERRED_SOUNDFONTS: tuple[str, ...] = ("FluidR3_GM.sf2", "TimGM6mb.sf2", "default-GM.sf2", "MuseScore_General.sf2", "FluidR3_GM.sf3", "MuseScore_General.sf3")
ENV_VAR = "PARTITA_SOUNDFONT"

#: Formats ``write_audio`` knows, by suffix. libsndfile format codes: major | subtype (PCM_16, VORBIS, MPEG III).
_SNDFILE_FORMATS = {".flac": 0x170000 | 0x0002, ".ogg": 0x200000 | 0x0060, ".mp3": 0x230000 | 0x0082}
_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
AUDIO_SUFFIXES = (".wav", *_SNDFILE_FORMATS)

ScoreLike = Any  # a path, MIDI bytes, a symusic Score, a NOTE_DTYPE array, or an object with .score


# --------------------------------------------------------------------------- finding a SoundFont


def _fonts_in(folder: Path) -> list[Path]:
    try:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sf2", ".sf3") and p.is_file())
    except OSError:
        return []
    rank = {n.lower(): i for i, n in enumerate(PREFERRED_SOUNDFONTS)}
    # Preferred names first, then SF2 before SF3 (the sampler reads SF2 only), then by name.
    return sorted(found, key=lambda p: (rank.get(p.name.lower(), len(rank)), p.suffix.lower() != ".sf2", p.name))


def find_soundfont(soundfont: str | os.PathLike | None = None, *, search: list | tuple | None = None) -> Path:
    """The SoundFont to render with: ``soundfont`` if given, else ``$PARTITA_SOUNDFONT`` (a file, or
    a folder to search), else the first font in ``search`` (default ``SOUNDFONT_DIRS``).

    Raises ``PartitaError`` (one line, saying how to get one) when there is none.
    """
    if soundfont is not None:
        path = Path(soundfont).expanduser()
        if path.is_dir():
            fonts = _fonts_in(path)
            if not fonts:
                raise PartitaError(f"{path}: no .sf2/.sf3 SoundFont in this folder; pass a SoundFont file")
            return fonts[0]
        if not path.is_file():
            raise PartitaError(f"{path}: no such SoundFont file; pass an existing .sf2 file with --soundfont")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        # An explicit setting is obeyed alone: a wrong value should not silently fall back.
        path = Path(env).expanduser()
        fonts = [path] if path.is_file() else _fonts_in(path)
        if not fonts:
            raise PartitaError(f"no SoundFont found: {ENV_VAR}={env} is not a .sf2/.sf3 file or a folder holding one; point it at a SoundFont, or unset it")
        return fonts[0]
    folders = [Path(f).expanduser() for f in (SOUNDFONT_DIRS if search is None else search)]
    for folder in folders:
        fonts = _fonts_in(folder)
        if fonts:
            return fonts[0]
    raise PartitaError(
        "no SoundFont found (searched " + ", ".join(str(f) for f in folders) + "): install one "
        "(Debian/Ubuntu: sudo apt-get install fluid-soundfont-gm), pass --soundfont FILE.sf2, or set " + ENV_VAR
    )


def have_soundfont() -> bool:
    """True when :func:`find_soundfont` finds a font (so audio can be rendered)."""
    try:
        find_soundfont()
        return True
    except PartitaError:
        return False


# --------------------------------------------------------------------------- SoundFont 2 reader

# Generator numbers (SoundFont 2.04 spec, section 8.1.2) that the sampler uses.
_START, _END, _LOOP_START, _LOOP_END = 0, 1, 2, 3
_START_COARSE, _END_COARSE, _LOOP_START_COARSE, _LOOP_END_COARSE = 4, 12, 45, 50
_PAN = 17
_DELAY, _ATTACK, _HOLD, _DECAY, _SUSTAIN, _RELEASE = 33, 34, 35, 36, 37, 38
_KEY_TO_HOLD, _KEY_TO_DECAY = 39, 40
_INSTRUMENT, _KEY_RANGE, _VEL_RANGE = 41, 43, 44
_KEYNUM, _VELOCITY, _ATTENUATION = 46, 47, 48
_COARSE_TUNE, _FINE_TUNE, _SAMPLE_ID, _SAMPLE_MODES, _SCALE_TUNING, _ROOT_KEY = 51, 52, 53, 54, 56, 58
_N_GENS = 61
_RANGES = (_KEY_RANGE, _VEL_RANGE)
# Generators that are not summed from preset to instrument level (spec 8.5: the rest add).
_NOT_ADDITIVE = {_START, _END, _LOOP_START, _LOOP_END, _START_COARSE, _END_COARSE, _LOOP_START_COARSE,
                 _LOOP_END_COARSE, _INSTRUMENT, _KEY_RANGE, _VEL_RANGE, _KEYNUM, _VELOCITY, _SAMPLE_ID,
                 _SAMPLE_MODES, 57, _ROOT_KEY}


def _default_gens() -> np.ndarray:
    g = np.zeros(_N_GENS, np.int64)
    g[[_DELAY, _ATTACK, _HOLD, _DECAY, _RELEASE, 25, 26, 27, 28, 30, 21, 23]] = -12000  # envelope/LFO times: ~1 ms
    g[8] = 13500  # initialFilterFc
    g[[_KEYNUM, _VELOCITY, _ROOT_KEY]] = -1
    g[_SCALE_TUNING] = 100
    return g


@dataclass(frozen=True)
class Zone:
    """One playable sample region of a preset: its key/velocity ranges and merged generators."""

    key_lo: int
    key_hi: int
    vel_lo: int
    vel_hi: int
    gens: tuple  # _N_GENS generator values (instrument level, plus the preset's additive offsets)
    sample: int  # index into SoundFont.samples


class SoundFont:
    """A SoundFont 2 file, parsed once: presets, instruments, zones and the sample data (memory-mapped).

    Raises ``PartitaError`` for a file that is not an SF2 (SF3's Vorbis-compressed samples are not read).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(12)
                if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
                    raise PartitaError(f"{self.path}: not a SoundFont 2 file (no RIFF sfbk header); pass a .sf2 file")
                chunks = self._walk(f, 12, os.fstat(f.fileno()).st_size)
                if "smpl" not in chunks or "phdr" not in chunks:
                    raise PartitaError(f"{self.path}: SoundFont without sample data or presets; pass another .sf2 file")
                pdta = {k: self._read(f, *chunks[k]) for k in ("phdr", "pbag", "pgen", "inst", "ibag", "igen", "shdr")}
        except OSError as e:
            raise PartitaError(f"{self.path}: cannot read the SoundFont ({e.strerror})") from None
        except (struct.error, KeyError, ValueError):
            raise PartitaError(f"{self.path}: corrupt SoundFont (its preset tables cannot be read); pass another .sf2 file") from None
        if self.path.suffix.lower() == ".sf3" or self._compressed(pdta["shdr"]):
            raise PartitaError(f"{self.path}: SF3 (compressed) SoundFonts are not supported by partita's sampler; use an .sf2 file")
        off, size = chunks["smpl"]
        self.data = np.memmap(self.path, dtype="<i2", mode="r", offset=off, shape=(size // 2,))
        self._parse(pdta)
        self._cache: dict = {}

    @staticmethod
    def _walk(f, pos: int, end: int) -> dict:
        """Offsets and sizes of the sub-chunks (smpl, phdr, ...) of the RIFF lists in [pos, end)."""
        out = {}
        while pos + 8 <= end:
            f.seek(pos)
            cid, size = struct.unpack("<4sI", f.read(8))
            cid = cid.decode("latin-1")
            if cid == "LIST":
                out.update(SoundFont._walk(f, pos + 12, min(pos + 8 + size, end)))
            else:
                out[cid] = (pos + 8, size)
            pos += 8 + size + (size & 1)
        return out

    @staticmethod
    def _read(f, off: int, size: int) -> bytes:
        f.seek(off)
        return f.read(size)

    @staticmethod
    def _compressed(shdr: bytes) -> bool:
        types = np.frombuffer(shdr, np.dtype([("x", "V44"), ("type", "<u2")]))["type"]
        return bool(np.any(types[:-1] & 0x10))

    def _parse(self, p: dict) -> None:
        phdr = np.frombuffer(p["phdr"], np.dtype([("name", "S20"), ("preset", "<u2"), ("bank", "<u2"), ("bag", "<u2"), ("x", "V12")]))
        pbag = np.frombuffer(p["pbag"], np.dtype([("gen", "<u2"), ("mod", "<u2")]))
        gen_dt = np.dtype([("op", "<u2"), ("amount", "<i2")])
        pgen = np.frombuffer(p["pgen"], gen_dt)
        inst = np.frombuffer(p["inst"], np.dtype([("name", "S20"), ("bag", "<u2")]))
        ibag = np.frombuffer(p["ibag"], np.dtype([("gen", "<u2"), ("mod", "<u2")]))
        igen = np.frombuffer(p["igen"], gen_dt)
        self.samples = np.frombuffer(
            p["shdr"],
            np.dtype([("name", "S20"), ("start", "<u4"), ("end", "<u4"), ("loop_start", "<u4"), ("loop_end", "<u4"),
                      ("rate", "<u4"), ("root", "u1"), ("correction", "i1"), ("link", "<u2"), ("type", "<u2")]),
        )
        self._pbag, self._pgen, self._ibag, self._igen, self._inst = pbag, pgen, ibag, igen, inst
        # The last record of each table is the terminal "EOP"/"EOI"/"EOS" sentinel.
        self.presets = {(int(h["bank"]), int(h["preset"])): (int(h["bag"]), int(phdr[i + 1]["bag"])) for i, h in enumerate(phdr[:-1])}

    @staticmethod
    def _zone_gens(bags, gens, b: int) -> dict:
        """Generators of bag ``b`` as {op: amount} (ranges as (lo, hi))."""
        out = {}
        for g in gens[bags[b]["gen"] : bags[b + 1]["gen"]]:
            op = int(g["op"])
            if op in _RANGES:
                raw = int(g["amount"]) & 0xFFFF
                out[op] = (raw & 0xFF, raw >> 8)
            elif op < _N_GENS:
                out[op] = int(g["amount"])
        return out

    def _zones_of(self, bag_lo: int, bag_hi: int, bags, gens, terminal: int) -> tuple[dict, list[dict]]:
        """(global zone, other zones) of a preset or instrument: a first zone without the terminal
        generator (instrument / sampleID) is the global zone, whose values every zone starts from."""
        zones = [self._zone_gens(bags, gens, b) for b in range(bag_lo, bag_hi)]
        glob = {}
        if zones and terminal not in zones[0]:
            glob = zones.pop(0)
        return glob, [z for z in zones if terminal in z]

    def zones(self, bank: int, program: int) -> list[Zone]:
        """Every sample zone of preset ``(bank, program)``, falling back to bank 0 (and for drums,
        bank 128 preset 0; else the first preset) when the font does not have it."""
        key = (bank, program)
        if key not in self._cache:
            self._cache[key] = self._build(self._pick(bank, program))
        return self._cache[key]

    def _pick(self, bank: int, program: int) -> tuple[int, int]:
        for cand in ((bank, program), (bank, 0) if bank == 128 else (0, program), (0, 0)):
            if cand in self.presets:
                return cand
        return min(self.presets)

    def _build(self, preset: tuple[int, int]) -> list[Zone]:
        pglob, pzones = self._zones_of(*self.presets[preset], self._pbag, self._pgen, _INSTRUMENT)
        out = []
        for pz in pzones:
            pz = {**pglob, **pz}
            i = pz[_INSTRUMENT]
            if i + 1 >= len(self._inst):
                continue
            iglob, izones = self._zones_of(int(self._inst[i]["bag"]), int(self._inst[i + 1]["bag"]), self._ibag, self._igen, _SAMPLE_ID)
            for iz in izones:
                iz = {**iglob, **iz}
                g = _default_gens()
                for op, v in iz.items():
                    if op not in _RANGES:
                        g[op] = v
                for op, v in pz.items():
                    if op not in _NOT_ADDITIVE:
                        g[op] += v
                klo = max(pz.get(_KEY_RANGE, (0, 127))[0], iz.get(_KEY_RANGE, (0, 127))[0])
                khi = min(pz.get(_KEY_RANGE, (0, 127))[1], iz.get(_KEY_RANGE, (0, 127))[1])
                vlo = max(pz.get(_VEL_RANGE, (0, 127))[0], iz.get(_VEL_RANGE, (0, 127))[0])
                vhi = min(pz.get(_VEL_RANGE, (0, 127))[1], iz.get(_VEL_RANGE, (0, 127))[1])
                s = int(g[_SAMPLE_ID])
                if klo <= khi and vlo <= vhi and 0 <= s < len(self.samples) - 1:
                    out.append(Zone(klo, khi, vlo, vhi, tuple(int(x) for x in g), s))
        return out


@lru_cache(maxsize=4)
def _soundfont(path: str, mtime: float) -> SoundFont:
    return SoundFont(path)


def load_soundfont(path: str | os.PathLike) -> SoundFont:
    """A parsed :class:`SoundFont`, cached per file (parsing FluidR3's tables takes ~0.1 s)."""
    p = Path(path)
    return _soundfont(str(p.resolve()), p.stat().st_mtime)


# --------------------------------------------------------------------------- the sampler


def _seconds(timecents: float) -> float:
    return float(2.0 ** (timecents / 1200.0))


#: Longest release tail kept after a note-off, in seconds (a bell's 10 s release would bury the next notes).
MAX_RELEASE = 3.0
#: Longest music ``render`` takes: an hour of 44.1 kHz stereo float32 is 1.3 GB.
MAX_RENDER_SECONDS = 3600
#: Master gain, as FluidSynth's default (0.2) leaves headroom for dense polyphony.
MASTER_GAIN = 0.3


def _carrier(sf: SoundFont, zone: Zone, key: int, n: int, sample_rate: int, cache: dict) -> np.ndarray:
    """The zone's sample played at ``key``, ``n`` output samples long (looped where the zone loops).

    Cached per (zone, key) and grown when a longer note needs more: most pieces strike the same
    keys many times, so this interpolation is done once per key, not once per note.
    """
    ck = (id(zone), key)
    have = cache.get(ck)
    if have is not None and len(have) >= n:
        return have[:n]
    need, n = n, max(n, 1 if have is None else 2 * len(have))
    g = zone.gens
    s = sf.samples[zone.sample]
    start = int(s["start"]) + g[_START] + 32768 * g[_START_COARSE]
    end = int(s["end"]) + g[_END] + 32768 * g[_END_COARSE]
    ls = int(s["loop_start"]) + g[_LOOP_START] + 32768 * g[_LOOP_START_COARSE]
    le = int(s["loop_end"]) + g[_LOOP_END] + 32768 * g[_LOOP_END_COARSE]
    end = min(end, len(sf.data))
    start = min(max(start, 0), end)
    root = g[_ROOT_KEY] if g[_ROOT_KEY] >= 0 else int(s["root"])
    if root > 127:  # "unpitched" samples: play at their own pitch
        root = key
    cents = (key - root) * g[_SCALE_TUNING] + 100 * g[_COARSE_TUNE] + g[_FINE_TUNE] + int(s["correction"])
    step = 2.0 ** (cents / 1200.0) * int(s["rate"]) / sample_rate
    data = np.asarray(sf.data[start:end], np.float32) / 32768.0
    if len(data) < 2:
        cache[ck] = np.zeros(n, np.float32)
        return cache[ck][:need]
    pos = np.arange(n, dtype=np.float64) * step
    looping = g[_SAMPLE_MODES] & 1 and start <= ls < le <= end and le - ls >= 2
    if looping:
        a, b = ls - start, le - start
        over = pos >= b
        pos[over] = a + np.mod(pos[over] - a, b - a)
        i0 = pos.astype(np.int64)
        i1 = np.where(i0 + 1 >= b, a, i0 + 1)  # the sample after the loop end is the loop start
    else:
        pos = pos[pos < len(data) - 1]
        i0 = pos.astype(np.int64)
        i1 = i0 + 1
    frac = (pos - i0).astype(np.float32)
    out = np.zeros(n, np.float32)
    out[: len(pos)] = data[i0] * (1.0 - frac) + data[i1] * frac
    cache[ck] = out
    return out[:need]


def _envelope(g: tuple, key: int, held: int, sample_rate: int) -> np.ndarray:
    """Volume envelope (amplitude) of a note held ``held`` output samples, release tail included.

    SF2 volume envelope: delay, linear attack, hold, then a decay that is linear in dB down to the
    sustain level (``decay`` is the time a full 100 dB fall would take), and after the note-off a
    release that falls linearly in dB at the same 100 dB-per-``release`` rate, cut at -96 dB.
    """
    sr = sample_rate
    delay = int(_seconds(g[_DELAY]) * sr)
    attack = max(int(_seconds(g[_ATTACK]) * sr), 1)
    hold = int(_seconds(g[_HOLD] + g[_KEY_TO_HOLD] * (60 - key)) * sr)
    decay = max(_seconds(g[_DECAY] + g[_KEY_TO_DECAY] * (60 - key)) * sr, 1.0)
    sustain_cb = float(np.clip(g[_SUSTAIN], 0, 1440))
    release = max(_seconds(g[_RELEASE]) * sr, 1.0)
    t = np.arange(held, dtype=np.float64)
    cb = np.minimum((t - delay - attack - hold) * (1000.0 / decay), sustain_cb)
    cb = np.where(t < delay + attack + hold, 0.0, cb)
    amp = 10.0 ** (-cb / 200.0)
    ramp = np.clip((t - delay) / attack, 0.0, 1.0)
    amp *= ramp
    # Release: from the level at the note-off, falling 1000 cB per `release` samples, to -96 dB.
    end_amp = float(amp[-1]) if held else 0.0
    end_cb = -200.0 * np.log10(max(end_amp, 1e-5))
    n_rel = int(min(max(960.0 - end_cb, 0.0) / 1000.0 * release, MAX_RELEASE * sr))
    rel = end_amp * 10.0 ** (-(np.arange(1, n_rel + 1) * (1000.0 / release)) / 200.0)
    if n_rel and n_rel >= int(MAX_RELEASE * sr):  # cut short: fade the last 10 % so it does not click
        tail = max(n_rel // 10, 1)
        rel[-tail:] *= np.linspace(1.0, 0.0, tail)
    return np.concatenate([amp, rel]).astype(np.float32)


def _track_controls(score, track: int) -> tuple[float, float]:
    """(volume gain, pan in 0.1 %) from the first CC7 and CC10 of a track (1.0 and 0 when absent)."""
    try:
        ctl = score.tracks[track].controls.numpy()
    except (AttributeError, IndexError):
        return 1.0, 0.0
    vol, pan = 1.0, 0.0
    for number, target in ((7, "vol"), (10, "pan")):
        sel = np.flatnonzero(ctl["number"] == number)
        if len(sel):
            v = int(ctl["value"][sel[0]])
            if target == "vol":
                vol = (v / 127.0) ** 2
            else:
                pan = (v - 64) / 64.0 * 500.0
    return vol, pan


def sampler_render(score, sf: SoundFont, *, sample_rate: int = 44100, stereo: bool = True) -> np.ndarray:
    """Render a symusic ``Score`` with partita's SF2 sampler: ``(channels, samples)`` float32."""
    import symusic

    from partita.io.midi import note_array, preprocess

    if score.ttype != symusic.TimeUnit.tick:
        score = score.to("tick")
    score = preprocess(score, sustain=True)
    notes = note_array(score, unit="second")
    if len(notes) == 0:
        return np.zeros((2 if stereo else 1, 0), np.float32)
    start = np.maximum(np.round(notes["onset"] * sample_rate).astype(np.int64), 0)
    held = np.maximum(np.round(notes["duration"] * sample_rate).astype(np.int64), 1)
    total = int((start + held).max() + MAX_RELEASE * sample_rate) + 1
    out = np.zeros((2, total), np.float32)
    cache: dict = {}
    controls = {}
    for k in range(len(notes)):
        key, vel = int(notes["pitch"][k]), int(notes["velocity"][k])
        if vel <= 0:
            continue
        # Drums play bank 128: the kit named by the track's program where the font has it, else kit 0.
        bank, program = (128 if notes["is_drum"][k] else 0), int(notes["program"][k])
        tr = int(notes["track"][k])
        if tr not in controls:
            controls[tr] = _track_controls(score, tr)
        vol, cc_pan = controls[tr]
        # SF2's default velocity modulator: 960 cB * concave(1 - v/127), i.e. amplitude (v/127)^2.
        gain_v = MASTER_GAIN * vol * (vel / 127.0) ** 2
        for z in sf.zones(bank, program):
            if not (z.key_lo <= key <= z.key_hi and z.vel_lo <= vel <= z.vel_hi):
                continue
            g = z.gens
            env = _envelope(g, key, int(held[k]), sample_rate)
            n = len(env)
            wav = _carrier(sf, z, key, n, sample_rate, cache) * env
            # FluidSynth scales initialAttenuation by 0.4 (EMU8000 compatibility); fonts are tuned for it.
            gain = gain_v * 10.0 ** (-0.4 * g[_ATTENUATION] / 200.0)
            p = float(np.clip((g[_PAN] + cc_pan) / 1000.0, -0.5, 0.5))
            s0 = int(start[k])
            n = min(n, total - s0)
            out[0, s0 : s0 + n] += (gain * np.cos((p + 0.5) * np.pi / 2)) * wav[:n]
            out[1, s0 : s0 + n] += (gain * np.sin((p + 0.5) * np.pi / 2)) * wav[:n]
    # Trim the silent tail left for releases (render() scales the level).
    level = np.abs(out).max(axis=0)
    loud = np.flatnonzero(level > level.max(initial=0.0) * 10 ** (-90 / 20))  # cut the tail at -90 dB
    out = out[:, : (loud[-1] + 1 if len(loud) else 0)]
    if not stereo:  # a sum, not a mean: fonts pan the two halves of a stereo sample hard left and right
        out = out.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- symusic's synthesizer


@lru_cache(maxsize=8)
def _symusic_works(path: str, sample_rate: int) -> bool:
    """Whether symusic's ``Synthesizer.render`` returns a buffer in this install (0.6.0's does not)."""
    try:
        from symusic import Note, Score, Track
        from symusic.core import Synthesizer

        s = Score(480)
        t = Track("t", 0, False)
        t.notes.append(Note(0, 240, 60, 80))
        s.tracks.append(t)
        a = np.asarray(Synthesizer(path, sample_rate, 0).render(s, True), dtype=np.float32)
        return a.ndim == 2 and a.shape[0] == 2 and a.shape[1] > 0
    except Exception:
        return False


def _symusic_render(score, path: str, sample_rate: int, stereo: bool) -> np.ndarray:
    # symusic.core.Synthesizer takes the path as is: symusic.Synthesizer() with no path would download.
    from symusic.core import Synthesizer

    a = np.asarray(Synthesizer(path, sample_rate, 0).render(score, stereo), dtype=np.float32)
    return np.ascontiguousarray(a.reshape(1, -1) if a.ndim == 1 else a)


# --------------------------------------------------------------------------- render


def to_score(x: ScoreLike):
    """A symusic Score (ticks) from a path, MIDI bytes, a Score, a note array (seconds) or a sample
    object with ``.score`` (what ``partita.generate`` returns). ``PartitaError`` for anything else."""
    import symusic

    from partita.io.midi import load

    if hasattr(x, "score") and not isinstance(x, (str, bytes, os.PathLike)):
        x = x.score
    if isinstance(x, (str, os.PathLike, bytes, bytearray)):
        return load(x)
    if isinstance(x, (symusic.core.ScoreTick, symusic.core.ScoreQuarter, symusic.core.ScoreSecond)):
        return x if isinstance(x, symusic.core.ScoreTick) else x.to("tick")
    if isinstance(x, np.ndarray) and x.dtype.names and {"onset", "duration", "pitch"} <= set(x.dtype.names):
        return notes_to_score(x)
    raise PartitaError(f"cannot make music of a {type(x).__name__}: pass a MIDI path, a symusic Score, a note array or a generated sample")


def notes_to_score(notes: np.ndarray, *, tpq: int = 480, qpm: float = 120.0):
    """A Score from a ``NOTE_DTYPE`` array in seconds: one track per (track, program, drum), 120 qpm."""
    from symusic import Note, Score, Tempo, Track

    score = Score(tpq)
    score.tempos.append(Tempo(0, qpm))
    names = notes.dtype.names
    tick = tpq * qpm / 60.0
    tracks = notes["track"] if "track" in names else np.zeros(len(notes), np.int64)
    programs = notes["program"] if "program" in names else np.zeros(len(notes), np.int64)
    drums = notes["is_drum"] if "is_drum" in names else np.zeros(len(notes), bool)
    velocity = notes["velocity"] if "velocity" in names else np.full(len(notes), 80)
    keys = sorted({(int(t), int(p), bool(d)) for t, p, d in zip(tracks, programs, drums)})
    for t, p, d in keys:
        sel = (tracks == t) & (programs == p) & (drums == d)
        track = Track("", p, d)
        track.notes = Note.from_numpy(
            time=np.round(notes["onset"][sel] * tick).astype(np.int32),
            duration=np.maximum(np.round(notes["duration"][sel] * tick), 1).astype(np.int32),
            pitch=notes["pitch"][sel].astype(np.int8),
            velocity=np.clip(velocity[sel], 1, 127).astype(np.int8),
        )
        score.tracks.append(track)
    return score


def render(
    score_or_path: ScoreLike,
    out_path: str | os.PathLike | None = None,
    *,
    soundfont: str | os.PathLike | None = None,
    sample_rate: int = 44100,
    stereo: bool = True,
    seconds: float | None = None,
    engine: str = "auto",
    normalize: bool = True,
) -> np.ndarray:
    """Render music to audio: ``(channels, samples)`` float32 in [-1, 1] (2 channels, or 1 with ``stereo=False``).

    ``score_or_path``: a MIDI file, a symusic Score, a note array (seconds) or a generated sample.
    ``out_path``: also write it there (``.wav``, ``.flac``, ``.ogg``, ``.mp3``; see :func:`write_audio`).
    ``seconds``: keep only the first seconds (notes starting later are not rendered).
    ``engine``: ``"auto"``, ``"symusic"`` or ``"sampler"`` (see the module's docstring).
    ``normalize``: scale the result so its peak is 0.9 (pieces and clips play at one loudness);
    False keeps the synthesizer's level (peaks over 0.98 are still scaled down, never clipped).
    """
    if engine not in ("auto", "symusic", "sampler"):
        raise PartitaError(f"engine must be auto, symusic or sampler, not {engine!r}")
    if sample_rate < 8000 or sample_rate > 192000:
        raise PartitaError(f"sample rate {sample_rate} Hz is out of range; use 8000 to 192000 (e.g. 44100)")
    if out_path is not None:
        _check_suffix(out_path)
    score = to_score(score_or_path)
    if score.note_num() == 0:
        raise PartitaError("nothing to render: the music has no notes")
    if seconds is not None:
        score = clip_score(score, seconds)
    from partita.io.midi import duration_seconds

    length = duration_seconds(score)
    if length > MAX_RENDER_SECONDS:
        raise PartitaError(
            f"the music lasts {length / 60:.0f} minutes, over the {MAX_RENDER_SECONDS // 60} minute limit "
            "(its audio would not fit in memory); render a part of it with seconds= (--seconds)"
        )
    font = find_soundfont(soundfont)
    use_symusic = engine == "symusic" or (engine == "auto" and _symusic_works(str(font), sample_rate))
    if use_symusic:
        if not _symusic_works(str(font), sample_rate):
            raise PartitaError("symusic's synthesizer cannot return audio in this install (symusic 0.6.0's binding bug); use engine='sampler'")
        from partita.io.midi import preprocess

        audio = _symusic_render(preprocess(score, sustain=True), str(font), sample_rate, stereo)
    else:
        audio = sampler_render(score, load_soundfont(font), sample_rate=sample_rate, stereo=stereo)
    if seconds is not None:
        audio = audio[:, : int(round(seconds * sample_rate))]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0 and (normalize or peak > 0.98):
        audio *= (0.9 if normalize else 0.98) / peak
    if out_path is not None:
        write_audio(audio, out_path, sample_rate)
    return audio


def clip_score(score, seconds: float):
    """The notes of ``score`` (ticks) that start in its first ``seconds``, cut to end there."""
    from symusic import Note

    if seconds <= 0:
        raise PartitaError(f"seconds must be positive, not {seconds}")
    out = score.copy()
    sec = score.to("second")
    for track, strack in zip(out.tracks, sec.tracks):
        n, s = track.notes.numpy(), strack.notes.numpy()
        keep = s["time"] < seconds
        end_tick = n["time"] + n["duration"]
        over = keep & (s["time"] + s["duration"] > seconds)
        if over.any():  # shorten notes that ring past the cut, proportionally in ticks
            frac = (seconds - s["time"][over]) / np.maximum(s["duration"][over], 1e-9)
            end_tick = end_tick.copy()
            end_tick[over] = n["time"][over] + np.maximum(np.floor(n["duration"][over] * frac), 1).astype(end_tick.dtype)
        track.notes = Note.from_numpy(
            time=n["time"][keep], duration=(end_tick - n["time"])[keep].astype(np.int32), pitch=n["pitch"][keep], velocity=n["velocity"][keep]
        )
    return out


# --------------------------------------------------------------------------- writing


def _check_suffix(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise PartitaError(f"{path}: unknown audio format {suffix or '(no suffix)'}; use .wav, .flac, .ogg or .mp3")
    if suffix != ".wav" and not can_write(suffix):
        raise PartitaError(f"{path}: writing {suffix} needs libsndfile (pip install soundfile); write .wav instead")
    return suffix


def _pcm16(audio: np.ndarray) -> np.ndarray:
    """(samples, channels) int16, rounded (not truncated) so silence stays 0."""
    a = np.asarray(audio, np.float32)
    a = a.reshape(1, -1) if a.ndim == 1 else a
    return np.round(np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2").T.copy()


class _SFInfo(ctypes.Structure):
    _fields_ = [("frames", ctypes.c_int64), ("samplerate", ctypes.c_int), ("channels", ctypes.c_int),
                ("format", ctypes.c_int), ("sections", ctypes.c_int), ("seekable", ctypes.c_int)]


@lru_cache(maxsize=1)
def _libsndfile():
    """The system libsndfile through ctypes (None when absent): FLAC/OGG/MP3 without a Python package."""
    name = ctypes.util.find_library("sndfile")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.sf_open.restype = ctypes.c_void_p
        lib.sf_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(_SFInfo)]
        lib.sf_writef_short.restype = ctypes.c_int64
        lib.sf_writef_short.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.sf_close.argtypes = [ctypes.c_void_p]
        lib.sf_strerror.restype = ctypes.c_char_p
        lib.sf_strerror.argtypes = [ctypes.c_void_p]
        lib.sf_command.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


@lru_cache(maxsize=8)
def can_write(suffix: str) -> bool:
    """Whether ``write_audio`` can write this suffix here (.wav always; others need libsndfile)."""
    suffix = suffix.lower() if suffix.startswith(".") else "." + suffix.lower()
    if suffix == ".wav":
        return True
    if suffix not in _SNDFILE_FORMATS:
        return False
    try:
        import soundfile

        return soundfile.check_format({".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}[suffix])
    except ImportError:
        pass
    except Exception:
        return False
    lib = _libsndfile()
    if lib is None:
        return False
    info = _SFInfo(0, 22050, 1, _SNDFILE_FORMATS[suffix], 0, 0)
    return bool(lib.sf_format_check(ctypes.byref(info)))


def _write_wav(pcm: np.ndarray, path: Path, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def _write_sndfile(pcm: np.ndarray, path: Path, sample_rate: int, suffix: str) -> None:
    try:
        import soundfile

        soundfile.write(str(path), pcm, sample_rate, format={".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}[suffix],
                        subtype={".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}[suffix])
        return
    except ImportError:
        pass
    lib = _libsndfile()
    info = _SFInfo(0, sample_rate, pcm.shape[1], _SNDFILE_FORMATS[suffix], 0, 0)
    handle = lib.sf_open(str(path).encode(), 0x20, ctypes.byref(info))  # SFM_WRITE
    if not handle:
        raise PartitaError(f"{path}: libsndfile cannot write it ({lib.sf_strerror(None).decode(errors='replace')})")
    try:
        if suffix in (".ogg", ".mp3"):
            # SFC_SET_COMPRESSION_LEVEL (0x1301): 0.6 keeps report clips small (~64 kbit/s) and clean.
            level = ctypes.c_double(0.6)
            lib.sf_command(handle, 0x1301, ctypes.byref(level), ctypes.sizeof(level))
        data = np.ascontiguousarray(pcm)
        written = lib.sf_writef_short(handle, data.ctypes.data, len(data))
    finally:
        lib.sf_close(handle)
    if written != len(pcm):
        raise PartitaError(f"{path}: libsndfile wrote {written} of {len(pcm)} frames; is the disk full?")


def write_audio(audio: np.ndarray, path: str | os.PathLike, sample_rate: int = 44100) -> Path:
    """Write ``(channels, samples)`` float audio as 16-bit ``.wav``/``.flac``, or ``.ogg``/``.mp3``.

    The file appears whole or not at all. ``PartitaError`` for an unknown suffix, or a compressed
    one when libsndfile is missing.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    pcm = _pcm16(audio)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{suffix}")
    try:
        if suffix == ".wav":
            _write_wav(pcm, tmp, sample_rate)
        else:
            _write_sndfile(pcm, tmp, sample_rate, suffix)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as ``((channels, samples) float32, sample_rate)`` (for tests and checks)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise PartitaError(f"{path}: only 16-bit PCM WAV is read here")
        raw = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return (raw.reshape(-1, w.getnchannels()).T.astype(np.float32) / 32767.0), w.getframerate()


# --------------------------------------------------------------------------- clips for reports

#: Clip settings for reports: 22.05 kHz mono keeps music recognisable at a quarter of CD data.
CLIP_SAMPLE_RATE = 22050


def clip_format() -> str:
    """The smallest browser-playable format this machine can write: ``.mp3``, else ``.ogg``, else ``.wav``."""
    for suffix in (".mp3", ".ogg"):
        if can_write(suffix):
            return suffix
    return ".wav"


def audio_clip(
    x: ScoreLike,
    *,
    seconds: float | None = 20.0,
    soundfont: str | os.PathLike | None = None,
    fmt: str | None = None,
    sample_rate: int = CLIP_SAMPLE_RATE,
) -> tuple[bytes, str]:
    """A short, small, browser-playable rendering of ``x``: ``(file bytes, MIME type)``.

    Mono, ``sample_rate`` (22.05 kHz), the first ``seconds`` (None: all), as ``fmt`` (``.mp3``,
    ``.ogg`` or ``.wav``; default :func:`clip_format`). For HTML:
    ``f'<audio controls src="data:{mime};base64,{base64.b64encode(data).decode()}">'``.
    """
    suffix = fmt or clip_format()
    suffix = suffix if suffix.startswith(".") else "." + suffix
    audio = render(x, soundfont=soundfont, sample_rate=sample_rate, stereo=False, seconds=seconds)
    if len(audio[0]) > sample_rate // 10:  # a 50 ms fade-out, so a clip cut mid-note does not click
        fade = min(len(audio[0]), sample_rate // 20)
        audio = audio.copy()
        audio[:, -fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="partita-clip-") as tmp:
        path = write_audio(audio, Path(tmp) / f"clip{suffix}", sample_rate)
        return path.read_bytes(), _MIME[suffix]


def save_clip(x: ScoreLike, path: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`audio_clip` of ``x`` to ``path`` (its suffix picks the format)."""
    path = Path(path)
    data, _ = audio_clip(x, fmt=path.suffix.lower() or None, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
