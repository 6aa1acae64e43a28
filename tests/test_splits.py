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
