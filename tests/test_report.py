"""The HTML report: what it links is there, and a real browser shows it."""

from __future__ import annotations

import struct
import wave

import numpy as np

from browser import open_page
from partita.viz.report import Report


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def _wav(path):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(struct.pack("<800h", *(np.sin(np.arange(800) / 5) * 3000).astype(int)))
    return path


def test_report_in_a_browser(tmp_path):
    (tmp_path / "rolls").mkdir()
    img = _png(tmp_path / "rolls" / "a piece.png")  # a space: links must be escaped
    wav = _wav(tmp_path / "a.wav")
    mid = tmp_path / "a.mid"
    mid.write_bytes(b"MThd")
    (tmp_path / "map.html").write_text("<html><body><div id='graph'>map</div></body></html>")

    report = Report("demo <report>", tmp_path, subtitle="made by a test")
    s = report.section("Music", "Pieces & things")
    s.table(["name", "value", "count"], [["x<y", 0.12345, 3]])
    s.item("first", image=img, audio=wav, midi=mid)
    s.item("second", image=img)
    s.text("between")
    s.item("third", midi=mid)
    report.section("Map").page(tmp_path / "map.html", "open the map")
    path = report.write()

    html = path.read_text()
    assert html.count('class="items"') == 2  # the two first items share a grid; the third has its own
    assert "demo &lt;report&gt;" in html and "x&lt;y" in html and "0.123" in html

    seen = open_page(path, wait_for_frames="#graph")
    assert seen["title"] == "demo <report>"
    assert seen["images"] and all(ok for _, ok in seen["images"])
    assert seen["links"] and all(ok for _, ok in seen["links"])
    assert seen["audio"] == ["a.wav"]
    assert seen["frames"] and all(ok for _, ok in seen["frames"])
    assert not seen["errors"]


def test_a_missing_image_is_seen_broken(tmp_path):
    report = Report("r", tmp_path)
    report.section("s").item("gone", image=tmp_path / "nothing.png", midi=tmp_path / "nothing.mid")
    seen = open_page(report.write())
    assert seen["images"] == [["nothing.png", False]]
    assert seen["links"] == [("nothing.mid", False)]
