"""The ASAP source: performances and scores of a work, labelled by composer, kept in one split."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest

from conftest import FIXTURES
from partita.data.corpus import Corpus
from partita.data.prepare import prepare
from partita.data.sources import detect, scan
from partita.errors import PartitaError

COLUMNS = ["composer", "title", "folder", "xml_score", "midi_score", "midi_performance", "performance_annotations"]


def asap_folder(root, works: dict[str, list[str]]):
    """An ASAP-like folder: ``works`` maps 'Composer/Kind/work' to its performers; every work gets a
    ``midi_score.mid``. Real MIDI files from the fixtures stand in for both, each used once (a
    file under two names is one piece to the splitter, which keeps copies together)."""
    files = iter(sorted((FIXTURES / "performance").glob("*.mid")) + sorted((FIXTURES / "multitrack").glob("*.mid")))
    rows = []
    for folder, performers in works.items():
        (root / folder).mkdir(parents=True)
        shutil.copy(next(files), root / folder / "midi_score.mid")
        for who in performers:
            shutil.copy(next(files), root / folder / f"{who}.mid")
            rows.append({"composer": folder.split("/")[0], "title": folder.split("/", 1)[1].replace("/", "_"),
                         "folder": folder, "xml_score": f"{folder}/xml_score.musicxml",
                         "midi_score": f"{folder}/midi_score.mid", "midi_performance": f"{folder}/{who}.mid",
                         "performance_annotations": f"{folder}/{who}_annotations.txt"})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return root


WORKS = {
    "Bach/Fugue/bwv_846": ["Shi05M", "Lee01"],
    "Bach/Prelude/bwv_847": ["Kim02"],
    "Bach/Fugue/bwv_848": ["Denisova06M", "Ott07"],
    "Chopin/Etudes_op_10/3": ["Abe01", "Bo02", "Cy03"],
    "Chopin/Ballades/1": ["Dee04"],
    "Chopin/Scherzos/2": ["Eve05"],
}


@pytest.fixture
def asap(tmp_path):
    return asap_folder(tmp_path / "asap", WORKS)


def test_scan_lists_performances_and_each_score_once(asap):
    assert detect(asap) == "asap"
    fmt, pieces = scan(asap)
    assert fmt == "asap"
    assert len(pieces) == 10 + 6  # every performance, one score per work
    by_id = {p.id: p for p in pieces}
    score = by_id["Bach/Fugue/bwv_846/midi_score.mid"]
    assert (score.kind, score.label, score.group, score.source) == ("score", "Bach", "Bach/Fugue/bwv_846", "asap")
    perf = by_id["Chopin/Etudes_op_10/3/Abe01.mid"]
    assert (perf.kind, perf.label, perf.group, perf.title) == ("performance", "Chopin", "Chopin/Etudes_op_10/3", "Etudes op 10 3")
    assert {p.kind for p in scan(asap, kind="performances")[1]} == {"performance"}
    scores = scan(asap, kind="scores")[1]
    assert [p.id for p in scores] == sorted(f"{w}/midi_score.mid" for w in WORKS)


def test_bad_kind_and_bad_metadata(asap, tmp_path):
    with pytest.raises(PartitaError, match="--kind must be one of"):
        scan(asap, kind="recordings")
    plain = tmp_path / "plain"
    (plain / "Bach").mkdir(parents=True)
    shutil.copy(FIXTURES / "performance" / "Maestro_1.mid", plain / "Bach" / "a.mid")
    with pytest.raises(PartitaError, match="asap"):
        scan(plain, kind="scores")
    (asap / "metadata.csv").write_text("composer,folder\nBach,Bach/Fugue/bwv_846\n")
    assert detect(asap) != "asap"  # no midi_score / midi_performance columns: not ASAP
    with pytest.raises(PartitaError, match="missing column"):
        scan(asap, format="asap")


def test_prepare_keeps_every_rendition_of_a_work_in_one_split(asap, tmp_path):
    corpus = prepare(asap, tmp_path / "corpus", workers=1, valid=0.2, test=0.2).corpus
    rows = corpus.pieces
    assert len(rows) == 16 and {r["kind"] for r in rows} == {"performance", "score"}
    split_of_work: dict = {}
    for r in rows:
        split_of_work.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_work.values()), split_of_work
    assert {next(iter(s)) for s in split_of_work.values()} == {"train", "valid", "test"}
    again = Corpus(tmp_path / "corpus")  # the kind column is stored in pieces.parquet
    assert again.table.column("kind").to_pylist() == [r["kind"] for r in again.rows]


def test_cli_kind_option_and_one_line_error(asap, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "partita", "data", "prepare", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    ok = run(asap, "--out", tmp_path / "scores", "--kind", "scores", "-j", "1")
    assert ok.returncode == 0, ok.stderr
    assert {r["kind"] for r in Corpus(tmp_path / "scores").pieces} == {"score"}
    bad = run(asap, "--out", tmp_path / "x", "--kind", "audio")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode != 0 and len(lines) == 1 and "--kind" in lines[0] and "Traceback" not in bad.stderr
