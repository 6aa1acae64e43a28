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
