"""The bundled corpus: music21's corpus exported to labelled MIDI, cached, resumable.

Every export here is tiny (one or two works per label, cheap labels) and goes to tmp_path.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from partita.data.piece import Piece
from partita.data.sources import bundled
from partita.data.sources.bundled import (
    LABELS,
    BundledExport,
    export_bundled,
    list_works,
    read_labels_csv,
    select_works,
    split_abc,
)
from partita.io import load

# Labels whose works convert in well under a second each.
CHEAP = ["Bach", "Essen", "O'Neill's"]


def _mtimes(result: BundledExport) -> dict[str, int]:
    return {p.id: os.stat(p.path).st_mtime_ns for p in result.pieces}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> BundledExport:
    out = tmp_path_factory.mktemp("bundled")
    calls: list[tuple[int, int]] = []
    result = export_bundled(out, max_per_label=2, labels=CHEAP, workers=2, progress=lambda d, t: calls.append((d, t)))
    result.progress_calls = calls  # type: ignore[attr-defined]
    return result


def test_export_writes_labelled_midi_that_partita_reads(small):
    assert not small.reused
    assert len(small.pieces) == 6
    assert {p.label for p in small.pieces} == set(CHEAP)
    assert small.exported == {label: 2 for label in CHEAP}
    assert small.skipped == {label: 0 for label in CHEAP}
    for piece in small.pieces:
        assert isinstance(piece, Piece)
        assert piece.source == "bundled"
        assert piece.title
        assert Path(piece.path) == small.out_dir / piece.id
        assert not Path(piece.id).is_absolute() and piece.id.endswith(".mid")
        assert load(piece.path).note_num() > 0
    # Nothing half-written is left behind.
    assert not [p for p in small.out_dir.rglob("*.tmp*")]
    assert not (small.out_dir / bundled.JOURNAL).exists()
    assert small.manifest.is_file()


def test_counts_and_progress(small):
    for label in CHEAP:
        assert small.available[label] > 2
        assert small.selected[label] == 2
    # Essen holds thousands of tunes: each tune of a book is its own piece.
    assert small.available["Essen"] > 1000
    calls = small.progress_calls
    assert calls[0] == (0, 6) and calls[-1] == (6, 6)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_labels_csv_matches_pieces(small):
    rows = read_labels_csv(small.out_dir)
    assert rows == [(p.id, p.label, p.title) for p in small.pieces]
    header = (small.out_dir / "labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,label,title"
    for path, _, _ in rows:
        assert (small.out_dir / path).is_file()


def test_second_call_reuses_the_export(small):
    before = _mtimes(small)
    manifest_mtime = small.manifest.stat().st_mtime_ns
    again = export_bundled(small.out_dir, max_per_label=2, labels=CHEAP, workers=2)
    assert again.reused
    assert again.pieces == small.pieces
    assert _mtimes(again) == before
    assert small.manifest.stat().st_mtime_ns == manifest_mtime


def test_selection_is_deterministic_and_spread(small, tmp_path):
    works = list_works("Palestrina")
    first = select_works(works, 5)
    assert first == select_works(list_works("Palestrina"), 5)
    assert [w.ref for w in first] == sorted(w.ref for w in first)  # kept in corpus order
    assert first != works[:5]  # a sample across the collection, not the first files
    assert select_works(works, None) == works
    # A second export elsewhere picks and names the same pieces.
    other = export_bundled(tmp_path / "again", max_per_label=2, labels=CHEAP, workers=1)
    assert [(p.id, p.label, p.title) for p in other.pieces] == [(p.id, p.label, p.title) for p in small.pieces]


def test_workers_start_clean_when_other_threads_run(tmp_path):
    # A progress bar's thread is running: the pool must not fork this process (see _mp_context).
    stop = threading.Event()
    bar = threading.Thread(target=stop.wait, daemon=True)
    bar.start()
    try:
        assert bundled._mp_context().get_start_method() != "fork"
        result = export_bundled(tmp_path, max_per_label=1, labels=["Essen", "Bach"], workers=2)
    finally:
        stop.set()
        bar.join()
    assert result.exported == {"Bach": 1, "Essen": 1}
    for piece in result.pieces:
        assert load(piece.path).note_num() > 0


def _extra_work(label: str, ref: str, out: str, *, path: str, text: str | None = None) -> bundled._Work:
    return bundled._Work(label=label, ref=ref, out=out, path=path, fallback_title=ref, text=text, cost=0)


def test_a_work_music21_cannot_use_is_skipped_and_counted(tmp_path, monkeypatch):
    broken = tmp_path / "broken.xml"
    broken.write_text("<score-partwise><part id='P1'><measure number='1'>", encoding="utf-8")
    real = bundled._ENUMERATORS["Bach"]
    extra = [
        # music21 cannot parse this file at all.
        _extra_work("Bach", "test/broken.xml", "bach/zz-broken.mid", path=str(broken)),
        # A tune of rests: music21 writes a MIDI file, which partita.io.load refuses (no notes).
        _extra_work("Bach", "test/silence.abc#X1", "bach/zz-silence.mid", path="", text="X:1\nT:Silence\nM:4/4\nL:1/4\nK:C\nz4|z4|]\n"),
    ]
    monkeypatch.setitem(bundled._ENUMERATORS, "Bach", lambda: real()[:1] + extra)
    result = export_bundled(tmp_path / "out", max_per_label=3, labels=["Bach"], workers=2)
    assert result.exported == {"Bach": 1}
    assert result.skipped == {"Bach": 2}
    assert set(result.skip_reasons) == {"test/broken.xml", "test/silence.abc#X1"}
    assert "cannot parse" in result.skip_reasons["test/broken.xml"]
    assert "no_notes" in result.skip_reasons["test/silence.abc#X1"]
    assert not (result.out_dir / "bach/zz-broken.mid").exists()
    assert not (result.out_dir / "bach/zz-silence.mid").exists()
    assert [r[0] for r in read_labels_csv(result.out_dir)] == [p.id for p in result.pieces]
    # The skips are part of the finished export: a second call reuses it.
    again = export_bundled(tmp_path / "out", max_per_label=3, labels=["Bach"], workers=2)
    assert again.reused and again.skip_reasons == result.skip_reasons


def _crash_on(ref: str):
    real = bundled._convert_one

    def convert(work, out_path):
        if work.ref == ref:
            os._exit(3)  # the worker process dies, as on a segfault or the OOM killer
        return real(work, out_path)

    return convert


@pytest.mark.skipif(
    bundled._mp_context().get_start_method() != "fork",
    reason="needs fork workers, which see the crash forced in this process",
)
def test_a_crashed_worker_does_not_abort_the_export(tmp_path, monkeypatch):
    works = select_works(list_works("Essen"), 4)
    victim = works[1].ref
    monkeypatch.setattr(bundled, "_convert_one", _crash_on(victim))
    result = export_bundled(tmp_path, max_per_label=4, labels=["Essen"], workers=2)
    assert result.exported == {"Essen": 3}
    assert result.skipped == {"Essen": 1}
    assert "worker process died" in result.skip_reasons[victim]
    for piece in result.pieces:
        assert load(piece.path).note_num() > 0


class _Stop(Exception):
    pass


def test_an_interrupted_export_resumes_and_keeps_finished_files(tmp_path):
    def stop_after_two(done, total):
        if done >= 2:
            raise _Stop

    with pytest.raises(_Stop):
        export_bundled(tmp_path, max_per_label=2, labels=["Bach", "Essen"], workers=1, progress=stop_after_two)
    assert not (tmp_path / "manifest.json").exists()  # not complete
    journal = [json.loads(line) for line in (tmp_path / bundled.JOURNAL).read_text().splitlines()]
    assert len(journal) == 2
    finished = {rec["out"]: os.stat(tmp_path / rec["out"]).st_mtime_ns for rec in journal}

    result = export_bundled(tmp_path, max_per_label=2, labels=["Bach", "Essen"], workers=1)
    assert not result.reused
    assert len(result.pieces) == 4
    for out, mtime in finished.items():
        assert os.stat(tmp_path / out).st_mtime_ns == mtime  # reused, not rewritten
    assert result.manifest.is_file()
    assert not (tmp_path / bundled.JOURNAL).exists()


def test_other_settings_in_the_same_folder_rebuild_and_drop_stale_files(tmp_path):
    first = export_bundled(tmp_path, max_per_label=2, labels=["Essen"], workers=0)
    second = export_bundled(tmp_path, max_per_label=1, labels=["Essen"], workers=0)
    assert not second.reused
    assert len(second.pieces) == 1
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.mid"))
    assert on_disk == [p.id for p in second.pieces]
    assert len(first.pieces) == 2


def test_default_folder_is_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = export_bundled(max_per_label=1, labels=["O'Neill's"], workers=0)
    expected = tmp_path / "partita" / f"bundled-{bundled.music21_version()}-1-oneills"
    if result.out_dir != expected:  # platformdirs may ignore XDG_CACHE_HOME off Linux
        pytest.skip(f"cache folder is {result.out_dir}")
    assert len(result.pieces) == 1
    assert bundled.default_out_dir(None).name == f"bundled-{bundled.music21_version()}-full"


def test_unknown_label_and_bad_cap_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown bundled label"):
        export_bundled(tmp_path, labels=["Chopin"])
    with pytest.raises(ValueError, match="max_per_label"):
        export_bundled(tmp_path, max_per_label=0)


def test_every_label_lists_works():
    for label in LABELS:
        works = list_works(label)
        assert works, label
        assert [w.ref for w in works] == [w.ref for w in list_works(label)]
        assert len({w.out for w in works}) == len(works)
        assert all(w.out.endswith(".mid") and w.label == label for w in works)
    bach = {Path(w.ref).stem for w in list_works("Bach")}
    assert "bwv846" not in bach  # the prelude is not a chorale
    assert not any(w.ref.endswith(".rntxt") for label in LABELS for w in list_works(label))
    # Works that exist in several formats are listed once.
    beethoven = [w.ref for w in list_works("Beethoven")]
    assert "beethoven/opus18no1/movement1.mxl" in beethoven
    assert "beethoven/opus18no1/movement1.krn" not in beethoven


def test_split_abc_keeps_the_file_header_and_each_tune():
    text = "%abc\nL:1/8\n\nX:1\nT:One\nK:C\nCDEF|\n\nX: 2\nT:Two\nK:G\nGABc|\n"
    tunes = split_abc(text)
    assert [n for n, _ in tunes] == ["1", "2"]
    assert tunes[0][1].startswith("X:1\nL:1/8\nT:One")
    assert "GABc" in tunes[1][1] and "CDEF" not in tunes[1][1]
    assert split_abc("no tunes here") == []
