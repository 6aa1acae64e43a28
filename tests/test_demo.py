"""`partita demo` on a tiny bundled corpus: exports music21 pieces, prepares them, summarises."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # a cold cache of its own
    proc = subprocess.run(
        [sys.executable, "-m", "partita", "demo", "--out", str(tmp_path / "demo"), "--max-per-label", "2", "-j", "2", "--bars", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pieces ok" in proc.stdout
    for label in ("Bach", "Palestrina", "Essen", "O'Neill's"):
        assert label in proc.stdout
    assert (tmp_path / "demo" / "corpus" / "corpus.json").exists()
    assert any((tmp_path / "cache" / "partita").iterdir())
    # the shipped transformer continued a chord progression (and held-out openings when present)
    from partita.io import load

    made = sorted((tmp_path / "demo" / "generated").glob("*.mid"))
    assert "chords-continuation.mid" in [p.name for p in made]
    for path in made:
        assert load(path).note_num() > 0
