"""prepare: parallel, isolated per file, resumable after a kill, shardable, and exact."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from partita.data.corpus import Corpus
from partita.data.prepare import merge, prepare, read_piece, shard_of
from partita.errors import PartitaError
from partita.io import load, note_array, preprocess
from conftest import labelled_folder


@pytest.fixture
def corpus_dir(fixtures, tmp_path):
    """A labelled folder of real files plus two bad ones."""
    root = tmp_path / "midi"
    labelled_folder(root, {
        "Pop": sorted((fixtures / "multitrack").glob("POP909_*.mid")),
        "Band": sorted((fixtures / "multitrack").glob("[A-M]*.mid")),
        "Piano": sorted((fixtures / "performance").glob("Maestro_[1-4].mid")),
    })
    shutil.copy(fixtures / "edge" / "empty.mid", root / "Pop" / "empty.mid")
    shutil.copy(fixtures / "edge" / "control168-corrupt.mid", root / "Band" / "corrupt.mid")
    return root


def crashing_reader(path, options):
    """Reads like partita does, but kills its own process on one file (a segfault's stand-in)."""
    if "crash" in os.path.basename(path):
        os._exit(3)
    return read_piece(path, options)


def _same_corpus(a: Corpus, b: Corpus) -> None:
    cols = ["id", "label", "title", "split", "status", "reason", "n_notes", "tpq"]
    assert [{k: r[k] for k in cols} for r in a.rows] == [{k: r[k] for k in cols} for r in b.rows]
    assert np.array_equal(np.asarray(a.note_store), np.asarray(b.note_store))
    assert np.array_equal(np.asarray(a.tempo_store), np.asarray(b.tempo_store))


def test_prepare_reads_good_files_and_reports_bad_ones(corpus_dir, tmp_path):
    corpus = prepare(corpus_dir, tmp_path / "out", workers=2).corpus
    summary = corpus.summary()
    assert summary["bad_by_reason"] == {"corrupt": 1, "no_notes": 1}
    assert summary["ok"] == len(corpus) == summary["pieces"] - 2
    assert set(summary["per_label"]) == {"Pop", "Band", "Piano"}
    assert summary["hours"] > 0.1 and summary["notes"] == sum(r["n_notes"] for r in corpus.pieces)
    assert set(summary["per_split"]) <= {"train", "valid", "test"}
    assert sum(summary["per_split"].values()) == len(corpus)
    # The note store gives back exactly what reading the MIDI gives.
    for i in range(len(corpus)):
        direct = note_array(preprocess(load(corpus.pieces[i]["path"]), sustain=True))
        stored = corpus.notes(i)
        assert stored["pitch"].tolist() == direct["pitch"].tolist()
        np.testing.assert_allclose(stored["onset"], direct["onset"], atol=1e-4)
        np.testing.assert_allclose(stored["duration"], direct["duration"], atol=1e-4)
        fields = ["onset", "duration", "pitch", "velocity", "program", "is_drum"]  # score() drops empty tracks
        rebuilt = note_array(corpus.score(i), "tick")[fields]
        assert rebuilt.tolist() == note_array(preprocess(load(corpus.pieces[i]["path"]), sustain=True), "tick")[fields].tolist()
    assert not (tmp_path / "out" / "parts").exists()


def test_a_crashed_worker_marks_its_file_bad_and_the_run_goes_on(corpus_dir, tmp_path):
    shutil.copy(corpus_dir / "Pop" / "POP909_008.mid", corpus_dir / "Pop" / "crash.mid")
    corpus = prepare(corpus_dir, tmp_path / "out", workers=2, reader=crashing_reader).corpus
    bad = {r["id"]: r["reason"] for r in corpus.rows if r["status"] != "ok"}
    assert bad == {"Pop/crash.mid": "crashed", "Pop/empty.mid": "no_notes", "Band/corrupt.mid": "corrupt"}
    assert len(corpus) == len(corpus.rows) - 3


def test_killed_run_resumes_to_the_same_corpus(corpus_dir, tmp_path):
    reference = prepare(corpus_dir, tmp_path / "ref", workers=2).corpus
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from partita.data.prepare import prepare, read_piece

        def slow_reader(path, options):  # once 3 pieces are saved, the rest wait for the kill
            time.sleep(0.3)
            if len(list(Path({str(out / "parts")!r}).glob("part-*"))) >= 3:
                time.sleep(3600)
            return read_piece(path, options)

        prepare({str(corpus_dir)!r}, {str(out)!r}, workers=2, flush_every=1, reader=slow_reader)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "parts").glob("part-*"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its worker pool, mid-run
    proc.wait()
    parts = list((out / "parts").glob("part-*"))
    assert 3 <= len(parts) < len(reference.rows), "the kill should land mid-run"
    assert not (out / "corpus.json").exists()

    resumed = prepare(corpus_dir, out, workers=2)
    assert resumed.read_now == len(reference.rows) - len(parts)  # one piece per part here
    _same_corpus(resumed.corpus, reference)
    # Running once more finds nothing to do and changes nothing.
    again = prepare(corpus_dir, out, workers=2)
    assert again.read_now == 0
    _same_corpus(again.corpus, reference)


def test_interrupt_keeps_finished_pieces(corpus_dir, tmp_path):
    out = tmp_path / "out"
    seen = []

    def stop_after_three(done, total):
        seen.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(corpus_dir, out, workers=1, progress=stop_after_three)
    kept = list((out / "parts").glob("part-*"))
    assert len(kept) == 1
    resumed = prepare(corpus_dir, out, workers=1)
    assert resumed.read_now == len(resumed.corpus.rows) - 3


def test_shards_partition_the_files_and_merge_to_the_whole(corpus_dir, tmp_path):
    whole = prepare(corpus_dir, tmp_path / "whole", workers=2).corpus
    shard_dirs = [tmp_path / f"shard{i}" for i in range(3)]
    ids = []
    for i, d in enumerate(shard_dirs):
        part = prepare(corpus_dir, d, workers=1, shard=(i, 3)).corpus
        ids.append({r["id"] for r in part.rows})
        assert all(shard_of(x, 3) == i for x in ids[-1])
    assert set.union(*ids) == {r["id"] for r in whole.rows}
    assert sum(len(s) for s in ids) == len(whole.rows)
    merged = merge(shard_dirs, tmp_path / "merged")
    _same_corpus(merged, whole)
    with pytest.raises(PartitaError, match="missing"):
        merge(shard_dirs[:2], tmp_path / "merged2")


def test_rerun_with_other_options_is_refused(corpus_dir, tmp_path):
    from partita.data.prepare import ReadOptions

    out = tmp_path / "out"
    prepare(corpus_dir, out, workers=1)
    with pytest.raises(PartitaError, match="other options"):
        prepare(corpus_dir, out, workers=1, options=ReadOptions(sustain=False))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("mine")
    with pytest.raises(PartitaError, match="not empty"):
        prepare(corpus_dir, tmp_path / "full", workers=1)
    assert (tmp_path / "full" / "precious.txt").read_text() == "mine"


def test_split_modes(corpus_dir, tmp_path):
    corpus = prepare(corpus_dir, tmp_path / "out", workers=1, split_mode="labels", unseen=0.34).corpus
    unseen = {r["label"] for r in corpus.pieces if r["split"] == "unseen"}
    assert len(unseen) == 1
    assert all(r["split"] == "unseen" for r in corpus.pieces if r["label"] in unseen)


def test_too_long_pieces_are_refused_with_their_reason(corpus_dir, tmp_path):
    from partita.data.prepare import ReadOptions

    corpus = prepare(corpus_dir, tmp_path / "out", workers=1, options=ReadOptions(max_seconds=250.0)).corpus
    too_long = {r["id"] for r in corpus.rows if r["reason"] == "too_long"}
    assert "Piano/Maestro_2.mid" in too_long  # 15 minutes
    assert all(r["duration"] <= 250.0 for r in corpus.pieces)
    message = next(r["message"] for r in corpus.rows if r["reason"] == "too_long")
    assert "minute limit" in message and "\n" not in message


def test_keep_labels_and_drop_small_ones(corpus_dir, tmp_path):
    out = tmp_path / "out"
    corpus = prepare(corpus_dir, out, workers=2, labels=["Pop", "Band"], min_pieces=5).corpus
    summary = corpus.summary()
    assert summary["labels"]["only"] == ["Pop", "Band"] and summary["labels"]["left_out"] == 4  # Piano not read
    assert {r["label"] for r in corpus.rows} == {"Pop", "Band"}
    # Pop has 4 usable pieces (its fifth file is bad): left out, its pieces kept on disk as "excluded".
    assert summary["excluded_labels"] == {"Pop": 4} and set(summary["per_label"]) == {"Band"}
    assert summary["bad_by_reason"] == {"corrupt": 1, "no_notes": 1} and summary["bad"] == 2
    excluded = [r for r in corpus.rows if r["status"] == "excluded"]
    assert len(excluded) == 4 and all(r["reason"] == "few_pieces" and r["split"] is None for r in excluded)
    assert all(r["label"] == "Band" for r in corpus.pieces) and len(corpus) == 8
    # Another threshold on the same corpus reads nothing again and brings Pop back.
    again = prepare(corpus_dir, out, workers=2, labels=["Pop", "Band"], min_pieces=4)
    assert again.read_now == 0 and set(again.corpus.summary()["per_label"]) == {"Pop", "Band"}
    assert again.corpus.summary()["excluded_labels"] == {}
    with pytest.raises(PartitaError, match="labelled 'Jazz'.*labels there: Band, Piano, Pop"):
        prepare(corpus_dir, tmp_path / "other", labels=["Pop", "Jazz"])


def test_one_piece_per_folder_layout_is_unlabelled_and_tested(fixtures, tmp_path):
    root = tmp_path / "POP909"
    songs = sorted((fixtures / "multitrack").glob("*.mid"))[:8]
    for k, f in enumerate(songs, 1):
        (root / f"{k:03d}" / "versions").mkdir(parents=True)
        shutil.copy(f, root / f"{k:03d}" / f"{k:03d}.mid")
        shutil.copy(f, root / f"{k:03d}" / "versions" / f"{k:03d}-v1.mid")
    corpus = prepare(root, tmp_path / "out", workers=2, test=0.2).corpus
    summary = corpus.summary()
    assert summary["per_label"] == {"(none)": 16}
    assert "8 of 8 sub-folders hold one piece each" in summary["labels"]["notes"][0]
    assert summary["per_split"]["test"] == 4  # 2 of the 8 songs, each with its version
    by_folder = {}
    for r in corpus.pieces:
        by_folder.setdefault(r["id"].split("/")[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_folder.values())
    # As folders, they were one-piece labels: every song in train, nothing to test on.
    as_labels = prepare(root, tmp_path / "labels", workers=2, test=0.2, labels_from="folder").corpus
    assert as_labels.summary()["per_split"] == {"train": 16} and as_labels.summary()["labels"]["notes"] == []


def test_identical_files_under_two_labels_share_a_split(corpus_dir, tmp_path):
    for name in ("Aicha.mid", "Funkytown.mid", "Mr. Blue Sky.mid"):
        shutil.copy(corpus_dir / "Band" / name, corpus_dir / "Pop" / f"copy of {name}")
    for seed in range(6):
        corpus = prepare(corpus_dir, tmp_path / f"s{seed}", workers=2, seed=seed, valid=0.2, test=0.3).corpus
        split = {r["id"]: r["split"] for r in corpus.pieces}
        for name in ("Aicha.mid", "Funkytown.mid", "Mr. Blue Sky.mid"):
            assert split[f"Band/{name}"] == split[f"Pop/copy of {name}"]
        content = {r["id"]: r["content"] for r in corpus.pieces}
        assert content["Band/Aicha.mid"] == content["Pop/copy of Aicha.mid"] != content["Band/Funkytown.mid"]
