"""Splits: deterministic, stratified by label, group-aware, and able to hold out whole labels."""

from __future__ import annotations

from collections import Counter, defaultdict

from partita.data.splits import assign_splits, normalise_title


def _rows(n_labels=5, works=20, versions=2):
    rows = []
    for lab in range(n_labels):
        for w in range(works):
            for v in range(versions):
                rows.append({"id": f"L{lab}/w{w}_{v}.mid", "label": f"L{lab}", "title": f"Work {w}", "group": None, "split": None})
    return rows


def test_deterministic_and_seed_dependent():
    rows = _rows()
    a = assign_splits(rows, seed=1)
    assert a == assign_splits(rows, seed=1)
    assert a == assign_splits(list(reversed(rows)), seed=1)[::-1]  # order of rows does not matter
    assert a != assign_splits(rows, seed=2)


def test_versions_of_a_work_stay_together_and_each_label_is_tested():
    rows = _rows()
    splits = assign_splits(rows, seed=0, valid=0.1, test=0.2)
    by_work = defaultdict(set)
    for r, s in zip(rows, splits):
        by_work[(r["label"], r["title"])].add(s)
    assert all(len(s) == 1 for s in by_work.values())
    for lab in {r["label"] for r in rows}:
        counts = Counter(s for r, s in zip(rows, splits) if r["label"] == lab)
        assert counts["test"] == 8 and counts["valid"] == 4 and counts["train"] == 28


def test_title_normalisation_groups_spelling_variants():
    assert normalise_title("Étude Op.10, No. 3") == normalise_title("etude op 10 no 3")
    rows = [
        {"id": "a.mid", "label": "Chopin", "title": "Étude Op.10, No. 3", "group": None, "split": None},
        {"id": "b.mid", "label": "Chopin", "title": "Etude op 10 no 3", "group": None, "split": None},
    ] + [{"id": f"{i}.mid", "label": "Chopin", "title": f"t{i}", "group": None, "split": None} for i in range(10)]
    s = assign_splits(rows, seed=3)
    assert s[0] == s[1]


def test_source_split_is_kept():
    rows = _rows(2, 5, 1)
    for r, s in zip(rows, ["train", "valid", "test"] * 4):
        r["split"] = s
    assert assign_splits(rows) == [r["split"] for r in rows]


def test_unseen_labels_mode_holds_out_whole_labels():
    rows = _rows(n_labels=10)
    splits = assign_splits(rows, seed=0, mode="labels", unseen=0.2)
    unseen = {r["label"] for r, s in zip(rows, splits) if s == "unseen"}
    assert len(unseen) == 2
    for r, s in zip(rows, splits):
        assert (s == "unseen") == (r["label"] in unseen)
    seen_splits = {s for s in splits if s != "unseen"}
    assert seen_splits == {"train", "valid", "test"}


def test_work_key_groups_movements_and_numbers_but_keeps_catalogue_numbers():
    from partita.data.splits import work_key

    same = [
        ["waldstein_1", "Waldstein_2", "waldstein_3"],
        ["mz_331_1", "mz_331_2", "MZ_331_3"],
        ["Étude Op. 10-3", "Etude Op.10 No.4", "Étude, Op. 10, No. 12", "Etude op 10"],
        ["BWV 846 Prelude", "BWV 846 Fugue", "bwv_846"],
        ["Ballade No. 1", "Ballade No. 2"],
        ["Sonata Op. 2 No. 1 - III. Prestissimo", "Sonata Op.2 No.3: I. Allegro con brio"],
        ["001", "001-v1", "001_v2"],
    ]
    for titles in same:
        assert len({work_key(t) for t in titles}) == 1, titles
    different = [
        ("Etude Op. 10 No. 3", "Etude Op. 25 No. 3"),
        ("mz_331_1", "mz_545_1"),
        ("BWV 846 Prelude", "BWV 847 Prelude"),
        ("Work 3", "Work 4"),  # a title that is a number, with a space, is a work of its own
        ("Track 01", "Track 02"),
        ("001", "002"),
        ("POP909_008", "POP909_010"),  # a zero-padded number is an index, not a movement
        ("Partita 2 IV Sarabande", "Partita 3 IV Sarabande"),
    ]
    for a, b in different:
        assert work_key(a) != work_key(b), (a, b)
    assert work_key("Rondo") == "rondo" and work_key("No. 5") == "no 5"  # never reduced to nothing


def test_movements_of_a_work_never_straddle_splits():
    rows = [
        {"id": f"B/{w}_{m}.mid", "label": "B", "title": f"{w}_{m}", "group": None, "split": None}
        for w in ("waldstein", "appassionata", "pathetique", "tempest", "hammerklavier", "moonlight", "spring", "kreutzer")
        for m in (1, 2, 3)
    ]
    for seed in range(10):
        splits = assign_splits(rows, seed=seed, valid=0.2, test=0.2)
        by_work = defaultdict(set)
        for r, s in zip(rows, splits):
            by_work[r["title"].rsplit("_", 1)[0]].add(s)
        assert all(len(s) == 1 for s in by_work.values())
        assert "test" in splits


def test_identical_contents_share_a_split_whatever_their_label():
    rows = []
    for lab in ("A", "B", "C"):
        rows += [{"id": f"{lab}/{w}.mid", "label": lab, "title": f"{lab} piece {w}", "group": None, "split": None, "content": f"{lab}{w}"} for w in range(10)]
    # The same file under two labels (and a third name): one content, three titles.
    dup = [3, 14, 25]
    for k in dup:
        rows[k]["content"] = "same"
    differed = False
    for seed in range(20):
        splits = assign_splits(rows, seed=seed, valid=0.1, test=0.2)
        assert len({splits[k] for k in dup}) == 1
        plain = assign_splits([{**r, "content": None} for r in rows], seed=seed, valid=0.1, test=0.2)
        differed |= len({plain[k] for k in dup}) > 1
        assert a_split_per_label(rows, splits)
    assert differed, "without the content hash the copies would be split apart for some seed"
    # Holding out a label holds out the copies of its pieces filed under other labels too.
    for seed in range(20):
        splits = assign_splits(rows, seed=seed, mode="labels", unseen=0.34)
        if any(s == "unseen" for k, s in enumerate(splits) if k in dup):
            assert all(splits[k] == "unseen" for k in dup)


def a_split_per_label(rows, splits):
    return all({"train", "test"} <= {s for r, s in zip(rows, splits) if r["label"] == lab} for lab in ("A", "B", "C"))


def test_numbers_that_name_most_of_a_label_are_not_movements():
    # 'Maestro_1', 'Maestro_3', ... would all be 'maestro': one group, nothing left to test on.
    rows = [{"id": f"P/Maestro_{k}.mid", "label": "P", "title": f"Maestro_{k}", "group": None, "split": None} for k in range(1, 11)]
    works = ["waldstein", "tempest", "spring", "kreutzer", "ghost", "archduke"]
    rows += [{"id": f"Q/{w}_{m}.mid", "label": "Q", "title": f"{w}_{m}", "group": None, "split": None} for w in works for m in (1, 2)]
    splits = assign_splits(rows, seed=0, valid=0.2, test=0.2)
    assert Counter(s for r, s in zip(rows, splits) if r["label"] == "P") == {"train": 6, "valid": 2, "test": 2}
    q = defaultdict(set)
    for r, s in zip(rows, splits):
        if r["label"] == "Q":
            q[r["title"].split("_")[0]].add(s)
    assert all(len(s) == 1 for s in q.values()) and len(q) == 6  # waldstein_1 and _2 still one work
