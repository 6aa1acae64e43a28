"""Audio: finding a SoundFont, rendering with TinySoundFont (on a sine SoundFont the test writes),
rendering to a file in blocks, files, clips."""

from __future__ import annotations

import json
import os
import struct
import wave

import numpy as np
import pytest
from conftest import make_score

from partita.errors import PartitaError
from partita.io import audio
from partita.io.audio import (
    audio_clip,
    can_write,
    find_soundfont,
    have_soundfont,
    read_wav,
    render,
    render_file,
    save_clip,
    write_audio,
)
from partita.io.midi import save

SR = 22050


# --------------------------------------------------------------------------- a SoundFont made here


def _chunk(cid: bytes, data: bytes) -> bytes:
    return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def write_sine_sf2(path, *, rate: int = 22000, release_tc: int = -12000) -> os.PathLike:
    """A one-preset SoundFont 2 whose only sample is a looped 440 Hz sine at root key 69 (A4).

    At 22 kHz a 440 Hz cycle is exactly 50 samples, so the loop (whole cycles) is seamless. Written
    byte by byte after the SF2 2.04 spec; no third-party file is needed.
    """
    n = 5000
    wave_ = np.round(np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 16000).astype("<i2")
    smpl = wave_.tobytes() + b"\0" * 92  # the spec's 46 zero samples after each sample
    name = lambda s: s.encode().ljust(20, b"\0")  # noqa: E731
    phdr = name("Sine") + struct.pack("<HHHIII", 0, 0, 0, 0, 0, 0) + name("EOP") + struct.pack("<HHHIII", 0, 0, 1, 0, 0, 0)
    pbag = struct.pack("<HHHH", 0, 0, 1, 0)
    pmod = b"\0" * 10
    pgen = struct.pack("<Hh", 41, 0) + struct.pack("<Hh", 0, 0)  # instrument 0
    inst = name("Sine") + struct.pack("<H", 0) + name("EOI") + struct.pack("<H", 1)
    imod = b"\0" * 10
    igen = (
        struct.pack("<HBB", 43, 0, 127)  # keyRange 0-127
        + struct.pack("<Hh", 38, release_tc)  # releaseVolEnv
        + struct.pack("<Hh", 54, 1)  # sampleModes: loop
        + struct.pack("<Hh", 53, 0)  # sampleID 0 (the last generator of a zone)
        + struct.pack("<Hh", 0, 0)
    )
    ibag = struct.pack("<HHHH", 0, 0, 4, 0)
    shdr = name("sine440") + struct.pack("<IIIIIBbHH", 0, n, 1000, 4000, rate, 69, 0, 0, 1) + name("EOS") + b"\0" * 26
    body = b"sfbk" + _list(b"INFO", _chunk(b"ifil", struct.pack("<HH", 2, 1)), _chunk(b"INAM", b"partita test\0\0"))
    body += _list(b"sdta", _chunk(b"smpl", smpl))
    body += _list(b"pdta", *(_chunk(c, d) for c, d in (
        (b"phdr", phdr), (b"pbag", pbag), (b"pmod", pmod), (b"pgen", pgen), (b"inst", inst),
        (b"ibag", ibag), (b"imod", imod), (b"igen", igen), (b"shdr", shdr))))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.fixture
def sine_sf2(tmp_path):
    return write_sine_sf2(tmp_path / "sine.sf2")


def dominant_hz(x: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


# --------------------------------------------------------------------------- finding a SoundFont


def test_no_soundfont_is_one_line_that_says_what_to_do(tmp_path, monkeypatch):
    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setenv("PARTITA_SOUNDFONT", str(empty))
    with pytest.raises(PartitaError) as e:
        find_soundfont()
    assert "no SoundFont found" in str(e.value) and "\n" not in str(e.value)
    assert not have_soundfont()
    with pytest.raises(PartitaError, match="no SoundFont found"):
        render(make_score([(0, 480, 60, 80)]))
    monkeypatch.delenv("PARTITA_SOUNDFONT")
    with pytest.raises(PartitaError) as e:
        find_soundfont(search=[empty])
    assert "apt-get install fluid-soundfont-gm" in str(e.value) and "--soundfont" in str(e.value)
    with pytest.raises(PartitaError, match="no such SoundFont"):
        find_soundfont(tmp_path / "missing.sf2")


def test_without_the_synthesizer_package_audio_is_skipped_with_one_line(monkeypatch, sine_sf2):
    import sys

    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # as if not installed: import raises ImportError
    assert not have_soundfont()
    with pytest.raises(PartitaError) as e:
        render(make_score([(0, 480, 60, 80)]), soundfont=sine_sf2)
    assert "pip install --no-deps 'tinysoundfont" in str(e.value) and "\n" not in str(e.value)


def test_soundfont_search_order(tmp_path, monkeypatch, sine_sf2):
    folder = tmp_path / "fonts"
    folder.mkdir()
    (folder / "aaa.sf3").write_bytes(b"x")
    (folder / "zzz.sf2").write_bytes(b"x")
    (folder / "TimGM6mb.sf2").write_bytes(b"x")
    monkeypatch.delenv("PARTITA_SOUNDFONT", raising=False)
    assert find_soundfont(search=[tmp_path / "nothing", folder]).name == "TimGM6mb.sf2"  # a GM font first
    (folder / "TimGM6mb.sf2").unlink()
    assert find_soundfont(search=[folder]).name == "zzz.sf2"  # SF2 before SF3
    monkeypatch.setenv("PARTITA_SOUNDFONT", str(sine_sf2))
    assert find_soundfont(search=[folder]) == sine_sf2  # the variable wins
    assert find_soundfont(folder / "aaa.sf3", search=[]) == folder / "aaa.sf3"  # the argument wins over both


def test_bad_soundfont_files(tmp_path):
    score = make_score([(0, 480, 60, 80)])
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(PartitaError, match="not a SoundFont file"):
        render(score, soundfont=bad)
    cut = tmp_path / "cut.sf2"
    cut.write_bytes(write_sine_sf2(tmp_path / "whole.sf2").read_bytes()[:200])
    with pytest.raises(PartitaError, match="corrupt SoundFont"):
        render(score, soundfont=cut)


# --------------------------------------------------------------------------- the synthesizer


def test_synthesizer_plays_the_right_pitch_for_the_right_time(sine_sf2):
    # A4 then A5, one second each at 120 qpm (960 ticks): the sine at its root key, then an octave up.
    score = make_score([(0, 960, 69, 100), (960, 960, 81, 100)])
    a = render(score, soundfont=sine_sf2, sample_rate=SR, stereo=False)
    assert a.shape[0] == 1 and a.dtype == np.float32
    assert SR * 2 <= a.shape[1] <= SR * 2 + SR // 50  # the 1 ms release adds almost nothing
    assert dominant_hz(a[0, 2000:SR - 2000]) == pytest.approx(440, abs=3)
    assert dominant_hz(a[0, SR + 2000:2 * SR - 2000]) == pytest.approx(880, abs=3)
    assert np.abs(a).max() == pytest.approx(0.9, abs=1e-6)  # normalised
    # The loop keeps the note sounding for as long as it is held (the sample alone lasts 0.23 s).
    assert np.abs(a[0, int(0.8 * SR):int(0.9 * SR)]).max() > 0.5


def test_velocity_pan_and_determinism(sine_sf2):
    soft = render(make_score([(0, 480, 69, 64)]), soundfont=sine_sf2, sample_rate=SR, normalize=False)
    loud = render(make_score([(0, 480, 69, 127)]), soundfont=sine_sf2, sample_rate=SR, normalize=False)
    assert soft.shape[0] == 2  # stereo by default
    # TinySoundFont's velocity curve: amplitude v / 127.
    assert np.abs(loud).max() / np.abs(soft).max() == pytest.approx(127 / 64, rel=1e-3)
    # An unpanned zone plays equally in both channels.
    np.testing.assert_allclose(loud[0], loud[1], atol=1e-6)
    again = render(make_score([(0, 480, 69, 127)]), soundfont=sine_sf2, sample_rate=SR, normalize=False)
    assert np.array_equal(again, loud)


def test_release_tail_follows_the_soundfont(tmp_path):
    # releaseVolEnv 0 timecents = 1 s for a 100 dB fall: the tail lasts ~0.96 s after the note-off.
    sf = write_sine_sf2(tmp_path / "slow.sf2", release_tc=0)
    a = render(make_score([(0, 480, 69, 100)]), soundfont=sf, sample_rate=SR, stereo=False)
    assert 1.35 * SR < a.shape[1] < 1.55 * SR
    level = lambda s, e: np.abs(a[0, int(s * SR):int(e * SR)]).max()  # noqa: E731
    assert level(0.55, 0.6) < level(0.3, 0.45) and level(1.2, 1.3) < level(0.55, 0.6)


def test_render_inputs_and_clipping(sine_sf2, tmp_path):
    rows = [(k * 480, 480, 60 + k, 90) for k in range(8)]  # 8 half-second notes
    score = make_score(rows)
    midi = save(score, tmp_path / "s.mid")
    from partita.io.midi import note_array

    by_score = render(score, soundfont=sine_sf2, sample_rate=SR)
    assert np.array_equal(render(midi, soundfont=sine_sf2, sample_rate=SR), by_score)
    notes = note_array(score, unit="second")
    assert np.array_equal(render(notes, soundfont=sine_sf2, sample_rate=SR), by_score)
    cut = render(score, soundfont=sine_sf2, sample_rate=SR, seconds=1.25)
    assert cut.shape[1] <= int(1.25 * SR)
    with pytest.raises(PartitaError, match="no notes"):
        render(make_score([]), soundfont=sine_sf2)
    with pytest.raises(PartitaError, match="unknown audio format"):
        render(score, tmp_path / "x.aiff", soundfont=sine_sf2)
    with pytest.raises(PartitaError, match="cannot make music"):
        render(42, soundfont=sine_sf2)
    # A note held for two hours would need gigabytes: refused, and --seconds renders a part.
    endless = make_score([(0, 480 * 2 * 7200, 60, 80)])
    with pytest.raises(PartitaError, match="minute limit"):
        render(endless, soundfont=sine_sf2)
    assert render(endless, soundfont=sine_sf2, sample_rate=SR, seconds=0.5).shape[1] <= SR // 2
    with pytest.raises(PartitaError, match="minute limit"):  # files have a limit too, a longer one
        render_file(make_score([(0, 480 * 2 * 3600 * 13, 60, 80)]), tmp_path / "endless.wav", soundfont=sine_sf2)
    assert not (tmp_path / "endless.wav").exists()


# --------------------------------------------------------------------------- rendering to a file, in blocks


def test_render_file_writes_what_render_returns(sine_sf2, tmp_path):
    # Notes across several blocks, a release tail and two channels: the file holds the same samples.
    score = make_score([(k * 240, 360, 57 + (k * 5) % 24, 40 + (k * 13) % 80) for k in range(40)])  # ~5 s
    assert audio.BLOCK < 5 * SR  # the file path crosses block boundaries
    for stereo, normalize in ((True, True), (False, False)):
        a = render(score, soundfont=sine_sf2, sample_rate=SR, stereo=stereo, normalize=normalize)
        info = render_file(score, tmp_path / "r.wav", soundfont=sine_sf2, sample_rate=SR, stereo=stereo, normalize=normalize)
        back, sr = read_wav(tmp_path / "r.wav")
        assert sr == SR and info["frames"] == a.shape[1] and info["channels"] == a.shape[0]
        assert np.array_equal(back, np.round(np.clip(a, -1, 1) * 32767) / np.float32(32767))
    cut = render(score, soundfont=sine_sf2, sample_rate=SR, seconds=1.5)
    render_file(score, tmp_path / "cut.wav", soundfont=sine_sf2, sample_rate=SR, seconds=1.5)
    assert read_wav(tmp_path / "cut.wav")[0].shape == cut.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.wav", "r.wav", "sine.sf2"]  # no scratch file left


def test_long_render_to_a_file_keeps_memory_bounded(sine_sf2, tmp_path):
    """Ten minutes of notes written to a file: traced memory stays at a few blocks, far below the
    in-memory rendering (10 min of 8 kHz mono float32 = 19.2 MB)."""
    import tracemalloc

    sr, minutes = 8000, 10
    score = make_score([(k * 1920, 480, 60 + k % 12, 90) for k in range(minutes * 30)])  # a note every 2 s
    render_file(score, tmp_path / "warm.wav", soundfont=sine_sf2, sample_rate=sr, stereo=False, seconds=1)  # font loaded
    tracemalloc.start()
    try:
        info = render_file(score, tmp_path / "long.wav", soundfont=sine_sf2, sample_rate=sr, stereo=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = info["frames"] * 4
    assert info["frames"] >= minutes * 60 * sr - 2 * sr
    with wave.open(str(tmp_path / "long.wav")) as w:
        assert w.getnframes() == info["frames"]
    assert peak < 16 * audio.BLOCK * 4 < whole / 4, (peak, whole)


# --------------------------------------------------------------------------- files and clips


def test_wav_round_trip_needs_no_soundfont(tmp_path):
    t = np.arange(SR) / SR
    x = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t)]).astype(np.float32) * 0.8
    path = write_audio(x, tmp_path / "sub" / "tone.wav", SR)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, SR, SR)
    back, sr = read_wav(path)
    assert sr == SR and back.shape == x.shape
    np.testing.assert_allclose(back, x, atol=1 / 32767)
    assert not list(tmp_path.glob("sub/.*"))  # no temporary file left behind


@pytest.mark.parametrize("suffix, magic", [(".flac", b"fLaC"), (".ogg", b"OggS"), (".mp3", None)])
def test_compressed_formats(tmp_path, suffix, magic):
    x = (np.sin(2 * np.pi * 440 * np.arange(SR // 2) / SR) * 0.5).astype(np.float32)[None]
    if not can_write(suffix):
        with pytest.raises(PartitaError, match="libsndfile"):
            write_audio(x, tmp_path / f"a{suffix}", SR)
        return
    data = write_audio(x, tmp_path / f"a{suffix}", SR).read_bytes()
    if magic:
        assert data[:4] == magic
    else:  # MP3: an ID3 tag or a frame sync
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    assert len(data) < x.size * 2  # smaller than the PCM


def test_clips_are_small_and_playable(sine_sf2, tmp_path):
    score = make_score([(k * 240, 240, 60 + k % 12, 90) for k in range(80)])  # 10 s
    data, mime = audio_clip(score, soundfont=sine_sf2, seconds=4, fmt=".wav")
    assert mime == "audio/wav" and data[:4] == b"RIFF"
    path = tmp_path / "c.wav"
    path.write_bytes(data)
    back, sr = read_wav(path)
    assert sr == audio.CLIP_SAMPLE_RATE and back.shape[0] == 1 and back.shape[1] <= 4 * sr
    assert np.abs(back[0, -10:]).max() < 0.05  # faded out, no click at the cut
    best = audio.clip_format()
    out = save_clip(score, tmp_path / f"c{best}", soundfont=sine_sf2, seconds=4)
    assert out.stat().st_size <= len(data)


# --------------------------------------------------------------------------- the command


def test_render_command(tmp_path, sine_sf2, monkeypatch, capsys):
    from test_metrics import cli

    midi = save(make_score([(0, 960, 69, 100)]), tmp_path / "a.mid")
    out = tmp_path / "a.wav"
    assert cli("render", midi, "-o", out, "--soundfont", sine_sf2, "--sample-rate", SR, "--mono", "--json", tmp_path / "r.json") == 0
    back, sr = read_wav(out)
    assert sr == SR and back.shape[0] == 1 and dominant_hz(back[0, 1000:-1000]) == pytest.approx(440, abs=3)
    assert json.loads((tmp_path / "r.json").read_text())["channels"] == 1
    empty = tmp_path / "none"
    empty.mkdir()
    monkeypatch.setenv("PARTITA_SOUNDFONT", str(empty))
    capsys.readouterr()
    assert cli("render", midi, "-o", tmp_path / "b.wav") == 2
    err = capsys.readouterr().err.strip()
    assert "no SoundFont found" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.wav").exists()


# --------------------------------------------------------------------------- the system's SoundFont


@pytest.mark.skipif(not have_soundfont(), reason="no SoundFont installed (apt-get install fluid-soundfont-gm)")
def test_system_soundfont_renders_a_piano(fixtures, tmp_path):
    a = render(fixtures / "edge" / "fur-elise.mid", tmp_path / "fe.wav", sample_rate=SR, seconds=6)
    assert a.shape == (2, 6 * SR) or (a.shape[0] == 2 and a.shape[1] <= 6 * SR)
    assert np.abs(a).max() == pytest.approx(0.9, abs=1e-6)
    assert np.array_equal(read_wav(tmp_path / "fe.wav")[0].shape, a.shape)
    # A4 on the GM piano sounds at 440 Hz.
    b = render(make_score([(0, 960, 69, 100)]), sample_rate=SR, stereo=False)
    assert dominant_hz(b[0, 2000:SR]) == pytest.approx(440, abs=3)
