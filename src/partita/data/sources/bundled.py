"""The bundled corpus: music21's own corpus exported to labelled MIDI files, once, then cached.

music21 ships a real, freely licensed corpus (Bach chorales, Palestrina masses, Monteverdi
madrigals, trecento pieces, string quartet movements by Beethoven, Mozart and Haydn, and three
folk collections in ABC). partita's shipped models are trained on it and the tests use it, so
it has to exist on every machine without a download. `export_bundled` turns it into a plain
folder of MIDI files with a ``labels.csv`` next to them:

    out_dir/
      bach/bwv250.mid  ...  essen/han1-0001.mid  ...
      labels.csv        path,label,title (paths relative to out_dir)
      manifest.json     written last: its presence means the export is complete

Labels are composers, except for the folk tunes, which are labelled by collection ("Essen",
"Ryan's Mammoth", "O'Neill's"). An ABC book holds many tunes; each tune is its own piece.

Selection is deterministic: the works of a label are listed in a sorted order and, when there
are more than ``max_per_label``, a fixed-seed sample of them is taken (so the pick is spread
over the whole collection, not its first files). A capped export also leaves out the few
works whose source is over ``HEAVY_SOURCE_BYTES`` of MusicXML (whole Beethoven quartets and the
longest quartet movements): music21 needs from 20 s to over two minutes to write each of them
as MIDI. ``full=True`` exports everything.

Conversion is music21's own: ``converter.parse`` then ``score.write('midi')`` (repeats
expanded, dynamics as velocities, tempo marks). Work runs in a process pool; a work music21
cannot parse or write is skipped and its reason kept, and so is one whose worker process dies.
Every written file is checked with `partita.io.load`. Files are written atomically and a
journal records each finished piece, so an interrupted export resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import random
import re
import sys
import threading
import time
import warnings
import zipfile
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from partita.data.piece import Piece
from partita.errors import one_line
from partita.io.files import atomic_path, atomic_write

#: Works per label in the default export; sized so that a cold export takes under two minutes
#: on two CPU cores. ``full=True`` lifts the cap.
DEFAULT_MAX_PER_LABEL = 50

#: In a capped export, works whose MusicXML is larger than this (uncompressed) are left out:
#: music21's MIDI writer is superlinear in the length of a part, so these few works would cost
#: more than all the others together. ``full=True`` includes them.
HEAVY_SOURCE_BYTES = 2_000_000

#: The seed of the per-label sample; changing it changes the default corpus.
SEED = 0

#: Bumped when the layout or the conversion changes, so that old caches are not reused.
FORMAT_VERSION = 1

SOURCE = "bundled"
MANIFEST = "manifest.json"
LABELS_CSV = "labels.csv"
JOURNAL = ".journal.jsonl"
LOCK = ".lock"

#: Every label, in the order they are reported.
LABELS: tuple[str, ...] = (
    "Bach",
    "Palestrina",
    "Monteverdi",
    "Trecento",
    "Beethoven",
    "Mozart",
    "Haydn",
    "Essen",
    "Ryan's Mammoth",
    "O'Neill's",
)

# The folder of each label inside the export.
_SLUGS = {
    "Bach": "bach",
    "Palestrina": "palestrina",
    "Monteverdi": "monteverdi",
    "Trecento": "trecento",
    "Beethoven": "beethoven",
    "Mozart": "mozart",
    "Haydn": "haydn",
    "Essen": "essen",
    "Ryan's Mammoth": "ryans-mammoth",
    "O'Neill's": "oneills",
}

# When one work exists in several formats, the first of these wins.
_FORMAT_PREFERENCE = (".mxl", ".xml", ".musicxml", ".krn")

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class BundledExport:
    """What `export_bundled` produced.

    ``pieces``: one `Piece` per exported MIDI file (``id`` is its path relative to ``out_dir``).
    ``available``: works music21 holds per label; ``selected``: those chosen for this export;
    ``exported``/``skipped``: what became of them. ``skip_reasons`` maps a work (its corpus
    reference) to a one-line reason. ``reused`` is True when a complete export was found.
    """

    out_dir: Path
    pieces: list[Piece]
    available: dict[str, int]
    selected: dict[str, int]
    exported: dict[str, int]
    skipped: dict[str, int]
    skip_reasons: dict[str, str]
    music21_version: str
    max_per_label: int | None
    reused: bool = False
    seconds: float = 0.0
    left_out_heavy: dict[str, int] = field(default_factory=dict)

    @property
    def labels_csv(self) -> Path:
        return self.out_dir / LABELS_CSV

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST

    def summary_rows(self) -> list[tuple[str, int, int, int, int]]:
        """(label, available, selected, exported, skipped) per label, for a table."""
        return [
            (
                label,
                self.available.get(label, 0),
                self.selected.get(label, 0),
                self.exported.get(label, 0),
                self.skipped.get(label, 0),
            )
            for label in self.available
        ]


# --------------------------------------------------------------------------------------------
# Listing the works music21 holds


@dataclass(frozen=True)
class _Work:
    """One piece to export: a corpus file, or one tune of an ABC book (``text`` set)."""

    label: str
    ref: str  # corpus-relative reference, unique: "bach/bwv250.mxl", "essenFolksong/han1.abc#X3"
    out: str  # output path relative to out_dir, '/'-separated
    path: str  # absolute source path
    fallback_title: str
    text: str | None = None  # the tune's ABC text, for ABC books
    cost: int = 0  # rough conversion cost (bytes of source), for scheduling and the heavy cap


def corpus_root() -> Path:
    """The folder of music21's shipped corpus."""
    import music21.corpus

    return Path(music21.corpus.__file__).resolve().parent


def music21_version() -> str:
    """The installed music21's version, read without importing it (a cached export needs no music21)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("music21")
    except PackageNotFoundError:  # pragma: no cover - a music21 not installed as a distribution
        import music21

        return str(music21.__version__)


def _source_cost(path: Path) -> int:
    """Bytes of score text behind a file: the uncompressed size for .mxl archives."""
    if path.suffix == ".mxl":
        try:
            with zipfile.ZipFile(path) as z:
                return sum(i.file_size for i in z.infolist() if not i.filename.startswith("META-INF"))
        except (OSError, zipfile.BadZipFile):
            pass
    size = path.stat().st_size
    # Humdrum is about ten times denser than MusicXML for the same music.
    return size * 10 if path.suffix == ".krn" else size


def _file_works(
    label: str,
    folder: str,
    suffixes: Iterable[str],
    *,
    exclude: Callable[[str], bool] = lambda rel: False,
    title: Callable[[str], str] | None = None,
) -> list[_Work]:
    """The files of one corpus folder, one work per stem (preferring MusicXML over Humdrum)."""
    root = corpus_root()
    base = root / folder
    if not base.is_dir():
        return []
    suffixes = tuple(suffixes)
    by_stem: dict[str, Path] = {}
    for p in sorted(base.rglob("*")):
        if not p.is_file() or p.suffix not in suffixes:
            continue
        rel = p.relative_to(root).as_posix()
        if exclude(rel):
            continue
        stem = p.relative_to(base).with_suffix("").as_posix()
        old = by_stem.get(stem)
        if old is None or _FORMAT_PREFERENCE.index(p.suffix) < _FORMAT_PREFERENCE.index(old.suffix):
            by_stem[stem] = p
    works = []
    slug = _SLUGS[label]
    for stem in sorted(by_stem):
        p = by_stem[stem]
        works.append(
            _Work(
                label=label,
                ref=p.relative_to(root).as_posix(),
                out=f"{slug}/{_safe(stem.replace('/', '-'))}.mid",
                path=str(p),
                fallback_title=title(stem) if title else stem.replace("/", " ").replace("_", " "),
                cost=_source_cost(p),
            )
        )
    return works


def _safe(name: str) -> str:
    """A file name that is plain on every file system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "piece"


_X_LINE = re.compile(r"^X:[ \t]*(\S*)", re.M)
_T_LINE = re.compile(r"^T:[ \t]*(.*?)\s*$", re.M)


def split_abc(text: str) -> list[tuple[str, str]]:
    """Split an ABC book into ``(reference number, tune text)`` pairs, in file order.

    The text before the first ``X:`` line is the file header; ABC applies it to every tune, so
    it is put in front of each tune's text.
    """
    starts = [m.start() for m in _X_LINE.finditer(text)]
    if not starts:
        return []
    header = text[: starts[0]]
    header = "".join(line for line in header.splitlines(True) if re.match(r"^[A-Za-z]:", line))
    tunes = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        body = text[start:end].strip("\n") + "\n"
        number = _X_LINE.match(body).group(1)  # type: ignore[union-attr]
        # The header goes after the X: line: a tune must start with its reference number.
        if header:
            first, _, rest = body.partition("\n")
            body = f"{first}\n{header}{rest}"
        tunes.append((number, body))
    return tunes


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _abc_works(
    label: str,
    folder: str,
    *,
    exclude: Callable[[str], bool] = lambda name: False,
    unique_numbers: bool = False,
) -> list[_Work]:
    """Every tune of the ABC books of one folder.

    ``unique_numbers``: the X: numbers are the collection's own tune numbers (O'Neill's), and
    books that overlap hold the same tune twice: only its first occurrence is kept.
    """
    root = corpus_root()
    base = root / folder
    if not base.is_dir():
        return []
    slug = _SLUGS[label]
    works: list[_Work] = []
    seen: set[str] = set()
    for p in sorted(base.glob("*.abc")):
        if exclude(p.name):
            continue
        tunes = split_abc(_read_text(p))
        single = len(tunes) == 1
        for index, (number, tune) in enumerate(tunes, 1):
            key = number if number.isdigit() else str(index)
            if unique_numbers and number.isdigit():
                if int(number) in seen:
                    continue
                seen.add(int(number))
                out_name = f"{int(number):04d}"
            elif single:
                out_name = p.stem
            else:
                out_name = f"{p.stem}-{int(key):04d}"
            m = _T_LINE.search(tune)
            works.append(
                _Work(
                    label=label,
                    ref=f"{p.relative_to(root).as_posix()}#X{number or index}",
                    out=f"{slug}/{_safe(out_name)}.mid",
                    path=str(p),
                    fallback_title=(m.group(1) if m and m.group(1) else f"{p.stem} {key}"),
                    text=tune,
                    cost=len(tune),
                )
            )
    # Books may reuse a number (a tune and its variant): keep every tune, under distinct names.
    counts = Counter(w.out for w in works)
    if any(c > 1 for c in counts.values()):
        renamed, used = [], Counter()
        for w in works:
            if counts[w.out] > 1:
                used[w.out] += 1
                w = _replace(w, out=w.out[: -len(".mid")] + f"-{used[w.out]}.mid")
            renamed.append(w)
        works = renamed
    return works


def _replace(w: _Work, **changes) -> _Work:
    from dataclasses import replace

    return replace(w, **changes)


def _bach() -> list[_Work]:
    # The bach/ folder holds the chorales (371 Riemenschneider settings plus variants) as .mxl,
    # three of them again as .krn (deduplicated by stem), two cantata movements as .xml, the
    # Riemenschneider analyses (.rntxt, skipped) and one prelude, BWV 846, which is no chorale.
    return _file_works(
        "Bach",
        "bach",
        (".mxl", ".xml", ".krn"),
        exclude=lambda rel: Path(rel).stem == "bwv846" or "/choraleAnalyses/" in rel,
        title=lambda stem: "BWV " + stem[3:] if stem.startswith("bwv") else stem,
    )


def _palestrina() -> list[_Work]:
    return _file_works("Palestrina", "palestrina", (".krn",))


def _monteverdi() -> list[_Work]:
    # Madrigals as .mxl; the .rntxt files are harmonic analyses, and madrigal.3.1_old an older
    # encoding of madrigal.3.1.
    return _file_works("Monteverdi", "monteverdi", (".mxl",), exclude=lambda rel: rel.endswith("_old.mxl"))


def _trecento() -> list[_Work]:
    # One Kyrie exists as .mxl and .xml (same stem); one Gloria has a "_bak" backup copy.
    return _file_works("Trecento", "trecento", (".mxl", ".xml"), exclude=lambda rel: "_bak." in rel)


def _quartets(label: str, folder: str) -> list[_Work]:
    # Whole quartets (opus132.mxl) or one file per movement (opus18no1/movement1.mxl); Beethoven's
    # op. 18 no. 1 is there both as .krn and .mxl.
    return _file_works(label, folder, (".mxl", ".xml", ".krn"))


def _essen() -> list[_Work]:
    # test*.abc are music21's parser test files: copies of tunes found in the real books.
    return _abc_works("Essen", "essenFolksong", exclude=lambda name: name.startswith("test"))


def _ryans() -> list[_Work]:
    return _abc_works("Ryan's Mammoth", "ryansMammoth")


def _oneills() -> list[_Work]:
    return _abc_works("O'Neill's", "oneills1850", unique_numbers=True)


#: How each label lists its works (sorted). Tests may add a work here to exercise failures.
_ENUMERATORS: dict[str, Callable[[], list[_Work]]] = {
    "Bach": _bach,
    "Palestrina": _palestrina,
    "Monteverdi": _monteverdi,
    "Trecento": _trecento,
    "Beethoven": lambda: _quartets("Beethoven", "beethoven"),
    "Mozart": lambda: _quartets("Mozart", "mozart"),
    "Haydn": lambda: _quartets("Haydn", "haydn"),
    "Essen": _essen,
    "Ryan's Mammoth": _ryans,
    "O'Neill's": _oneills,
}


def list_works(label: str) -> list[_Work]:
    """Every work music21 holds for ``label``, in a stable sorted order."""
    if label not in _ENUMERATORS:
        raise ValueError(f"unknown bundled label {label!r}; choose from {', '.join(LABELS)}")
    return _ENUMERATORS[label]()


def select_works(
    works: list[_Work], max_per_label: int | None, *, seed: int = SEED
) -> list[_Work]:
    """A deterministic, spread-out choice of at most ``max_per_label`` works (all when None)."""
    if max_per_label is None or len(works) <= max_per_label:
        return list(works)
    label = works[0].label if works else ""
    rng = random.Random(f"partita-bundled:{seed}:{label}")
    keep = sorted(rng.sample(range(len(works)), max_per_label))
    return [works[i] for i in keep]


# --------------------------------------------------------------------------------------------
# Converting one work (runs in a worker process)


def _quiet_music21() -> None:
    """Keep music21's warnings out of the user's terminal (a worker's initializer)."""
    warnings.filterwarnings("ignore")


def _strip_repeats(score) -> None:
    """Remove repeat barlines, brackets and jumps, so that the music is played once through."""
    from music21 import bar, repeat, spanner, stream

    for m in score.recurse().getElementsByClass(stream.Measure):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = bar.Barline("final" if m.rightBarline.type == "final" else "regular")
    for site in list(score.recurse(streamsOnly=True, includeSelf=True)):
        for el in list(site.getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
            site.remove(el)


def _unshare(score) -> None:
    """Give each site its own copy of a context object that music21 put in two places.

    music21's ABC reader sometimes puts one TimeSignature object in two measures, and its MIDI
    writer then refuses to move that object into the conductor track twice.
    """
    import copy

    from music21 import key, meter, tempo

    classes = (meter.TimeSignature, key.KeySignature, tempo.TempoIndication)
    seen: set[int] = set()
    shared = []
    for site in score.recurse(streamsOnly=True, includeSelf=True):
        for el in site.getElementsByClass(classes):
            if id(el) in seen:
                shared.append((site, el))
            seen.add(id(el))
    for site, el in shared:
        site.replace(el, copy.deepcopy(el))


def _title_from(score, work: _Work) -> str:
    md = getattr(score, "metadata", None)
    if md is None:
        return work.fallback_title
    for value, is_movement in ((md.title, False), (md.movementName, True)):
        if not value:
            continue
        value = " ".join(str(value).split())
        # music21 puts the file name in movementName when a file has none, and the Monteverdi
        # madrigals carry a voice name ("CANTO") there.
        if re.search(r"\.(mxl|xml|musicxml|krn|abc)$", value, re.I) or (is_movement and value.isupper()):
            continue
        return value
    return work.fallback_title


def _parse(work: _Work):
    from music21 import converter, stream

    if work.text is not None:
        parsed = converter.parseData(work.text, format="abc")
    else:
        # forceSource/storePickle: read the file itself and leave no pickle in music21's scratch dir.
        parsed = converter.parse(work.path, forceSource=True, storePickle=False)
    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if len(scores) != 1:
            raise ValueError(f"holds {len(scores)} scores, expected one")
        parsed = scores[0]
    return parsed


def _convert(work: _Work, out_path: str) -> tuple[str | None, str | None, float]:
    """Parse ``work``, write it to ``out_path`` as MIDI and check it.

    Returns ``(title, None, seconds)`` on success or ``(None, reason, seconds)`` when skipped.
    """
    t0 = time.perf_counter()
    title, reason = _convert_one(work, out_path)
    return title, reason, round(time.perf_counter() - t0, 3)


def _convert_one(work: _Work, out_path: str) -> tuple[str | None, str | None]:
    from music21 import repeat

    from partita.io.midi import MidiError, load

    _quiet_music21()
    target = Path(out_path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    # music21 reports some problems by writing to sys.stderr; keep them out of the user's terminal.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                score = _parse(work)
            except Exception as e:  # music21 raises many kinds; each skips one work
                return None, f"music21 cannot parse it ({one_line(e)})"
            title = _title_from(score, work)
            _unshare(score)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                try:
                    score.write("midi", fp=str(tmp))
                except repeat.ExpanderException:
                    # Repeats music21 cannot expand: export the music once through instead.
                    _strip_repeats(score)
                    score.write("midi", fp=str(tmp))
            except Exception as e:
                return None, f"music21 cannot write it as MIDI ({one_line(e)})"
            try:
                load(tmp.read_bytes())
            except MidiError as e:
                return None, f"the MIDI file music21 wrote is unusable ({e.reason}: {e})"
            os.replace(tmp, target)
            return title, None
        finally:
            if tmp.exists():
                tmp.unlink()


# --------------------------------------------------------------------------------------------
# The export


def default_out_dir(max_per_label: int | None, labels: Iterable[str] | None = None) -> Path:
    """Where an export with these settings is cached: the user's cache directory."""
    import platformdirs

    name = f"bundled-{music21_version()}-{'full' if max_per_label is None else max_per_label}"
    if labels is not None and tuple(labels) != LABELS:
        name += "-" + "-".join(_SLUGS[label] for label in labels)
    return Path(platformdirs.user_cache_dir("partita")) / name


def _settings(labels: tuple[str, ...], max_per_label: int | None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "music21": music21_version(),
        "labels": list(labels),
        "max_per_label": max_per_label,
        "heavy_source_bytes": None if max_per_label is None else HEAVY_SOURCE_BYTES,
        "seed": SEED,
    }


def _load_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _from_manifest(out_dir: Path, manifest: dict, *, reused: bool, seconds: float) -> BundledExport:
    pieces = [
        Piece(
            id=p["id"],
            path=str(out_dir / p["id"]),
            label=p["label"],
            title=p.get("title"),
            source=SOURCE,
        )
        for p in manifest["pieces"]
    ]
    return BundledExport(
        out_dir=out_dir,
        pieces=pieces,
        available=dict(manifest["available"]),
        selected=dict(manifest["selected"]),
        exported=dict(manifest["exported"]),
        skipped=dict(manifest["skipped"]),
        skip_reasons=dict(manifest["skip_reasons"]),
        music21_version=manifest["settings"]["music21"],
        max_per_label=manifest["settings"]["max_per_label"],
        reused=reused,
        seconds=seconds,
        left_out_heavy=dict(manifest.get("left_out_heavy", {})),
    )


def _read_journal(out_dir: Path) -> dict[str, dict]:
    """Finished works of an earlier, interrupted run: ref -> record."""
    done: dict[str, dict] = {}
    try:
        lines = (out_dir / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            rec = json.loads(line)
            done[rec["ref"]] = rec
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    return done


def export_bundled(
    out_dir: str | os.PathLike | None = None,
    *,
    max_per_label: int | None = DEFAULT_MAX_PER_LABEL,
    labels: Iterable[str] | None = None,
    workers: int | None = None,
    full: bool = False,
    progress: ProgressFn | None = None,
) -> BundledExport:
    """Export music21's corpus as labelled MIDI files in ``out_dir`` (cached; see module doc).

    ``max_per_label``: works per label (a fixed-seed sample) or None for no cap; ``full=True``
    exports every work (no cap, heavy works included). ``labels``: a subset of `LABELS`.
    ``workers``: processes (default: all CPU cores; 0 converts in this process).
    ``progress(done, total)`` is called as works finish. An export that finished before with
    the same settings is returned at once; one that was interrupted is resumed.
    """
    t0 = time.perf_counter()
    if full:
        max_per_label = None
    if max_per_label is not None and max_per_label < 1:
        raise ValueError(f"max_per_label must be at least 1 (or None for no cap), not {max_per_label}")
    if labels is None:
        chosen = LABELS
    else:
        wanted = [labels] if isinstance(labels, str) else list(labels)
        unknown = [x for x in wanted if x not in LABELS]
        if unknown:
            raise ValueError(f"unknown bundled label(s) {unknown}; choose from {', '.join(LABELS)}")
        chosen = tuple(x for x in LABELS if x in wanted)
    out = Path(out_dir) if out_dir is not None else default_out_dir(max_per_label, chosen)
    settings = _settings(chosen, max_per_label)

    reused = _reuse(out, settings, t0, progress)
    if reused is not None:
        return reused
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        # Another process may have finished the same export while this one waited.
        reused = _reuse(out, settings, t0, progress)
        if reused is not None:
            return reused
        return _build(out, settings, chosen, max_per_label, workers, progress, t0)


def _reuse(out: Path, settings: dict, t0: float, progress: ProgressFn | None) -> BundledExport | None:
    """The export in ``out`` if it is complete and was made with ``settings``."""
    manifest = _load_manifest(out)
    if manifest is None or manifest.get("settings") != settings:
        return None
    if not all((out / p["id"]).is_file() for p in manifest["pieces"]):
        return None
    result = _from_manifest(out, manifest, reused=True, seconds=time.perf_counter() - t0)
    if progress is not None:
        progress(len(result.pieces), len(result.pieces))
    return result


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on ``out`` (where the OS offers one) so two exports do not mix."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; concurrent exports are the user's call
        yield
        return
    with open(out / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    out: Path,
    settings: dict,
    chosen: tuple[str, ...],
    max_per_label: int | None,
    workers: int | None,
    progress: ProgressFn | None,
    t0: float,
) -> BundledExport:
    manifest = _load_manifest(out)
    if manifest is not None:
        # A different (or damaged) export: it stops being complete from here on.
        (out / MANIFEST).unlink(missing_ok=True)

    # What to export.
    available: dict[str, int] = {}
    heavy: dict[str, int] = {}
    plan: list[_Work] = []
    for label in chosen:
        works = list_works(label)
        available[label] = len(works)
        if max_per_label is not None:
            light = [w for w in works if w.text is not None or w.cost <= HEAVY_SOURCE_BYTES]
            heavy[label] = len(works) - len(light)
            works = light
        plan.extend(select_works(works, max_per_label))
    selected = dict(Counter(w.label for w in plan))
    for label in chosen:
        selected.setdefault(label, 0)
    if len({w.out for w in plan}) != len(plan):  # pragma: no cover - a bug in the listing
        raise RuntimeError("two bundled works map to the same output file")

    # Reuse what an earlier run made with the same music21: the journal of an interrupted run,
    # or the pieces of a finished export with other settings. Their files of works that are no
    # longer selected are removed, since a plain folder reader would pick them up.
    key = _journal_key()
    journal_path = out / JOURNAL
    earlier: dict[str, dict] = {}
    if manifest is not None and manifest.get("key") == key:
        for p in manifest.get("pieces", []):
            earlier[p["ref"]] = dict(p, out=p["id"], reason=None)
        for ref, reason in manifest.get("skip_reasons", {}).items():
            earlier[ref] = {"ref": ref, "out": None, "title": None, "reason": reason}
    earlier.update({ref: rec for ref, rec in _read_journal(out).items() if rec.get("key") == key})
    by_ref = {w.ref: w for w in plan}
    done: dict[str, dict] = {}
    for ref, rec in earlier.items():
        w = by_ref.get(ref)
        if w is not None and (rec["reason"] is not None or (rec["out"] == w.out and (out / w.out).is_file())):
            done[ref] = dict(rec, out=w.out, label=w.label, key=key)
        elif w is None and rec.get("out") and rec["reason"] is None:
            (out / rec["out"]).unlink(missing_ok=True)
    _write_journal(journal_path, done.values())

    todo = [w for w in plan if w.ref not in done]
    total = len(plan)
    count = len(plan) - len(todo)
    if progress is not None:
        progress(count, total)

    with open(journal_path, "a", encoding="utf-8") as journal:

        def record(work: _Work, title: str | None, reason: str | None, seconds: float | None) -> None:
            nonlocal count
            rec = {
                "ref": work.ref,
                "out": work.out,
                "label": work.label,
                "title": title,
                "reason": reason,
                "seconds": seconds,
                "key": key,
            }
            journal.write(json.dumps(rec, ensure_ascii=False) + "\n")
            journal.flush()
            done[work.ref] = rec
            count += 1
            if progress is not None:
                progress(count, total)

        _run(todo, out, workers, record)

    pieces: list[dict] = []
    exported: Counter = Counter()
    skipped: Counter = Counter()
    reasons: dict[str, str] = {}
    for w in plan:
        rec = done[w.ref]
        if rec["reason"] is None:
            pieces.append(
                {"id": w.out, "label": w.label, "title": rec["title"], "ref": w.ref, "seconds": rec.get("seconds")}
            )
            exported[w.label] += 1
        else:
            skipped[w.label] += 1
            reasons[w.ref] = rec["reason"]

    with atomic_path(out / LABELS_CSV) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "title"])
        for p in pieces:
            writer.writerow([p["id"], p["label"], p["title"] or ""])

    manifest = {
        "settings": settings,
        "key": key,
        "available": available,
        "selected": selected,
        "left_out_heavy": heavy,
        "exported": {label: exported.get(label, 0) for label in chosen},
        "skipped": {label: skipped.get(label, 0) for label in chosen},
        "skip_reasons": reasons,
        "pieces": pieces,
    }
    # Last: the manifest is the proof that the export is complete.
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    journal_path.unlink(missing_ok=True)
    return _from_manifest(out, manifest, reused=False, seconds=time.perf_counter() - t0)


def _journal_key() -> str:
    return f"{FORMAT_VERSION}:{music21_version()}"


def _write_journal(path: Path, records: Iterable[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# --------------------------------------------------------------------------------------------
# Scheduling


def _run(
    todo: list[_Work],
    out: Path,
    workers: int | None,
    record: Callable[[_Work, str | None, str | None, float | None], None],
) -> None:
    """Convert ``todo``, calling ``record`` once per work, in a pool of ``workers`` processes.

    The longest works go first so that the last minutes are not spent on one straggler. At most
    ``workers`` works are in flight, so when a worker process dies the suspects are known: they
    are retried one at a time in a fresh pool, and a work that kills its worker again is skipped.
    """
    if not todo:
        return
    order = sorted(todo, key=lambda w: (-w.cost, w.ref))
    if workers is None:
        workers = os.cpu_count() or 1
    if workers <= 0:
        for w in order:
            record(w, *_convert(w, str(out / w.out)))
        return
    workers = max(1, min(workers, len(order)))
    pending = list(reversed(order))  # pop() from the end = biggest first
    suspects: list[_Work] = []
    while pending:
        suspects += _pool_pass(pending, out, workers, record)
        for w in suspects:
            lost = _pool_pass([w], out, 1, record)
            if lost:
                record(w, None, "the worker process died while converting it (music21 crashed or ran out of memory)", None)
        suspects = []


def _pool_pass(
    pending: list[_Work],
    out: Path,
    workers: int,
    record: Callable[[_Work, str | None, str | None, float | None], None],
) -> list[_Work]:
    """Run works from ``pending`` (consumed from the end) until it is empty or the pool breaks.

    Returns the works that were in flight when the pool broke.
    """
    ctx = _mp_context()
    in_flight: dict[Future, _Work] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet_music21) as pool:
        try:
            while pending or in_flight:
                while pending and len(in_flight) < workers:
                    w = pending.pop()
                    in_flight[pool.submit(_convert, w, str(out / w.out))] = w
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    try:
                        title, reason, seconds = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except Exception as e:  # an error outside _convert's own handling
                        title, reason, seconds = None, f"conversion failed ({one_line(e)})", None
                    record(in_flight.pop(fut), title, reason, seconds)
                if broken:
                    return list(in_flight.values())
        except BrokenProcessPool:  # raised by submit() on a pool that just broke
            return list(in_flight.values())
    return []


def _mp_context():
    """How worker processes start.

    fork starts a worker in milliseconds with music21 already imported, but forking a process
    that runs other threads (a progress bar, a training loop) can deadlock the child: then, and
    off Linux, a fork server (or spawn) starts clean workers, which import music21 themselves.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def read_labels_csv(out_dir: str | os.PathLike) -> list[tuple[str, str, str]]:
    """The rows of an export's ``labels.csv``: (relative path, label, title)."""
    with open(Path(out_dir) / LABELS_CSV, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [tuple(r) for r in rows[1:]]  # type: ignore[misc]


__all__ = [
    "DEFAULT_MAX_PER_LABEL",
    "HEAVY_SOURCE_BYTES",
    "LABELS",
    "BundledExport",
    "corpus_root",
    "default_out_dir",
    "export_bundled",
    "list_works",
    "read_labels_csv",
    "select_works",
    "split_abc",
]
