"""`partita demo --fast` end to end with the shipped models, and its report in a real browser."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from browser import open_page


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "partita-demo"
    proc = subprocess.run(
        [sys.executable, "-m", "partita", "demo", "--fast", "--out", str(out), "-j", "2"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_demo_does_every_step(demo):
    out, stdout = demo
    assert "skipped" not in stdout, stdout
    assert "Attribution of" in stdout and f"report: {out / 'index.html'}" in stdout
    made = {p.name for p in (out / "generated").glob("*.mid")}
    for name in ("bach-continuation.mid", "essen-continuation.mid", "chords-continuation.mid", "mozart-sample.mid",
                 "tvae-bach.mid", "interpolation-0.mid", "interpolation-2.mid"):
        assert name in made
    from partita.io import load

    for path in (out / "generated").glob("*.mid"):
        assert load(path).note_num() > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_generated"] == len(made) and metrics["n_reference"] >= 10
    assert (out / "map.png").stat().st_size > 0


def test_demo_report_in_a_browser(demo):
    out, _ = demo
    seen = open_page(out / "index.html", wait_for_frames=".plotly .main-svg")
    assert seen["title"] == "partita demo"
    for section in ("Attribution", "Generation", "Interpolation", "Musical metrics"):
        assert section in seen["text"]
    assert "top-1" in seen["text"] and "chance" in seen["text"]
    rolls = [src for src, _ in seen["images"] if src.startswith("rolls/")]
    assert len(rolls) >= 7 and all(ok for _, ok in seen["images"]), seen["images"]
    midi = [href for href, _ in seen["links"] if href.endswith(".mid")]
    assert len(midi) >= 7 and all(ok for _, ok in seen["links"]), seen["links"]
    assert seen["frames"] and all(ok for _, ok in seen["frames"]), seen["frames"]  # the map's plotly graph drew
    assert not seen["errors"], seen["errors"]
    for src in seen["audio"]:  # audio players only where a SoundFont exists, and then their files exist
        assert (out / src).is_file()
