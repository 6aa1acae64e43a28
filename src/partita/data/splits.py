"""Deterministic, group-aware train/valid/test splits.

Splits are made per work, not per file: every version of one title (two performances in
GiantMIDI, ``Title.1.mid`` in Lakh, one MSD track matched to several MIDI files) shares a group,
and a group lies wholly in one split. A title is reduced to its work by ``work_key``: the
movements and numbers of one work (``waldstein_1``/``_2``, ``Op.10 No.3``/``Op. 10-4``,
``BWV 846 Prelude``/``Fugue``) share a key, while opus and catalogue numbers are kept (``Op. 10``
and ``Op. 25`` differ). Pieces with the same notes (``content``: byte-identical files, or one file
under two names or labels) are joined into one group whatever their label, so a duplicate never
sits on both sides of a split. Groups are ordered by a seeded hash, so the same seed gives the
same split on any machine, in any order of processing, for any sharding of the work.
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


# Catalogue markers: the number after one names a work, so it is never stripped.
_CATALOGUE = {
    "op", "opus", "bwv", "k", "kv", "hob", "d", "s", "hwv", "l", "wq", "rv", "woo", "sz", "bb", "z", "twv", "buxwv", "fs",
}
# Words before a trailing number that marks a part of a work: "No. 3", "Mvt 2", "Part 1".
_PART_MARKERS = {"no", "nr", "nos", "number", "num", "mvt", "mov", "movement", "part", "pt", "v", "ver", "version", "take"}
_VERSION = re.compile(r"^(v|ver|take)\d+$")  # "001-v1", "song_v2": one version of a work
# Movement names and tempo words, stripped only where they follow a number ("BWV 846 Prelude",
# "K. 545 Allegro", "Partita 2 IV Sarabande"), never from a title they make up ("Rondo").
_MOVEMENT_WORDS = set(
    "prelude praeludium preludio fugue fuga toccata allemande courante sarabande gigue menuet minuet menuetto "
    "gavotte bourree trio allegro allegretto adagio adagietto andante andantino largo larghetto lento presto "
    "prestissimo vivace vivacissimo moderato grave scherzo rondo finale maestoso cantabile assai molto ma non "
    "troppo con brio moto e un poco piu".split()
)
_ROMAN = set("i ii iii iv v vi vii viii ix x xi xii".split())
# A trailing number joined by "_", "-" or "." (file-name style: "waldstein_1", "mz_331_2",
# "Op. 10-3", "Title.1") is a movement or version number; "Work 3" with a space is left alone.
_JOINED_NUMBER = re.compile(r"[_.\-]\d{1,3}\s*$")


def work_key(title: str | None) -> str:
    """The work a title belongs to: ``normalise_title`` without trailing movement and number parts.

    'Waldstein_3' -> 'waldstein', 'Étude Op. 10-3' and 'Etude Op.10 No.4' -> 'etude op 10',
    'BWV 846 Fugue' -> 'bwv 846', 'mz_331_1' -> 'mz 331', 'Ballade No. 2' -> 'ballade';
    'Étude Op. 25 No. 1' -> 'etude op 25' (opus and catalogue numbers are kept), 'Work 3' and
    '001' unchanged, '001-v1' -> '001'. A title is never reduced to nothing.
    """
    t = normalise_title(title).split()
    joined = bool(title) and _JOINED_NUMBER.search(title) is not None
    number_stripped = False
    while len(t) > 1:
        j = len(t)
        while j > 1 and t[j - 1] in _MOVEMENT_WORDS:
            j -= 1
        if j < len(t) and (t[j - 1].isdigit() or t[j - 1] in _ROMAN):
            t = t[:j]
        elif len(t) > 2 and t[-2] in _PART_MARKERS and (t[-1].isdigit() or t[-1] in _ROMAN):
            t = t[:-2]
        elif (t[-1] in _ROMAN and t[-2].isdigit()) or _VERSION.match(t[-1]):
            t = t[:-1]
        elif (
            not number_stripped
            and t[-1].isdigit()
            and not (joined and t[-1].startswith("0"))  # "POP909_008", "song_01": an index
            and t[-2] not in _CATALOGUE
            and (joined or (len(t) > 2 and t[-2].isdigit() and t[-3] in _CATALOGUE))
        ):
            t, number_stripped = t[:-1], True
        else:
            break
    return " ".join(t)


def group_key(piece_id: str, label: str | None, title: str | None, group: str | None, *, whole: bool = False) -> str:
    """The key that keeps versions of one work together (before joining identical contents);
    ``whole``: from the whole title, movement and number parts included."""
    if group:
        return group
    work = normalise_title(title) if whole else work_key(title)
    return f"{label or ''}|{work}" if work else f"id:{piece_id}"


def _group_keys(rows: list[dict]) -> list[str]:
    """``group_key`` of every row, except where a work key would swallow most of a label.

    Stripping numbers must not merge distinct works wholesale: when one work key gathers 3 or
    more titles and over half of its label's titles ('Maestro_1', 'Maestro_3', 'Maestro_4' ->
    'maestro'; a folder of 'Track_1' ... 'Track_9'), the numbers are names, not movements, and
    those titles keep their whole-title keys.
    """
    work = [group_key(r["id"], r["label"], r["title"], r.get("group")) for r in rows]
    whole = [group_key(r["id"], r["label"], r["title"], r.get("group"), whole=True) for r in rows]
    titles_of: dict = defaultdict(set)
    titles_in_label: dict = defaultdict(set)
    for r, w, t in zip(rows, work, whole):
        titles_of[w].add(t)
        titles_in_label[r["label"]].add(t)
    too_big = {
        w for r, w in zip(rows, work) if len(titles_of[w]) >= 3 and len(titles_of[w]) > len(titles_in_label[r["label"]]) / 2
    }
    return [t if w in too_big else w for w, t in zip(work, whole)]


def _components(rows: list[dict]) -> list[str]:
    """Each row's group after joining groups that share a content hash (union-find); a group is
    named by its smallest key, so the names do not depend on the order of the rows."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys = _group_keys(rows)
    for r, key in zip(rows, keys):
        a = find(key)
        if r.get("content"):
            b = find("content:" + r["content"])
            if a != b:
                parent[max(a, b)] = min(a, b)
    # "content:..." names only join groups; name each group by its smallest real key.
    names: dict[str, str] = {}
    for key in keys:
        root = find(key)
        names[root] = min(names.get(root, key), key)
    return [names[find(k)] for k in keys]


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
    "unseen", for testing on composers never trained on), with any copy of their pieces filed
    under another label; the other labels split as above.
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
    groups = _components(rows)
    # A group split across labels (one file under two labels) is split with the label holding
    # most of its pieces (ties: the first label by name), and all its pieces follow.
    label_counts: dict = defaultdict(lambda: defaultdict(int))
    for r, g in zip(rows, groups):
        label_counts[g][r["label"] or ""] += 1
    home = {g: min(c, key=lambda lab: (-c[lab], lab)) for g, c in label_counts.items()}
    held = {g for g, c in label_counts.items() if any(lab in held_out for lab in c)}
    by_label: dict = defaultdict(list)
    for g in home:
        if g not in held:
            by_label[home[g]].append(g)
    assigned: dict = {}
    for groups_of_label in by_label.values():
        assigned.update(_split_groups(groups_of_label, seed, valid, test))
    out = []
    for r, g in zip(rows, groups):
        if g in held:  # a held-out label's work, and any copy of it under another label
            out.append(UNSEEN)
        elif source_splits:
            out.append(r["split"])
        else:
            out.append(assigned[g])
    return out
