"""The command line: results as tables and JSON, mistakes as one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "partita", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def _one_line_error(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_prepare_info_and_json(fixtures, tmp_path):
    src = tmp_path / "midi"
    (src / "Pop").mkdir(parents=True)
    for f in sorted((fixtures / "multitrack").glob("POP909_*.mid")):
        shutil.copy(f, src / "Pop")
    shutil.copy(fixtures / "edge" / "zero-ticks-per-beat.mid", src / "Pop")
    out = tmp_path / "corpus"
    proc = run("data", "prepare", src, "--out", out, "-j", "1", "--json", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stderr
    assert "pieces ok" in proc.stdout and "zero_tpq" in proc.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ok"] == 4 and summary["bad_by_reason"] == {"zero_tpq": 1}
    info = run("data", "info", out, "--json", tmp_path / "i.json")
    assert info.returncode == 0 and "Pop" in info.stdout
    assert json.loads((tmp_path / "i.json").read_text())["notes"] == summary["notes"]

    trained = run("data", "tokenizer", "train", out, "--vocab", "700", "--split", "all")
    assert trained.returncode == 0, trained.stderr
    assert (out / "tokenizer.json").exists()
    tokenized = run("data", "tokenize", out)
    assert tokenized.returncode == 0, tokenized.stderr
    from partita.represent.tokens import TokenStreams

    streams = TokenStreams(out / "tokens")
    assert len(streams) == 4 and streams.vocab_size == 700
    assert "already exists" in _one_line_error(run("data", "tokenize", out))
    one = run("data", "tokenize", out, "-j", "1", "--out", tmp_path / "tokens1")
    assert one.returncode == 0, one.stderr
    for name in ("tokens.bin", "bars.bin", "positions.bin", "offsets.npy", "piece_ids.json"):
        assert (tmp_path / "tokens1" / name).read_bytes() == (out / "tokens" / name).read_bytes()
    assert "--workers" in _one_line_error(run("data", "tokenize", out, "-j", "0", "--out", tmp_path / "t0"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (("data", "info", "/nonexistent/corpus"), "not a prepared corpus"),
        (("data", "prepare", "/nonexistent/midi", "--out", "OUT"), "no such folder"),
        (("data", "prepare", ".", "--out", "OUT", "--shard", "5/4"), "--shard"),
        (("data", "prepare", ".", "--out", "OUT", "--format", "napster"), "unknown format"),
        (("data", "prepare", ".", "--out", "OUT", "--valid", "1.5"), "--valid"),
        (("data", "merge", "/nonexistent/a", "--out", "OUT"), "not a finished prepared corpus"),
        (("data", "prepare", ".", "--out", "OUT", "--labels-from", "filename"), "--labels-from must be one of"),
        (("data", "prepare", ".", "--out", "OUT", "--labels", " , "), "--labels needs at least one label"),
        (("data", "prepare", "bundled", "--out", "OUT", "--labels-from", "none"), "bundled corpus has its own labels"),
    ],
)
def test_mistakes_are_one_line(args, expected, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    line = _one_line_error(run(*args, cwd=tmp_path))
    assert line.startswith("error: ") and expected in line


def test_usage_errors_exit_non_zero():
    proc = run("data", "prepare")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert run("--help").returncode == 0


def test_prepare_labels_options_in_the_summary(fixtures, tmp_path):
    src = tmp_path / "midi"
    for k, f in enumerate(sorted((fixtures / "multitrack").glob("POP909_*.mid")), 1):
        (src / f"{k:03d}").mkdir(parents=True)
        shutil.copy(f, src / f"{k:03d}" / f"{k:03d}.mid")
    proc = run("data", "prepare", src, "--out", tmp_path / "pop", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert "labels: none: 4 of 4 sub-folders hold one piece each" in proc.stdout
    assert "(none)" in proc.stdout

    band = tmp_path / "band"
    for label, glob in (("Pop", "POP909_*.mid"), ("Band", "[A-F]*.mid"), ("Other", "[G-M]*.mid")):
        (band / label).mkdir(parents=True)
        for f in sorted((fixtures / "multitrack").glob(glob)):
            shutil.copy(f, band / label)
    proc = run("data", "prepare", band, "--out", tmp_path / "b", "-j", "2", "--labels", "Pop,Band", "--min-pieces", "4",
               "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "b.json").read_text())
    assert set(summary["per_label"]) == {"Pop"} and summary["excluded_labels"] == {"Band": 3}
    assert "labels kept" in proc.stdout and "Pop, Band (5 files of other labels not read)" in proc.stdout
    assert "labels left out (< 4 pieces)" in proc.stdout and "Band (3)" in proc.stdout
    line = _one_line_error(run("data", "prepare", band, "--out", tmp_path / "c", "--labels", "Jazz"))
    assert "no piece of" in line and "labelled 'Jazz'" in line


def test_progress_bar_runs_no_thread_of_its_own():
    """The worker pool forks while a command's progress bar is shown: the bar must not keep a
    refresh thread (a fork copies the locks other threads hold)."""
    import threading

    from partita.cli.common import progress_bar

    before = threading.active_count()
    with progress_bar("working") as update:
        for k in range(1, 4):
            update(k, 3)
            assert threading.active_count() == before
