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
