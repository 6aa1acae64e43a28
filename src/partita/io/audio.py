"""Audio from MIDI: render a score through a SoundFont, write WAV/FLAC/OGG/MP3, small clips for reports.

::

    from partita.io.audio import render, render_file, write_audio, find_soundfont
    audio = render(score, soundfont="MyFont.sf2", sample_rate=22050, stereo=False)  # (channels, samples) float32
    render_file("piece.mid", "piece.wav")               # any length, in blocks: memory stays small

The SoundFont is ``soundfont=`` when given, else the file or folder in the environment variable
``PARTITA_SOUNDFONT``, else the first General MIDI font found in the usual system folders
(Debian's ``fluid-soundfont-gm`` and ``timgm6mb-soundfont`` install into ``/usr/share/sounds/sf2``).
When none is found the error says how to get one. Nothing is downloaded: machines running this
may be offline.

The synthesizer is TinySoundFont (the ``tinysoundfont`` package, whose C core ships in its wheel):
SF2 and SF3 fonts, sample zones with loops, envelopes, filters, velocity layers, pan, the channel
controllers volume (CC7), pan (CC10) and expression (CC11), and pitch bends. The sustain pedal
is applied to the notes first (``partita.io.midi.sustain_pedal``). Each track plays on its own
channel with its program (drum tracks on bank 128). Rendering is deterministic: the same score and
font give the same samples. It runs in blocks of ``BLOCK`` frames: :func:`render_file` writes each
block to disk as it is made (a temporary float file, then the scaled 16-bit output), so a long
piece never sits in memory; :func:`render` joins the blocks into one array (up to
``MAX_RENDER_SECONDS``).

Writing: ``.wav`` with the standard library (16-bit PCM); ``.flac``, ``.ogg`` (Vorbis) and ``.mp3``
through libsndfile (the ``soundfile`` package when installed, else the system's ``libsndfile``
through ctypes); without it those suffixes give a one-line error that says to write ``.wav``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
import threading
import wave
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from partita.errors import PartitaError
from partita.io.files import atomic_path

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

#: Frames rendered (and written) at a time.
BLOCK = 16384
#: Longest release tail kept after the last note-off, in seconds (a bell's 10 s release is faded out there).
MAX_RELEASE = 3.0
#: Longest music :func:`render` returns in memory: an hour of 44.1 kHz stereo float32 is 1.3 GB.
MAX_RENDER_SECONDS = 3600
#: Longest music :func:`render_file` writes (a 12-hour 44.1 kHz stereo WAV is 7.6 GB).
MAX_FILE_SECONDS = 12 * 3600
#: The tail after the last sample louder than this (relative to the peak) is cut.
_TAIL_DB = -90.0
_LOCK = threading.Lock()

ScoreLike = Any  # a path, MIDI bytes, a symusic Score, a NOTE_DTYPE array, or an object with .score


# --------------------------------------------------------------------------- finding a SoundFont


def _fonts_in(folder: Path) -> list[Path]:
    try:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sf2", ".sf3") and p.is_file())
    except OSError:
        return []
    rank = {n.lower(): i for i, n in enumerate(PREFERRED_SOUNDFONTS)}
    # Preferred names first, then SF2 before SF3 (uncompressed samples load faster), then by name.
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


def _tinysoundfont():
    """The synthesizer package, or a one-line error saying how to install it."""
    try:
        import tinysoundfont
    except ImportError:
        raise PartitaError(
            "audio needs the tinysoundfont package: pip install --no-deps 'tinysoundfont>=0.3.7,<0.4' "
            "(./install does; --no-deps skips PyAudio, which only live playback uses)"
        ) from None
    return tinysoundfont


def have_soundfont() -> bool:
    """True when audio can be rendered: the synthesizer is installed and :func:`find_soundfont`
    finds a font."""
    try:
        _tinysoundfont()
        find_soundfont()
        return True
    except PartitaError:
        return False


# --------------------------------------------------------------------------- the synthesizer


def _check_soundfont_file(path: Path) -> None:
    """One-line errors for files TinySoundFont would only call "could not load"."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise PartitaError(f"{path}: cannot read the SoundFont ({e.strerror})") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise PartitaError(f"{path}: not a SoundFont file (no RIFF sfbk header); pass a .sf2 or .sf3 file")


@lru_cache(maxsize=2)
def _soundfont(path: str, mtime: float):
    tinysoundfont = _tinysoundfont()

    _check_soundfont_file(Path(path))
    try:
        return tinysoundfont._tinysoundfont.SoundFont(path)
    except RuntimeError:
        raise PartitaError(f"{path}: corrupt SoundFont (TinySoundFont cannot read it); pass another .sf2 or .sf3 file") from None


def load_soundfont(path: str | os.PathLike):
    """TinySoundFont's ``SoundFont`` for a file, loaded once per file (FluidR3's samples take ~0.8 s)."""
    p = Path(path)
    return _soundfont(str(p.resolve()), p.stat().st_mtime)


def _preset(sf, bank: int, program: int) -> int:
    """The font's preset index for ``(bank, program)``, falling back as General MIDI players do:
    drums to kit 0, other banks to bank 0, then to the piano, then to the font's first preset."""
    for b, p in ((bank, program), (bank, 0) if bank == 128 else (0, program), (0, 0)):
        index = sf.get_preset_index(b, p)
        if index >= 0:
            return index
    return 0


# Event kinds, in the order they are applied at one frame: note-offs first, so a repeated key restrikes.
_OFF, _CONTROL, _BEND, _ON = 0, 1, 2, 3
#: Controllers passed to the synthesizer: volume, pan, expression (the pedal is applied to the notes).
_CONTROLLERS = (7, 10, 11)


def _events(score, sample_rate: int) -> tuple[np.ndarray, list[tuple[int, int, bool]]]:
    """Every note-on/off, controller and pitch bend as rows (frame, kind, channel, a, b), sorted by
    frame then kind; and each channel's (track, program, is_drum). One channel per track."""
    from partita.io.midi import preprocess

    sec = preprocess(score, sustain=True).to("second")
    rows, channels = [], []
    for i, track in enumerate(sec.tracks):
        n = track.notes.numpy()
        if len(n["time"]) == 0:
            continue
        ch = len(channels)
        channels.append((i, int(track.program), bool(track.is_drum)))
        on = np.round(np.asarray(n["time"], np.float64) * sample_rate).astype(np.int64)
        off = np.maximum(np.round((np.asarray(n["time"], np.float64) + n["duration"]) * sample_rate).astype(np.int64), on + 1)
        pitch, vel = n["pitch"].astype(np.int64), n["velocity"].astype(np.int64)
        keep = vel > 0
        for frames, kind in ((on, _ON), (off, _OFF)):
            rows.append(np.stack([frames, np.full_like(frames, kind), np.full_like(frames, ch), pitch, vel], 1)[keep])
        c = track.controls.numpy()
        sel = np.isin(c["number"], _CONTROLLERS)
        if sel.any():
            t = np.round(np.asarray(c["time"][sel], np.float64) * sample_rate).astype(np.int64)
            rows.append(np.stack([t, np.full_like(t, _CONTROL), np.full_like(t, ch), c["number"][sel].astype(np.int64),
                                  c["value"][sel].astype(np.int64)], 1))
        b = track.pitch_bends.numpy()
        if len(b["time"]):
            t = np.round(np.asarray(b["time"], np.float64) * sample_rate).astype(np.int64)
            value = np.clip(b["value"].astype(np.int64) + 8192, 0, 16383)
            rows.append(np.stack([t, np.full_like(t, _BEND), np.full_like(t, ch), np.zeros_like(t), value], 1))
    events = np.concatenate(rows) if rows else np.zeros((0, 5), np.int64)
    events[:, 0] = np.maximum(events[:, 0], 0)
    return events[np.lexsort((events[:, 1], events[:, 0]))], channels


def _blocks(score, font: Path, sample_rate: int, stereo: bool, seconds: float | None) -> Iterator[np.ndarray]:
    """The rendering as ``(frames, channels)`` float32 blocks of at most ``BLOCK`` frames: the
    music, then its release tail until it falls silent (at most ``MAX_RELEASE`` seconds, faded at
    the end when cut); with ``seconds``, no more than the first ``seconds``."""
    sf = load_soundfont(font)
    with _LOCK:  # one loaded font is shared: one rendering at a time uses it (threads in partita serve)
        yield from _play(sf, score, sample_rate, stereo, seconds)


def _play(sf, score, sample_rate: int, stereo: bool, seconds: float | None) -> Iterator[np.ndarray]:
    tinysoundfont = _tinysoundfont()

    mode = tinysoundfont._tinysoundfont.OutputMode
    sf.reset()
    sf.set_output(mode.StereoInterleaved if stereo else mode.Mono, sample_rate, 0.0)
    sf.set_max_voices(256)
    events, channels = _events(score, sample_rate)
    for ch, (_, program, drum) in enumerate(channels):
        sf.channel_set_preset_index(ch, _preset(sf, 128 if drum else 0, program))
    n_ch = 2 if stereo else 1
    last = int(events[:, 0].max()) if len(events) else 0
    cap = last + int(MAX_RELEASE * sample_rate)
    stop = cap if seconds is None else min(cap, int(round(seconds * sample_rate)))
    pos, k = 0, 0
    while pos < stop:
        n = min(BLOCK, stop - pos)
        buf = np.zeros((n, n_ch), np.float32)
        done = 0
        while k < len(events) and events[k, 0] < pos + n:
            at = int(events[k, 0]) - pos
            if at > done:
                sf.render(buf[done:at].reshape(-1).view(np.uint8), False)
                done = at
            _, kind, ch, a, b = (int(x) for x in events[k])
            if kind == _ON:
                sf.channel_note_on(ch, a, b / 127.0)
            elif kind == _OFF:
                sf.channel_note_off(ch, a)
            elif kind == _CONTROL:
                sf.channel_midi_control(ch, a, b)
            else:
                sf.channel_set_pitch_wheel(ch, b)
            k += 1
        if done < n:
            sf.render(buf[done:].reshape(-1).view(np.uint8), False)
        pos += n
        if pos > last and not buf.any():
            return  # every voice has ended: the tail is over
        if pos >= cap:  # the tail was cut at MAX_RELEASE: fade its last 10 %
            fade = min(n, int(0.1 * MAX_RELEASE * sample_rate))
            buf[n - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
        yield buf


def _prepare(score_or_path: ScoreLike, soundfont, sample_rate: int, seconds: float | None, limit: float):
    """(score, font) after checking the inputs; one-line errors for everything a caller can get wrong."""
    if sample_rate < 8000 or sample_rate > 192000:
        raise PartitaError(f"sample rate {sample_rate} Hz is out of range; use 8000 to 192000 (e.g. 44100)")
    if seconds is not None and seconds <= 0:
        raise PartitaError(f"seconds must be positive, not {seconds}")
    score = to_score(score_or_path)
    if score.note_num() == 0:
        raise PartitaError("nothing to render: the music has no notes")
    from partita.io.midi import duration_seconds

    length = duration_seconds(score) if seconds is None else min(duration_seconds(score), seconds)
    if length > limit:
        raise PartitaError(
            f"the music lasts {length / 60:.0f} minutes, over the {limit // 60:.0f} minute limit "
            "of this rendering; render a part of it with seconds= (--seconds)"
        )
    return score, find_soundfont(soundfont)


def _gain(peak: float, normalize: bool) -> float:
    """The factor :func:`render` applies: peak to 0.9 (``normalize``), else only peaks over 0.98 down to 0.98."""
    if peak > 0 and (normalize or peak > 0.98):
        return (0.9 if normalize else 0.98) / peak
    return 1.0


def _loud_end(block: np.ndarray, threshold: float) -> int:
    """Frames of ``block`` up to and including its last one louder than ``threshold`` (0 if none)."""
    loud = np.flatnonzero(np.abs(block).max(axis=1) > threshold)
    return int(loud[-1]) + 1 if len(loud) else 0


# --------------------------------------------------------------------------- render


def to_score(x: ScoreLike):
    """A symusic Score (ticks) from a path, MIDI bytes, a Score, a note array (seconds) or a sample
    object with ``.score`` (what ``partita.generation`` returns). ``PartitaError`` for anything else."""
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
    normalize: bool = True,
) -> np.ndarray:
    """Render music to audio in memory: ``(channels, samples)`` float32 in [-1, 1] (2 channels, or 1
    with ``stereo=False``).

    ``score_or_path``: a MIDI file, a symusic Score, a note array (seconds) or a generated sample.
    ``out_path``: also write it there (``.wav``, ``.flac``, ``.ogg``, ``.mp3``; see :func:`write_audio`);
    for long pieces use :func:`render_file`, which never holds the whole rendering.
    ``seconds``: keep only the first seconds (notes starting later are not rendered).
    ``normalize``: scale the result so its peak is 0.9 (pieces and clips play at one loudness);
    False keeps the synthesizer's level (peaks over 0.98 are still scaled down, never clipped).
    """
    if out_path is not None:
        _check_suffix(out_path)
    score, font = _prepare(score_or_path, soundfont, sample_rate, seconds, MAX_RENDER_SECONDS)
    audio = np.concatenate(list(_blocks(score, font, sample_rate, stereo, seconds)) or [np.zeros((0, 2 if stereo else 1), np.float32)])
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    audio = np.ascontiguousarray(audio[: _loud_end(audio, peak * 10 ** (_TAIL_DB / 20))].T)
    audio *= np.float32(_gain(peak, normalize))
    if out_path is not None:
        write_audio(audio, out_path, sample_rate)
    return audio


def render_file(
    score_or_path: ScoreLike,
    out_path: str | os.PathLike,
    *,
    soundfont: str | os.PathLike | None = None,
    sample_rate: int = 44100,
    stereo: bool = True,
    seconds: float | None = None,
    normalize: bool = True,
) -> dict:
    """Render music straight to an audio file, block by block: memory stays at a few blocks
    whatever the length (up to ``MAX_FILE_SECONDS``). The same samples as :func:`render` writes.

    The blocks go to an unnamed temporary float file in ``out_path``'s folder while the peak is
    measured, then are scaled and written to ``out_path``, which appears whole or not at all. Returns
    ``{"path", "channels", "frames", "seconds", "sample_rate"}``.
    """
    out_path = Path(out_path)
    suffix = _check_suffix(out_path)
    score, font = _prepare(score_or_path, soundfont, sample_rate, seconds, MAX_FILE_SECONDS)
    n_ch = 2 if stereo else 1
    frame_bytes = 4 * n_ch
    maxima: list[float] = []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_path.parent, prefix=".partita-render-") as f:
        with closing(_blocks(score, font, sample_rate, stereo, seconds)) as blocks:  # ends the rendering on an error here
            for block in blocks:  # pass 1: render, keep each block's peak
                f.write(block.tobytes())
                maxima.append(float(np.abs(block).max()))
        peak = max(maxima, default=0.0)
        threshold = peak * 10 ** (_TAIL_DB / 20)
        loud = [i for i, m in enumerate(maxima) if m > threshold]
        frames = 0
        if loud:  # the last loud block says where the tail ends
            f.seek(loud[-1] * BLOCK * frame_bytes)
            last = np.frombuffer(f.read(BLOCK * frame_bytes), np.float32).reshape(-1, n_ch)
            frames = loud[-1] * BLOCK + _loud_end(last, threshold)
        gain = np.float32(_gain(peak, normalize))
        f.seek(0)
        with atomic_path(out_path) as tmp, _Writer(tmp, suffix, sample_rate, n_ch) as w:  # pass 2: scale, write
            for start in range(0, frames, BLOCK):
                block = np.frombuffer(f.read(min(BLOCK, frames - start) * frame_bytes), np.float32).reshape(-1, n_ch)
                w.write(_pcm16((block * gain).T))
    return {"path": str(out_path), "channels": n_ch, "frames": frames, "seconds": frames / sample_rate, "sample_rate": sample_rate}


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


class _Writer:
    """Writes 16-bit ``(frames, channels)`` blocks to one file: ``.wav`` with the standard library,
    the others through libsndfile (``soundfile``, else ctypes). A context manager."""

    def __init__(self, path: Path, suffix: str, sample_rate: int, channels: int):
        self.path, self.suffix, self.lib, self.handle, self.sf = path, suffix, None, None, None
        if suffix == ".wav":
            self.wav = wave.open(str(path), "wb")
            self.wav.setnchannels(channels)
            self.wav.setsampwidth(2)
            self.wav.setframerate(sample_rate)
            return
        self.wav = None
        try:
            import soundfile

            self.sf = soundfile.SoundFile(str(path), "w", sample_rate, channels, format={".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}[suffix],
                                          subtype={".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}[suffix])
            return
        except ImportError:
            pass
        self.lib = lib = _libsndfile()
        info = _SFInfo(0, sample_rate, channels, _SNDFILE_FORMATS[suffix], 0, 0)
        self.handle = lib.sf_open(str(path).encode(), 0x20, ctypes.byref(info))  # SFM_WRITE
        if not self.handle:
            raise PartitaError(f"{path}: libsndfile cannot write it ({lib.sf_strerror(None).decode(errors='replace')})")
        if suffix in (".ogg", ".mp3"):
            # SFC_SET_COMPRESSION_LEVEL (0x1301): 0.6 keeps report clips small (~64 kbit/s) and clean.
            level = ctypes.c_double(0.6)
            lib.sf_command(self.handle, 0x1301, ctypes.byref(level), ctypes.sizeof(level))

    def write(self, pcm: np.ndarray) -> None:
        if self.wav is not None:
            self.wav.writeframes(pcm.tobytes())
        elif self.sf is not None:
            self.sf.write(pcm)
        else:
            data = np.ascontiguousarray(pcm)
            written = self.lib.sf_writef_short(self.handle, data.ctypes.data, len(data))
            if written != len(pcm):
                raise PartitaError(f"{self.path}: libsndfile wrote {written} of {len(pcm)} frames; is the disk full?")

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc) -> None:
        if self.wav is not None:
            self.wav.close()
        elif self.sf is not None:
            self.sf.close()
        else:
            self.lib.sf_close(self.handle)


def write_audio(audio: np.ndarray, path: str | os.PathLike, sample_rate: int = 44100) -> Path:
    """Write ``(channels, samples)`` float audio as 16-bit ``.wav``/``.flac``, or ``.ogg``/``.mp3``.

    The file appears whole or not at all. ``PartitaError`` for an unknown suffix, or a compressed
    one when libsndfile is missing.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    audio = np.asarray(audio, np.float32)
    audio = audio.reshape(1, -1) if audio.ndim == 1 else audio
    with atomic_path(path) as tmp, _Writer(tmp, suffix, sample_rate, audio.shape[0]) as w:
        for start in range(0, audio.shape[1], BLOCK):
            w.write(_pcm16(audio[:, start : start + BLOCK]))
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
