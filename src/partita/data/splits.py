"""Deterministic, group-aware train/valid/test splits.

Splits are made per work, not per file: every version of one title (two performances in
GiantMIDI, ``Title.1.mid`` in Lakh, one MSD track matched to several MIDI files) shares a group,
and a group lies wholly in one split. Groups are ordered by a seeded hash, so the same seed gives
the same split on any machine, in any order of processing, for any sharding of the work.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict

SPLITS = ("train", "valid", "test")
UNSEEN = "unseen"


def _hash01(seed: int, key: str) -> float:
    digest = hashlib.sha1(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def normalise_title(title: str | None) -> str:
    """Lower-case ASCII letters and digits only: 'Étude Op.10, No. 3' -> 'etude op 10 no 3'."""
    if not title:
        return ""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return " ".join(re.findall(r"[a-z0-9]+", ascii_title.lower()))


def group_key(piece_id: str, label: str | None, title: str | None, group: str | None) -> str:
    """The key that keeps versions of one work together."""
    if group:
        return group
    norm = normalise_title(title)
    return f"{label or ''}|{norm}" if norm else f"id:{piece_id}"


def _split_groups(groups: list[str], seed: int, valid: float, test: float) -> dict[str, str]:
    ordered = sorted(set(groups), key=lambda g: (_hash01(seed, g), g))
    n = len(ordered)
    n_test = round(n * test)
    n_valid = round(n * valid)
    if n >= 3:  # every label gets at least one held-out work when it has enough of them
        n_test = max(n_test, 1 if test > 0 else 0)
        n_valid = max(n_valid, 1 if valid > 0 else 0)
    n_test = min(n_test, n)
    n_valid = min(n_valid, n - n_test)
    out = {}
    for i, g in enumerate(ordered):
        out[g] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return out


def assign_splits(
    rows: list[dict],
    *,
    seed: int = 0,
    valid: float = 0.1,
    test: float = 0.1,
    mode: str = "pieces",
    unseen: float = 0.2,
    use_source_split: bool = True,
) -> list[str]:
    """One split name per row (dicts with id, label, title, group and the source's split).

    ``mode="pieces"``: groups are split train/valid/test within each label (stratified), and a
    source's own split (MAESTRO's, say) is used where every row has one.
    ``mode="labels"``: a seeded ``unseen`` fraction of the labels is held out whole (split
    "unseen", for testing on composers never trained on); the other labels split as above.
    """
    if mode not in ("pieces", "labels"):
        raise ValueError(f"split mode must be 'pieces' or 'labels', not {mode!r}")
    if not 0 <= valid < 1 or not 0 <= test < 1 or valid + test >= 1:
        raise ValueError("valid and test fractions must be in [0, 1) and sum to less than 1")
    held_out: set = set()
    if mode == "labels":
        labels = sorted({r["label"] for r in rows if r["label"]}, key=lambda lab: (_hash01(seed, "label:" + lab), lab))
        n = round(len(labels) * unseen)
        if len(labels) >= 3:
            n = max(n, 1)
        held_out = set(labels[: min(n, len(labels) - 1)])
    source_splits = use_source_split and rows and all(r.get("split") in SPLITS for r in rows)
    by_label: dict = defaultdict(list)
    keys = []
    for r in rows:
        key = group_key(r["id"], r["label"], r["title"], r.get("group"))
        keys.append(key)
        by_label[r["label"]].append(key)
    assigned: dict = {}
    for label, groups in by_label.items():
        if label in held_out:
            continue
        assigned[label] = _split_groups(groups, seed, valid, test)
    out = []
    for r, key in zip(rows, keys):
        if r["label"] in held_out:
            out.append(UNSEEN)
        elif source_splits:
            out.append(r["split"])
        else:
            out.append(assigned[r["label"]][key])
    return out
