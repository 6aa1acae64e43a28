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
    assert "Piano music never seen by the piano models" in stdout
    piano = {p.name: load(p) for p in (out / "piano").glob("*.mid")}  # gpt-piano: continued and infilled
    assert set(piano) == {"piano-continuation.mid", "piano-infill.mid"}
    assert all(s.note_num() > 0 for s in piano.values())
    html = (out / "index.html").read_text()
    assert "Piano music" in html and "Hungarian Rhapsody" in html and "Liszt" in html
    assert "Piano generation" in html and "bars 5-6 rewritten by gpt-piano" in html
    accompanied = {p.name: load(p) for p in (out / "accompanied").glob("*.mid")}
    assert set(accompanied) == {"chorale-harmonized.mid", "folk-accompanied.mid", "folk-pop-accompanied.mid"}
    assert [t.name for t in accompanied["chorale-harmonized.mid"].tracks][-3:] == ["Alto", "Tenor", "Bass"]
    assert "Accompaniment" in html and "chorale-harmony" in html and "parallel fifths and octaves" in html
    assert "the chords pop-chords (a tagger trained on POP909) hears in it" in html and "held-out POP909 songs" in html


def test_piano_demo_finds_held_out_performances_scores(tmp_path):
    from test_asap import asap_folder

    from partita.demo import PIANO_SET, _piano
    from partita.search.attribute import load_attribution
    from partita.search.index import shipped_index

    pianists = set(load_attribution(shipped_index("piano")).labels)
    asap = asap_folder(tmp_path / "asap", {"Bach/Fugue/x1": ["A"], "Chopin/Etude/x2": ["B"], "Liszt/Etude/x3": ["C"]})
    got = _piano(asap, held_out=3)
    assert len(got["transcriptions"]) == len(list(PIANO_SET.glob("*.mid"))) == 4 and not got["failures"]
    assert all(t["verdict"] in pianists | {"unknown composer"} for t in got["transcriptions"])
    assert len(got["renditions"]) == 3
    for r in got["renditions"]:
        assert r["scores"] == 3 and 1 <= r["rank_of_its_score"] <= 3
    from partita.errors import PartitaError

    with pytest.raises(PartitaError, match="not an ASAP folder"):
        _piano(tmp_path)


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
