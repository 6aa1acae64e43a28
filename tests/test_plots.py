"""Pianoroll plots, PNGs for reports, the plot command and partita.show."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import make_score
from symusic import Note, TimeSignature, Track
from test_audio import write_sine_sf2

import partita
from partita.errors import PartitaError
from partita.io.midi import note_array, save
from partita.viz.pianoroll import bar_ticks, pianoroll_png, pitch_name, plot_pianoroll, save_pianoroll_png
from partita.viz.show import show_objects


def _notes_collection(fig):
    from matplotlib.collections import PolyCollection

    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    (coll,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    return ax, coll


def two_tracks():
    score = make_score([(0, 480, 60, 30), (480, 480, 64, 120), (960, 960, 67, 80)])
    t = Track("bass", 33, False)
    t.notes = Note.from_numpy(time=np.array([0, 960], np.int32), duration=np.array([960, 960], np.int32),
                              pitch=np.array([36, 43], np.int8), velocity=np.array([100, 100], np.int8))
    score.tracks.append(t)
    return score


def test_one_rectangle_per_note_velocity_as_colour():
    score = make_score([(0, 480, 60, 30), (480, 480, 64, 120), (960, 960, 67, 120)])
    fig = plot_pianoroll(score, title="three notes")
    ax, coll = _notes_collection(fig)
    paths = coll.get_paths()
    assert len(paths) == 3
    # Rectangles span onset..offset in beats and pitch +- 0.4.
    xs = sorted((p.vertices[:, 0].min(), p.vertices[:, 0].max(), (p.vertices[:, 1].min() + p.vertices[:, 1].max()) / 2) for p in paths)
    np.testing.assert_allclose(xs, [(0, 1, 60), (1, 2, 64), (2, 4, 67)], atol=1e-6)
    colors = coll.get_facecolors()
    assert not np.allclose(colors[0], colors[1])  # velocity 30 vs 120
    assert np.allclose(colors[1], colors[2])  # same velocity, same colour
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    assert ax.get_title(loc="left") == "three notes"
    assert "C4" in [t.get_text() for t in ax.get_yticklabels()]


def test_tracks_get_their_own_colour_and_a_legend():
    fig = plot_pianoroll(two_tracks())
    ax, coll = _notes_collection(fig)
    colors = coll.get_facecolors()
    notes = note_array(two_tracks(), unit="tick")
    by_track = {int(t): colors[notes["track"] == t] for t in np.unique(notes["track"])}
    hue = {t: c[0, :3] for t, c in by_track.items()}
    assert not np.allclose(hue[0], hue[1])
    for t, c in by_track.items():
        assert np.allclose(c[:, :3], hue[t])  # one hue per track ...
    alpha = dict(zip(notes["velocity"].tolist(), colors[:, 3]))
    assert alpha[30] < alpha[80] < alpha[120]  # ... velocity as opacity
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["0: Acoustic Grand Piano", "1: Electric Bass (finger)"]


def test_bar_lines_follow_time_signatures():
    score = make_score([(0, 480, 60, 80), (5000, 100, 62, 80)], tpq=480)
    score.time_signatures = [TimeSignature(0, 4, 4), TimeSignature(1920, 3, 4), TimeSignature(3360, 6, 8)]
    assert bar_ticks(score).tolist() == [0, 1920, 3360, 4800]
    # A signature change inside a bar starts a new bar there.
    score.time_signatures = [TimeSignature(0, 4, 4), TimeSignature(960, 2, 4)]
    assert bar_ticks(score).tolist()[:4] == [0, 960, 1920, 2880]
    score.time_signatures = []
    assert bar_ticks(score).tolist() == [0, 1920, 3840]  # 4/4 when there is none
    fig = plot_pianoroll(score)
    ax, _ = _notes_collection(fig)
    segs = [s for c in ax.collections if c.__class__.__name__ == "LineCollection" for s in c.get_segments()]
    assert sorted(round(s[0][0], 6) for s in segs) == [0.0, 4.0, 8.0]
    fig = plot_pianoroll(score, unit="second")  # 120 qpm: a 4/4 bar is 2 s
    ax, _ = _notes_collection(fig)
    segs = [s for c in ax.collections if c.__class__.__name__ == "LineCollection" for s in c.get_segments()]
    assert sorted(round(s[0][0], 6) for s in segs) == [0.0, 2.0, 4.0]


def test_inputs_crops_and_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = make_score([(k * 480, 480, 60 + k, 80) for k in range(16)])
    path = save(score, tmp_path / "s.mid")
    for x in (path, str(path), score, note_array(score, unit="second")):
        assert len(_notes_collection(plot_pianoroll(x))[1].get_paths()) == 16
    ax, coll = _notes_collection(plot_pianoroll(score, start=4, end=8))
    assert len(coll.get_paths()) == 4 and ax.get_xlim() == (4.0, 8.0)
    fig, mine = plt.subplots()
    assert plot_pianoroll(score, ax=mine) is fig
    plt.close(fig)
    with pytest.raises(PartitaError, match="unit"):
        plot_pianoroll(score, unit="bar")
    with pytest.raises(PartitaError, match="nothing to draw"):
        plot_pianoroll(score, start=8, end=4)
    with pytest.raises(PartitaError, match="no such file"):
        plot_pianoroll(tmp_path / "missing.mid")
    assert pitch_name(60) == "C4" and pitch_name(69) == "A4" and pitch_name(21) == "A0"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_compact_png_has_the_asked_size(tmp_path):
    data = pianoroll_png(two_tracks(), width_px=640, height_px=200)
    assert _png_size(data) == (640, 200)
    path = save_pianoroll_png(two_tracks(), tmp_path / "r" / "roll.png", width_px=500, height_px=150)
    assert _png_size(path.read_bytes()) == (500, 150)
    with pytest.raises(PartitaError, match="too small"):
        pianoroll_png(two_tracks(), width_px=20)


def test_plot_command(tmp_path, capsys):
    from test_metrics import cli

    midi = save(two_tracks(), tmp_path / "a.mid")
    assert cli("plot", midi, "-o", tmp_path / "a.png", "--width", 800, "--height", 300) == 0
    assert _png_size((tmp_path / "a.png").read_bytes()) == (800, 300)
    capsys.readouterr()
    for args, words in (((midi, "-o", tmp_path / "a.gif"), "unknown picture format"),
                        ((tmp_path / "none.mid", "-o", tmp_path / "b.png"), "no such file")):
        assert cli("plot", *args) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


def test_show_outside_a_notebook_returns_the_figure(tmp_path):
    from matplotlib.figure import Figure
    from partita.generation import Sample

    score = two_tracks()
    assert isinstance(partita.show(score), Figure)
    sample = Sample(score=score, ids=np.zeros(3, np.int64), prompt_length=1, stop="eos", notes=5, seconds=2.0, bars=1, dropped=0)
    fig = partita.show(sample)
    assert len(_notes_collection(fig)[1].get_paths()) == 5


def test_show_objects_player_and_no_soundfont(tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    sf = write_sine_sf2(tmp_path / "sine.sf2")
    fig, player, note = show_objects(make_score([(0, 960, 69, 100)]), soundfont=sf)
    assert note is None
    assert player.data[:4] == b"RIFF"  # IPython embeds a WAV ...
    assert struct.unpack("<HI", player.data[22:28]) == (1, 22050)  # ... mono, 22.05 kHz
    empty = tmp_path / "none"
    empty.mkdir()
    monkeypatch.setenv("PARTITA_SOUNDFONT", str(empty))
    fig, player, note = show_objects(make_score([(0, 960, 69, 100)]))
    assert player is None and note.startswith("no audio: no SoundFont found")
    fig, player, note = show_objects(make_score([(0, 960, 69, 100)]), audio=False)
    assert player is None and note is None
