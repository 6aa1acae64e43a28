"""partita embed / similar / attribute / map: tables and JSON, the shipped index, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from test_search import random_note_piece, write_labelled_folder

from partita.errors import PartitaError


def cli(capsys, *args):
    """Run the partita command in this process (no new interpreter: the tests stay quick)."""
    from partita.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "partita", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny random SiaViT bundle and an index of nine labelled pieces made with it."""
    from partita.bundle import save_bundle
    from partita.models.siavit import SiaViT, SiaViTConfig
    from partita.search.index import embed_into_index

    root = tmp_path_factory.mktemp("searchcli")
    torch.manual_seed(0)
    model = save_bundle(SiaViT(SiaViTConfig.tiny()), root / "embedder")
    src = write_labelled_folder(root / "midi")
    embed_into_index([src], root / "idx", model=model, windows=3)
    random_note_piece(seed=1).dump_midi(str(root / "random.mid"))
    return root


def test_embed_command_adds_to_an_index_and_writes_json(built, tmp_path, capsys):
    code, out, err = cli(capsys, "embed", built / "midi", "--model", built / "embedder", "--index", tmp_path / "idx",
                         "--windows", "2", "--index-type", "hnsw", "--unknown-quantile", "0.9", "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "created" in out and "hnsw" in out and "attribution: 3 labels" in out
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["added"] == 9 and doc["meta"]["kind"] == "hnsw" and doc["meta"]["labels"] == {"High": 3, "Low": 3, "Mid": 3}
    code, out, err = cli(capsys, "embed", built / "random.mid", FIXTURES / "edge" / "empty.mid", "--index", tmp_path / "idx",
                         "--label", "Noise", "--json", tmp_path / "e2.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "e2.json").read_text())
    assert doc["added"] == 1 and doc["meta"]["count"] == 10 and doc["meta"]["labels"]["Noise"] == 1
    assert doc["attribution"]["quantile"] == 0.9 and doc["attribution"]["labels"] == 4  # refit, same quantile
    assert [f["reason"] for f in doc["failures"]] == ["the file contains no notes"] and "skipped:" in err


def test_similar_attribute_and_map_on_a_built_index(built, tmp_path, capsys):
    query = built / "midi" / "Low" / "low2.mid"
    code, out, err = cli(capsys, "similar", query, "--index", built / "idx", "-k", "4", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "Most similar to low2.mid" in out
    (res,) = json.loads((tmp_path / "s.json").read_text())["results"]
    assert [h["rank"] for h in res["hits"]] == [1, 2, 3, 4]
    assert res["hits"][0]["title"] == "low2" and res["hits"][0]["distance"] < 1e-4  # itself first
    assert all(a["distance"] <= b["distance"] for a, b in zip(res["hits"], res["hits"][1:]))

    code, out, err = cli(capsys, "attribute", query, built / "random.mid", "--index", built / "idx", "-k", "2",
                         "--json", tmp_path / "a.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "a.json").read_text())
    assert [len(r["top"]) for r in doc["results"]] == [2, 2]
    assert doc["fitted"]["calibration"] == "leave-one-out" and "temperature" in out
    for r in doc["results"]:
        assert r["verdict"] == ("unknown composer" if r["novelty"] > doc["threshold"] else r["top"][0]["label"])

    html = tmp_path / "map" / "m.html"
    code, out, err = cli(capsys, "map", built / "idx", "-H", built / "random.mid", "-H", query, "-o", html,
                         "--method", "pca", "--json", tmp_path / "m.json")
    assert code == 0, err
    assert html.is_file() and (tmp_path / "map" / "m.png").is_file() and "2 highlighted" in out
    page = html.read_text()
    assert "random.mid" in page and "composer: Mid" in page
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["fitted"] is True and len(doc["highlights"]) == 2
    assert len(doc["points"]) == 9 and {p["label"] for p in doc["points"]} == {"Low", "High", "Mid"}
    code, out, err = cli(capsys, "map", built / "idx", "-o", tmp_path / "again.html", "--method", "pca")
    assert code == 0 and "reused the stored map" in out  # the map fitted above, kept in the index folder


def test_search_mistakes_are_one_line_errors(built, tmp_path):
    idx = built / "idx"
    line = one_line_error(run("similar", FIXTURES / "edge" / "control168-corrupt.mid", "--index", idx))
    assert "corrupt MIDI" in line
    from partita.pretrained import bundle_path

    line = one_line_error(run("embed", built / "random.mid", "--index", tmp_path / "x", "--model", bundle_path("gpt-small")))
    assert "not a siavit or featnet one" in line
    for args, expected in (
        (("attribute", FIXTURES / "edge" / "empty.mid", "--index", idx), "the file contains no notes"),
        (("similar", built / "random.mid", "--index", tmp_path / "none"), "no such index folder"),
        (("map", idx, "-o", tmp_path / "m.pdf"), "ending in .html"),
        (("map", idx, "-o", tmp_path / "m.html", "--method", "umap"), "unknown map method"),
        (("embed", built / "random.mid", "--index", idx, "--index-type", "lsh"), "--index-type"),
        (("similar", built / "random.mid", "--index", idx, "-k", "0"), "-k"),
    ):
        code, out, err = cli_proc_free(*args)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def cli_proc_free(*args):
    """The in-process CLI without pytest's capture fixture (for a loop of cases)."""
    import contextlib
    import io

    from partita.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def test_shipped_index_attributes_random_notes_to_an_unknown_composer(tmp_path, capsys):
    from partita.search.index import shipped_index

    index = shipped_index()  # the index that ships next to the shipped embedder
    query = tmp_path / "random-notes.mid"
    random_note_piece(seed=0).dump_midi(str(query))
    code, out, err = cli(capsys, "attribute", query, "--json", tmp_path / "a.json")
    assert code == 0, err
    (r,) = json.loads((tmp_path / "a.json").read_text())["results"]
    assert r["verdict"] == "unknown composer" and r["novelty"] > r["threshold"]

    # A real piece: the shipped index answers with ranked pieces of the bundled corpus.
    code, out, err = cli(capsys, "similar", FIXTURES / "performance" / "Maestro_1.mid", "-k", "5", "--json", tmp_path / "s.json")
    assert code == 0, err
    (res,) = json.loads((tmp_path / "s.json").read_text())["results"]
    assert len(res["hits"]) == 5 and all(h["split"] in ("train", "valid") for h in res["hits"])
    assert json.loads((index / "index.json").read_text())["splits"].keys() <= {"train", "valid"}


def test_piano_queries_go_to_the_shipped_piano_index_and_others_to_the_bundled_one(fixtures):
    from partita.search import choose_index
    from partita.search.index import shipped_index

    piano = [fixtures / "performance" / "Maestro_1.mid", next((fixtures / "performance").glob("Chopin*.mid"))]
    band = fixtures / "multitrack" / "Funkytown.mid"
    c = choose_index(piano)
    assert c.index == shipped_index("piano") and c.embedder == "featnet-piano" and not c.given
    assert c.reason.startswith("piano music (100% of notes") and c.reason.endswith("-> piano-index/featnet-piano")
    assert c.to_dict()["piano_share"] == 1.0
    # A folder is judged by the files in it, not by its name; a mixed set by the mean of its pieces.
    assert choose_index([fixtures / "performance"]).index == shipped_index("piano")
    mixed = choose_index([*piano, band])
    assert mixed.index == shipped_index("bundled") and mixed.reason.startswith("not piano music")
    assert 0.5 < mixed.piano_share < 0.8
    assert choose_index([fixtures / "multitrack"]).index == shipped_index("bundled")
    assert choose_index([]).index == shipped_index("bundled") == choose_index([fixtures / "edge" / "empty.mid"]).index
    # Named: the index as given; a shipped embedder's name: the shipped index it made.
    assert choose_index(piano, "bundled").index == shipped_index("bundled")
    assert choose_index([], "piano").given and choose_index([], "piano-index").index == shipped_index("piano")
    assert choose_index([band], model=Path("featnet-piano")).index == shipped_index("piano")
    # A new index gets the embedder of its music.
    assert choose_index(piano, "x", new_index=True).embedder == "featnet-piano"
    assert choose_index([band], "x", new_index=True).embedder == "siavit-small"
    with pytest.raises(PartitaError, match="no shipped index 'nope'"):
        shipped_index("nope")


def test_scores_of_voices_on_program_0_are_not_piano_music(tmp_path):
    """A chorale or folk tune exported from notation leaves every voice on program 0: one line a
    track is not keyboard music; the same notes merged onto one track are."""
    from symusic import Note, Score, Track

    from partita.search.choice import piano_share

    score = Score(480)
    for v, base in enumerate((72, 67, 60, 48)):
        t = Track(f"voice {v}", 0, False)
        t.notes.extend(Note(i * 480, 480, base + (i % 3), 80) for i in range(32))
        score.tracks.append(t)
    score.dump_midi(str(tmp_path / "chorale.mid"))
    merged = Score(480)
    t = Track("piano", 0, False)
    t.notes.extend(n for tr in score.tracks for n in tr.notes)
    merged.tracks.append(t)
    merged.dump_midi(str(tmp_path / "keyboard.mid"))
    assert piano_share([tmp_path / "chorale.mid"]) == (0.0, 1)
    assert piano_share([tmp_path / "keyboard.mid"]) == (1.0, 1)


def test_a_solo_piano_piece_with_a_staff_a_hand_goes_to_the_piano_index(fixtures, tmp_path):
    """Fur Elise exported from notation: right and left hand on two program-0 tracks, each
    mostly one line; the two staves together are a keyboard part. Two voices of a four-voice
    chorale alone stay apart from this only by sounding as one line together."""
    from partita.search import choose_index
    from partita.search.choice import piano_share
    from partita.search.index import shipped_index

    elise = fixtures / "edge" / "fur-elise.mid"
    assert choose_index([elise]).index == shipped_index("piano")
    assert piano_share([elise]) == (1.0, 1)
    from symusic import Note, Score, Track

    score = Score(480)
    for v, base in enumerate((72, 48)):  # two tracks taking turns: one line between them
        t = Track(f"voice {v}", 0, False)
        t.notes.extend(Note((2 * i + v) * 480, 480, base + (i % 3), 80) for i in range(16))
        score.tracks.append(t)
    score.dump_midi(str(tmp_path / "turns.mid"))
    assert piano_share([tmp_path / "turns.mid"]) == (0.0, 1)


def test_shipped_embedder_names_work_in_every_command(fixtures, tmp_path, capsys):
    """-m featnet-piano (typer hands a Path) in embed, similar, attribute and map; the choice is in
    the table title and the JSON."""
    query = fixtures / "performance" / "Maestro_1.mid"
    band = fixtures / "multitrack" / "Funkytown.mid"
    code, out, err = cli(capsys, "embed", fixtures / "performance", "-m", "featnet-piano", "--index", tmp_path / "idx",
                         "--json", tmp_path / "e.json")
    assert code == 0, err
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["meta"]["model"]["name"] == "featnet-piano" and e["meta"]["model"]["shipped"]
    assert e["choice"]["embedder"] == "featnet-piano" and e["choice"]["given"] and "given: --model featnet-piano" in out
    for command in ("similar", "attribute"):
        code, out, err = cli(capsys, command, query, band, "-m", "featnet-piano", "--json", tmp_path / f"{command}.json")
        assert code == 0, err
        r = json.loads((tmp_path / f"{command}.json").read_text())
        assert Path(r["index"]).name == "piano-index" and r["choice"]["embedder"] == "featnet-piano"
        assert "-> piano-index/featnet-piano" in out
    code, out, err = cli(capsys, "map", "-H", query, "-m", "featnet-piano", "--method", "pca", "-o", tmp_path / "m.html",
                         "--json", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["choice"]["index_name"] == "piano-index"
    # Without a model: a new index of a band's songs gets the bundled corpus's embedder.
    code, out, err = cli(capsys, "embed", band, "--index", tmp_path / "band", "--json", tmp_path / "b.json")
    assert code == 0, err
    assert json.loads((tmp_path / "b.json").read_text())["meta"]["model"]["name"] == "siavit-small"
    assert "not piano music" in out


def test_classify_of_piano_music_answers_with_the_piano_index(fixtures, tmp_path, capsys):
    query = fixtures / "performance" / "Maestro_1.mid"
    code, out, err = cli(capsys, "classify", query, "--json", tmp_path / "c.json")
    assert code == 0, err
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["choice"]["index_name"] == "piano-index" and "piano-index/featnet-piano" in out
    assert r["results"][0]["top"][0]["label"] in {"Bach", "Beethoven", "Chopin", "Haydn", "Liszt", "Mozart", "Schubert",
                                                  "Schumann", "Balakirev", "Scriabin", "Rachmaninoff", "Ravel", "Debussy",
                                                  "Prokofiev", "Glinka", "Brahms"}


def test_attributing_piano_music_right_after_install_names_a_piano_composer_or_unknown(fixtures, tmp_path, capsys):
    import json as _json

    from partita.cli import main
    from partita.search.attribute import load_attribution
    from partita.search.index import shipped_index

    pianists = set(load_attribution(shipped_index("piano")).labels)
    assert {"Bach", "Chopin", "Beethoven"} <= pianists and not pianists & {"Monteverdi", "Palestrina", "Trecento"}
    queries = sorted((fixtures / "performance").glob("*.mid"))
    main(["attribute", *map(str, queries), "--json", str(tmp_path / "who.json")])
    out = _json.loads((tmp_path / "who.json").read_text())
    assert Path(out["index"]).name == "piano-index" and len(out["results"]) == len(queries)
    assert out["method"] == "readout" and out["fitted"]["held_out"].startswith("cross-fitted, grouped by work")
    for r in out["results"]:
        assert (not r["known"]) or r["verdict"] in pianists
        assert all(t["label"] in pianists for t in r["top"])
        # Why: the features between the top two composers, and each one's nearest pieces.
        assert r["why"]["between"] == [t["label"] for t in r["top"][:2]] and len(r["why"]["features"]) == 5
        assert set(r["nearest"]) == set(r["why"]["between"]) and all(r["nearest"].values())
    main(["similar", str(queries[0]), "-k", "3", "--json", str(tmp_path / "hits.json")])
    hits = _json.loads((tmp_path / "hits.json").read_text())["results"][0]["hits"]
    assert len(hits) == 3 and all(h["label"] in pianists for h in hits)


def test_a_map_and_the_attribute_command_name_the_same_composer(fixtures, tmp_path, capsys):
    """partita map --highlight says the verdict of the index's composer readout, the one
    partita attribute gives (a copy of the piano index: a fitted map is stored in its folder)."""
    import shutil

    from partita.search.index import Index, shipped_index
    from partita.search.maps import draw_map
    from partita.search.reader import attribute_files, load_reader

    folder = tmp_path / "piano-index"
    shutil.copytree(shipped_index("piano"), folder)
    elise = fixtures / "edge" / "fur-elise.mid"
    info = draw_map(folder, tmp_path / "m.html", highlight=[elise], method="pca")
    index = Index.load(folder)
    direct = attribute_files(index, load_reader(folder), [elise], k=1, nearest=0)[0][0]
    assert direct["nearest"] == {direct["top"][0]["label"]: []}
    assert info["highlights"][0]["note"].startswith(f"attributed: {direct['verdict']}")
    code, out, err = cli(capsys, "attribute", elise, "--json", tmp_path / "a.json")
    assert code == 0 and "piano-index/featnet-piano" in out, err
    assert json.loads((tmp_path / "a.json").read_text())["results"][0]["verdict"] == direct["verdict"]


def test_every_command_takes_a_shipped_index_name_a_folder_and_a_mixed_set(fixtures, tmp_path, capsys):
    """similar, attribute, map and classify (and serve's --index): a folder of piano performances
    goes to the piano index, a shipped name (a typer Path) is used as given, a mixed set of piano
    pieces and band songs (under 80% of notes on piano) to the bundled index."""
    from partita.search.index import shipped_index
    from partita.serve.core import Explorer

    folder = fixtures / "performance"
    band = fixtures / "multitrack" / "Funkytown.mid"
    piano = sorted(folder.glob("*.mid"))[:2]
    mixed = [*piano, band, fixtures / "multitrack" / "Aicha.mid"]

    def choice_of(*args):
        code, out, err = cli(capsys, *args, "--json", tmp_path / "r.json")
        assert code == 0, err
        c = json.loads((tmp_path / "r.json").read_text())["choice"]
        assert c["reason"] in " ".join(out.split())  # said in the table title
        return c

    for command in ("similar", "attribute", "classify"):
        c = choice_of(command, folder)
        assert c["index_name"] == "piano-index" and c["embedder"] == "featnet-piano" and not c["given"]
        if command != "classify":  # classify takes a classifier, not an index
            c = choice_of(command, band, "--index", "piano")
            assert c["index_name"] == "piano-index" and c["given"]
    for command in ("similar", "attribute"):
        c = choice_of(command, *mixed)
        assert c["index_name"] == "bundled-index" and c["embedder"] == "siavit-small" and 0.3 < c["piano_share"] < 0.8
    code, out, err = cli(capsys, "classify", *mixed, "--json", tmp_path / "c.json")
    assert code == 0 and "not piano music" in out and "piano-index" not in out, err
    c = choice_of("map", "-H", folder, "--method", "pca", "-o", tmp_path / "m.html")
    assert c["index_name"] == "piano-index" and not c["given"]
    c = choice_of("map", "bundled", "-H", band, "--method", "pca", "-o", tmp_path / "m.html")
    assert c["index_name"] == "bundled-index" and c["given"]
    for name in (Path("piano"), "piano", shipped_index("piano")):  # serve's --index: a name or a folder
        explorer = Explorer(index=name, pieces=[])
        try:
            assert {k: v.resolve() for k, v in explorer.index_paths.items()} == {"piano-index": shipped_index("piano").resolve()}
        finally:
            explorer.close()
