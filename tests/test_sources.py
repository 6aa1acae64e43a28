"""Corpus sources: the folder layouts users bring, read from names and tables alone."""

from __future__ import annotations

import shutil

import pytest

from partita.data.sources import detect, parse_giantmidi_name, scan
from partita.errors import PartitaError


@pytest.fixture
def one_midi(fixtures):
    return fixtures / "multitrack" / "POP909_008.mid"


def _put(path, src):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, path)


def test_giantmidi_names_with_commas_and_accents():
    assert parse_giantmidi_name("Chopin, Frédéric, Études, Op.10, g0hoN6_HDVU") == (
        "Frédéric Chopin",
        "Études, Op.10",
        "g0hoN6_HDVU",
    )
    assert parse_giantmidi_name("Liszt, Franz, Hungarian Rhapsody No.2, S.244_2, LdH1hSWGFGU")[1] == (
        "Hungarian Rhapsody No.2, S.244_2"
    )
    assert parse_giantmidi_name("Maestro_1") is None
    assert parse_giantmidi_name("a, b, c, not-an-id") is None


def test_giantmidi_fixture_folder(fixtures, tmp_path):
    for f in (fixtures / "performance").glob("*, *.mid"):
        _put(tmp_path / "midis" / f.name, f)
    assert detect(tmp_path / "midis") == "giantmidi"
    fmt, pieces = scan(tmp_path / "midis")
    assert fmt == "giantmidi"
    labels = {p.label for p in pieces}
    assert {"Frédéric Chopin", "Franz Liszt", "Maurice Ravel", "George Frideric Handel"} <= labels
    ravel = next(p for p in pieces if p.label == "Maurice Ravel")
    assert ravel.title == "Jeux d'eau" and ravel.source == "giantmidi"


def test_plain_folder_labels_from_subfolders_and_unlabelled_files(one_midi, tmp_path):
    _put(tmp_path / "Bach" / "a.mid", one_midi)
    _put(tmp_path / "Bach" / "deeper" / "b.MID", one_midi)
    _put(tmp_path / "Mozart" / "c.midi", one_midi)
    _put(tmp_path / "loose.mid", one_midi)
    (tmp_path / "notes.txt").write_text("not midi")
    fmt, pieces = scan(tmp_path)
    assert fmt == "folder"
    assert [(p.id, p.label) for p in pieces] == [
        ("Bach/a.mid", "Bach"),
        ("Bach/deeper/b.MID", "Bach"),
        ("Mozart/c.midi", "Mozart"),
        ("loose.mid", None),
    ]


def test_folder_with_labels_csv(one_midi, tmp_path):
    _put(tmp_path / "x" / "1.mid", one_midi)
    _put(tmp_path / "x" / "2.mid", one_midi)
    (tmp_path / "labels.csv").write_text("path,label,title\nx/1.mid,Haydn,Quartet op. 1\nx/2.mid,Mozart\n")
    fmt, pieces = scan(tmp_path)
    assert [(p.label, p.title) for p in pieces] == [("Haydn", "Quartet op. 1"), ("Mozart", "2")]
    bad = tmp_path / "bad.csv"
    bad.write_text("x/1.mid\n")
    with pytest.raises(PartitaError, match="expected 'path,label"):
        scan(tmp_path, labels_csv=bad)


def test_maestro_csv_layout_and_official_split(one_midi, tmp_path):
    rows = [
        ("Frédéric Chopin", "Ballade No. 1", "train", "2004/a.midi"),
        ("Frédéric Chopin", "Ballade No. 1", "train", "2006/b.midi"),
        ("Sergei Rachmaninoff / György Cziffra", "Etude", "validation", "2009/c.midi"),
        ("Franz Schubert", "Sonata", "test", "2018/d.midi"),
    ]
    lines = ["canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration"]
    for composer, title, split, fn in rows:
        lines.append(f'"{composer}","{title}",{split},2004,{fn},{fn[:-5]}wav,1.0')
        _put(tmp_path / fn, one_midi)
    (tmp_path / "maestro-v3.0.0.csv").write_text("\n".join(lines) + "\n")
    assert detect(tmp_path) == "maestro"
    fmt, pieces = scan(tmp_path)
    assert [(p.label, p.split) for p in pieces] == [
        ("Frédéric Chopin", "train"),
        ("Frédéric Chopin", "train"),
        ("Sergei Rachmaninoff / György Cziffra", "valid"),
        ("Franz Schubert", "test"),
    ]
    assert pieces[0].group == pieces[1].group
    _, dropped = scan(tmp_path, composite="drop")
    assert len(dropped) == 3


def test_lakh_layouts(one_midi, tmp_path):
    md5 = "0123456789abcdef0123456789abcdef"
    full = tmp_path / "lmd_full"
    _put(full / "0" / f"{md5}.mid", one_midi)
    _put(full / "f" / f"{md5[::-1]}.mid", one_midi)
    assert detect(full) == "lakh"
    assert [p.label for p in scan(full)[1]] == [None, None]

    matched = tmp_path / "lmd_matched"
    _put(matched / "A" / "A" / "A" / "TRAAAGR128F425B14B" / f"{md5}.mid", one_midi)
    _put(matched / "A" / "A" / "A" / "TRAAAGR128F425B14B" / f"{md5[::-1]}.mid", one_midi)
    fmt, pieces = scan(matched)
    assert fmt == "lakh" and {p.group for p in pieces} == {"TRAAAGR128F425B14B"}

    clean = tmp_path / "clean_midi"
    _put(clean / "ABBA" / "Waterloo.mid", one_midi)
    _put(clean / "ABBA" / "Waterloo.1.mid", one_midi)
    fmt, pieces = scan(clean)
    assert fmt == "lakh"
    assert [(p.label, p.title) for p in pieces] == [("ABBA", "Waterloo"), ("ABBA", "Waterloo")]
    assert pieces[0].group == pieces[1].group


def test_bad_sources(tmp_path):
    with pytest.raises(PartitaError, match="no such folder"):
        scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PartitaError, match="no MIDI files"):
        scan(tmp_path / "empty")
    with pytest.raises(PartitaError, match="unknown format"):
        scan(tmp_path, format="napster")
    with pytest.raises(PartitaError, match="maestro"):
        scan(tmp_path, format="maestro")


def _pop909_layout(root, midi):
    """POP909's own layout: one folder per song, extra versions in a versions/ sub-folder."""
    for k in range(1, 7):
        _put(root / f"{k:03d}" / f"{k:03d}.mid", midi)
    _put(root / "001" / "versions" / "001-v1.mid", midi)
    _put(root / "001" / "versions" / "001-v2.mid", midi)
    return root


def test_one_piece_folders_are_not_labels(one_midi, tmp_path):
    root = _pop909_layout(tmp_path / "POP909", one_midi)
    notes = []
    fmt, pieces = scan(root, notes=notes)
    assert fmt == "folder" and {p.label for p in pieces} == {None}
    assert len(notes) == 1 and "6 of 6 sub-folders hold one piece each" in notes[0] and "--labels-from folder" in notes[0]
    # Asked for, the folders are labels; 'parent' is the folder holding each file.
    _, by_folder = scan(root, labels_from="folder")
    assert {p.id: p.label for p in by_folder}["001/versions/001-v1.mid"] == "001"
    _, by_parent = scan(root, labels_from="parent")
    assert {p.id: p.label for p in by_parent}["001/versions/001-v1.mid"] == "versions"
    assert {p.id: p.label for p in by_parent}["002/002.mid"] == "002"
    _, unlabelled = scan(root, labels_from="none")
    assert {p.label for p in unlabelled} == {None}


def test_composer_folders_stay_labels_and_nested_layouts_use_parent(one_midi, tmp_path):
    for composer, works in {"Bach": ["bwv_846", "bwv_847"], "Satie": ["Gymnopedie 1"], "Chopin": ["Ballade 1", "Nocturne 2"]}.items():
        for w in works:
            _put(tmp_path / "Piano" / composer / f"{w}.mid", one_midi)
    notes = []
    _, pieces = scan(tmp_path / "Piano", notes=notes)
    assert notes == [] and {p.label for p in pieces} == {"Bach", "Satie", "Chopin"}
    _put(tmp_path / "eras" / "Baroque" / "Bach" / "a.mid", one_midi)
    _put(tmp_path / "eras" / "Baroque" / "Handel" / "b.mid", one_midi)
    _, pieces = scan(tmp_path / "eras", labels_from="parent")
    assert [p.label for p in pieces] == ["Bach", "Handel"]
    _, pieces = scan(tmp_path / "eras")
    assert [p.label for p in pieces] == ["Baroque", "Baroque"]


def test_labels_from_mistakes(one_midi, tmp_path):
    _put(tmp_path / "a" / "x.mid", one_midi)
    with pytest.raises(PartitaError, match="--labels-from must be one of"):
        scan(tmp_path, labels_from="filename")
    with pytest.raises(PartitaError, match="no --labels-csv given"):
        scan(tmp_path, labels_from="csv")
    (tmp_path / "l.csv").write_text("a/x.mid,Bach\n")
    with pytest.raises(PartitaError, match="disagree"):
        scan(tmp_path, labels_from="folder", labels_csv=tmp_path / "l.csv")
    assert [p.label for p in scan(tmp_path, labels_from="csv", labels_csv=tmp_path / "l.csv")[1]] == ["Bach"]
    for f in ("a.mid", "b.mid"):
        _put(tmp_path / "g" / f"Chopin, Frédéric, Ballade No. 1, g0hoN6_HDV{f[0]}.mid", one_midi)
    with pytest.raises(PartitaError, match="has its own labels"):
        scan(tmp_path / "g", labels_from="folder")
    assert {p.label for p in scan(tmp_path / "g", labels_from="none")[1]} == {None}
