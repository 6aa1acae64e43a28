"""Readers for the folder layouts users bring: plain folders, GiantMIDI-Piano, MAESTRO and Lakh.

Each reader only lists files and reads names or tables: no MIDI is parsed here, so listing a
corpus of 100k files takes seconds. ``detect`` guesses the layout of a folder.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from partita.data.piece import Piece
from partita.errors import PartitaError

MIDI_SUFFIXES = {".mid", ".midi", ".kar", ".rmi", ".smf"}
LABELS_CSV = "labels.csv"

# A YouTube video id: 11 characters from [A-Za-z0-9_-].
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MSD_ID = re.compile(r"^TR[A-Z0-9]{16}$")


def midi_files(root: Path) -> list[Path]:
    """Every MIDI file under ``root`` (any depth, hidden folders skipped), sorted."""
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in MIDI_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _require_dir(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise PartitaError(f"{root}: no such folder")
    if not root.is_dir():
        raise PartitaError(f"{root}: not a folder (give the folder that holds the MIDI files)")
    return root


# --- plain folders -------------------------------------------------------------------------


def read_labels_csv(csv_path: Path, root: Path) -> list[Piece]:
    """Pieces listed in a ``path,label[,title]`` CSV; paths are relative to ``root``.

    A header row is recognised (first cell ``path``) and skipped. Listed files that do not exist
    are kept: prepare reports them as missing, so a typo in the CSV is visible, not silent.
    """
    pieces = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if n == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) < 2:
                raise PartitaError(f"{csv_path}:{n}: expected 'path,label[,title]', got {','.join(row)!r}")
            rel = row[0].strip()
            label = row[1].strip() or None
            title = row[2].strip() if len(row) > 2 and row[2].strip() else Path(rel).stem
            pieces.append(Piece(id=rel, path=str(root / rel), label=label, title=title, source="folder"))
    return pieces


#: Where a plain folder's labels come from (``--labels-from``).
LABELS_FROM = ("auto", "folder", "parent", "none", "csv")


def one_piece_folders(root: Path, files: list[Path]) -> str | None:
    """Why the first sub-folders under ``root`` are pieces rather than labels, or ``None``.

    POP909's layout (``001/001.mid``, ``001/versions/001-v1.mid``, ...) gives each song a folder:
    taking those folders as labels would give one label per piece, which nothing can learn from
    and no split can test. They are taken as pieces when most of them hold one work named after
    the folder, or when nearly all of them (90%, of 10 or more) hold a single work.
    """
    from partita.data.splits import work_key

    works: dict[str, set] = {}
    for p in files:
        parts = p.relative_to(root).parts
        if len(parts) > 1:
            works.setdefault(parts[0], set()).add(work_key(p.stem))
    n = len(works)
    single = [f for f, w in works.items() if len(w) == 1]
    named = [f for f in single if work_key(f) in works[f]]
    if n >= 2 and (len(named) > n / 2 or (n >= 10 and len(single) >= 0.9 * n)):
        return f"{len(single)} of {n} sub-folders hold one piece each (like POP909's 001/001.mid)"
    return None


def scan_folder(
    root: Path, labels_csv: Path | None = None, labels_from: str = "auto", notes: list[str] | None = None
) -> list[Piece]:
    """A plain folder. ``labels_from``:

    - ``"folder"``: the first sub-folder under ``root`` (``root/Bach/x.mid`` -> "Bach"); files
      directly in ``root`` have no label;
    - ``"parent"``: the folder that holds the file (``root/Baroque/Bach/x.mid`` -> "Bach");
    - ``"none"``: no labels;
    - ``"csv"``: ``labels_csv``, or the ``labels.csv`` in the folder;
    - ``"auto"``: the CSV when there is one; else "none" when the sub-folders hold one piece
      each (``one_piece_folders``), else "folder".

    A one-line account of a choice made for the user is appended to ``notes``.
    """
    root = _require_dir(root)
    if labels_from not in LABELS_FROM:
        raise PartitaError(f"--labels-from must be one of {', '.join(LABELS_FROM)}, not {labels_from!r}")
    if labels_csv is not None and labels_from not in ("auto", "csv"):
        raise PartitaError(f"--labels-csv and --labels-from {labels_from} disagree; give one of them")
    if labels_csv is None and labels_from in ("auto", "csv") and (root / LABELS_CSV).is_file():
        labels_csv = root / LABELS_CSV
    if labels_from == "csv" and labels_csv is None:
        raise PartitaError(f"--labels-from csv: no --labels-csv given and no {LABELS_CSV} in {root}")
    if labels_csv is not None:
        return read_labels_csv(Path(labels_csv), root)
    files = midi_files(root)
    if labels_from == "auto":
        why = one_piece_folders(root, files)
        labels_from = "none" if why else "folder"
        if why and notes is not None:
            notes.append(f"none: {why}, so they are not taken as labels (--labels-from folder to use them anyway)")
    pieces = []
    for p in files:
        parts = p.relative_to(root).parts
        label = None
        if len(parts) > 1 and labels_from != "none":
            label = parts[0] if labels_from == "folder" else parts[-2]
        pieces.append(Piece(id=_rel(p, root), path=str(p), label=label, title=p.stem, source="folder"))
    return pieces


# --- GiantMIDI-Piano ---------------------------------------------------------------------------


def parse_giantmidi_name(stem: str) -> tuple[str, str, str] | None:
    """``"Surname, Firstname, Title, YouTubeID"`` -> (label "Firstname Surname", title, id).

    Titles contain commas, so the first field is the surname, the second the first name, the last
    the YouTube id, and everything between is the title. ``None`` when the name does not fit.
    """
    fields = stem.split(", ")
    if len(fields) < 4 or not _YOUTUBE_ID.match(fields[-1].strip()):
        return None
    surname, first = fields[0].strip(), fields[1].strip()
    title = ", ".join(fields[2:-1]).strip()
    label = f"{first} {surname}".strip()
    if not label or not title:
        return None
    return label, title, fields[-1].strip()


def _giantmidi_splits(root: Path) -> dict[str, str]:
    """YouTube id -> split from a GiantMIDI metadata CSV, when one is beside the files.

    GiantMIDI-Piano's release has no official split; users who made one (or the csv of a
    derived subset) can put ``audio_name``/``youtube_id`` and ``split`` columns in a CSV.
    """
    splits: dict[str, str] = {}
    for csv_path in sorted(root.glob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
            id_col = next((cols[c] for c in ("youtube_id", "audio_name", "id") if c in cols), None)
            if id_col is None or "split" not in cols:
                continue
            for row in reader:
                vid = (row.get(id_col) or "").strip()
                vid = vid[-11:] if len(vid) > 11 else vid
                split = _norm_split(row.get(cols["split"]))
                if vid and split:
                    splits[vid] = split
    return splits


def scan_giantmidi(root: Path) -> list[Piece]:
    """GiantMIDI-Piano: ``Surname, Firstname, Title, YouTubeID.mid`` files, any depth."""
    root = _require_dir(root)
    splits = _giantmidi_splits(root)
    pieces = []
    for p in midi_files(root):
        parsed = parse_giantmidi_name(p.stem)
        if parsed is None:
            pieces.append(Piece(id=_rel(p, root), path=str(p), title=p.stem, source="giantmidi"))
            continue
        label, title, vid = parsed
        pieces.append(
            Piece(
                id=_rel(p, root),
                path=str(p),
                label=label,
                title=title,
                source="giantmidi",
                split=splits.get(vid),
            )
        )
    return pieces


# --- MAESTRO ---------------------------------------------------------------------------------


def _norm_split(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    return {"train": "train", "validation": "valid", "valid": "valid", "val": "valid", "test": "test"}.get(value)


def find_maestro_csv(root: Path) -> Path | None:
    found = sorted(root.glob("maestro-v*.csv"))
    return found[-1] if found else None


def scan_maestro(root: Path, composite: str = "keep") -> list[Piece]:
    """MAESTRO v2/v3 from its ``maestro-v*.csv``; the official split is kept.

    ``composite``: a composer field such as "Sergei Rachmaninoff / György Cziffra" is kept as one
    label ("keep") or the piece is left out ("drop").
    """
    root = _require_dir(root)
    if composite not in ("keep", "drop"):
        raise PartitaError(f"composite must be 'keep' or 'drop', not {composite!r}")
    csv_path = find_maestro_csv(root)
    if csv_path is None:
        raise PartitaError(f"{root}: no maestro-v*.csv here; give the MAESTRO folder that holds it")
    pieces = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"canonical_composer", "canonical_title", "split", "midi_filename"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise PartitaError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            composer = row["canonical_composer"].strip()
            if "/" in composer and composite == "drop":
                continue
            rel = row["midi_filename"].strip()
            title = row["canonical_title"].strip()
            pieces.append(
                Piece(
                    id=rel,
                    path=str(root / rel),
                    label=composer or None,
                    title=title,
                    source="maestro",
                    split=_norm_split(row["split"]),
                    group=f"{composer}|{title}",
                )
            )
    return pieces


# --- Lakh MIDI -------------------------------------------------------------------------------


def scan_lakh(root: Path, layout: str | None = None) -> list[Piece]:
    """The Lakh MIDI dataset in any of its three layouts.

    - ``full``: LMD-full, ``X/md5.mid``; no labels.
    - ``matched``: LMD-matched/aligned, ``A/B/C/MSDID/md5.mid``; no labels, and every MIDI
      matched to one Million Song Dataset track shares a group, so versions never straddle splits.
    - ``clean``: ``clean_midi/Artist/Title.mid`` (``Title.1.mid`` for another version); the
      artist is the label.
    """
    root = _require_dir(root)
    layout = layout or _lakh_layout(root)
    if layout is None:
        raise PartitaError(f"{root}: not a Lakh layout (full, matched or clean_midi)")
    pieces = []
    for p in midi_files(root):
        rel = p.relative_to(root).parts
        if layout == "clean":
            artist = rel[0] if len(rel) > 1 else None
            title = re.sub(r"\.\d+$", "", p.stem)
            pieces.append(
                Piece(id=_rel(p, root), path=str(p), label=artist, title=title, source="lakh", group=f"{artist}|{title}")
            )
        elif layout == "matched":
            msd = next((part for part in reversed(rel[:-1]) if _MSD_ID.match(part)), None)
            pieces.append(Piece(id=_rel(p, root), path=str(p), title=p.stem, source="lakh", group=msd))
        else:
            pieces.append(Piece(id=_rel(p, root), path=str(p), title=p.stem, source="lakh"))
    return pieces


def _lakh_layout(root: Path) -> str | None:
    if root.name == "clean_midi":
        return "clean"
    sample = []
    for p in root.rglob("*"):
        if p.suffix.lower() in MIDI_SUFFIXES:
            sample.append(p.relative_to(root))
            if len(sample) >= 50:
                break
    if not sample:
        return None
    if all(len(s.parts) >= 2 and _MSD_ID.match(s.parts[-2]) and _MD5.match(s.stem) for s in sample):
        return "matched"
    if all(len(s.parts) == 2 and len(s.parts[0]) == 1 and _MD5.match(s.stem) for s in sample):
        return "full"
    return None


# --- detection -------------------------------------------------------------------------------

FORMATS = ("folder", "giantmidi", "maestro", "asap", "lakh", "bundled")


def detect(root: Path) -> str:
    """Guess a folder's layout: maestro (its csv), asap (its metadata.csv), lakh, giantmidi (most
    file names fit), folder."""
    from partita.data.sources.asap import is_asap

    root = _require_dir(root)
    if find_maestro_csv(root) is not None:
        return "maestro"
    if is_asap(root):
        return "asap"
    if _lakh_layout(root) is not None:
        return "lakh"
    if (root / LABELS_CSV).is_file():
        return "folder"
    names = [p.stem for p in midi_files(root)[:500]]
    if names and sum(parse_giantmidi_name(n) is not None for n in names) > len(names) / 2:
        return "giantmidi"
    return "folder"
