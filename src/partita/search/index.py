"""A vector index of pieces: FAISS holds the vectors, a Parquet table says what each vector is.

Index folder layout::

    index.faiss       the FAISS index (faiss.write_index), row r = piece r of the table
    pieces.parquet    one row per piece: id, path, title, label, split, source, duration, n_notes
    index.json        format version, the embedder (name, path, fingerprint), dim, index kind,
                      embedding settings (windows, seed), counts per label and split
    attribution.json  label centroids and their calibration (partita.search.attribute)
    map-tsne-2d.json  a fitted map of the pieces, once one was drawn (partita.search.maps; one file
                      per method and dimension count)

Vectors are L2-normalised embeddings, so the index searches by inner product (= cosine
similarity). Results report ``distance = 1 - cosine similarity`` (0 = same direction, 2 =
opposite), the same number the attribution's "unknown" threshold is expressed in.

The kind of FAISS index is chosen from the count (``kind="auto"``): an exact flat index up to
``EXACT_MAX`` vectors (a brute-force scan of 50k x 128 floats takes a few milliseconds, and it is
exact), HNSW above (logarithmic search, no training, vectors can be added one at a time), and IVF
from ``IVF_MIN`` (HNSW's graph costs ~M*8 bytes a vector on top of the vectors and takes long to
build at that size; IVF trains once on a sample). ``kind="flat"|"hnsw"|"ivf"`` overrides it.
Nothing here reads MIDI or runs a model: :func:`embed_into_index` is the one place that does.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from partita.errors import PartitaError
from partita.io.files import atomic_path, atomic_write

__all__ = [
    "EXACT_MAX", "IVF_MIN", "KINDS", "Hit", "Index", "choose_kind", "embed_into_index",
    "model_record", "resolve_model",
]

FORMAT = "partita.index"
FORMAT_VERSION = 1
INDEX_FILE, PIECES_FILE, META_FILE = "index.faiss", "pieces.parquet", "index.json"
ATTRIBUTION_FILE = "attribution.json"

KINDS = ("flat", "hnsw", "ivf")
#: ``embed_into_index`` adds and saves the pieces in chunks of this many (bounded memory, resumable).
CHUNK = 2048
EXACT_MAX = 50_000
IVF_MIN = 2_000_000

#: The metadata columns, in order. Every piece dict is reduced to these (missing ones are null).
COLUMNS = {
    "id": pa.string(),
    "path": pa.string(),
    "title": pa.string(),
    "label": pa.string(),
    "split": pa.string(),
    "source": pa.string(),
    "duration": pa.float64(),
    "n_notes": pa.int64(),
}
SCHEMA = pa.schema(list(COLUMNS.items()))


def choose_kind(n: int) -> str:
    """The index kind ``kind="auto"`` picks for ``n`` vectors."""
    if n <= EXACT_MAX:
        return "flat"
    return "hnsw" if n < IVF_MIN else "ivf"


def _faiss():
    import faiss

    return faiss


@dataclass
class Hit:
    """One search result: ``row`` of the index, its ``distance`` (1 - cosine) and its metadata."""

    rank: int
    row: int
    distance: float
    similarity: float
    piece: dict

    def to_dict(self) -> dict:
        return {"rank": self.rank, "row": self.row, "distance": self.distance, "similarity": self.similarity, **self.piece}


def _clean_piece(p: dict) -> dict:
    out = {}
    for name, typ in COLUMNS.items():
        v = p.get(name)
        if v is not None:
            if pa.types.is_string(typ):
                v = str(v)
            elif pa.types.is_integer(typ):
                v = int(v)
            else:
                v = float(v)
        out[name] = v
    return out


def _as_vectors(vectors: Any, dim: Optional[int]) -> np.ndarray:
    v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise PartitaError(f"vectors must be a 2-D array (pieces x dim), not shape {v.shape}")
    if dim is not None and v.shape[1] != dim:
        raise PartitaError(f"vectors have {v.shape[1]} dimensions but the index holds {dim}-dimensional ones")
    if not np.isfinite(v).all():
        raise PartitaError("vectors contain NaN or infinite values")
    # Re-normalise: inner product is cosine only for unit vectors (a mean of unit vectors is not one).
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12))


class Index:
    """L2-normalised piece vectors in FAISS plus one metadata row per vector.

    ``Index(dim, kind=...)`` makes an empty one; :meth:`build` one from vectors; :meth:`load` reads
    a folder written by :meth:`save`. ``model`` (a dict from :func:`model_record`) names the
    embedder the vectors come from; :meth:`add` refuses vectors of another one, because vectors
    of two embedders live in unrelated spaces and their distances mean nothing.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "auto",
        model: Optional[dict] = None,
        embed: Optional[dict] = None,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        nlist: Optional[int] = None,
        nprobe: int = 32,
        seed: int = 0,
    ):
        if kind not in ("auto", *KINDS):
            raise PartitaError(f"unknown index kind {kind!r}: use auto, {', '.join(KINDS)}")
        if int(dim) <= 0:
            raise PartitaError(f"an index needs a positive dimension, not {dim}")
        self.dim = int(dim)
        self.requested_kind = kind
        self.kind: Optional[str] = None if kind == "auto" else kind
        self.model = dict(model or {})
        self.embed = dict(embed or {})
        self.params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search,
                       "nlist": nlist, "nprobe": nprobe, "seed": seed}
        self.faiss_index = None
        self.pieces: list[dict] = []
        self._ids: dict[str, int] = {}
        self.path: Optional[Path] = None  # the folder it was loaded from or saved to

    # ---------------------------------------------------------------- building
    def _new_faiss(self, kind: str, train: np.ndarray):
        faiss = _faiss()
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, int(self.params["hnsw_m"]), ip)
            index.hnsw.efConstruction = int(self.params["ef_construction"])
            index.hnsw.efSearch = int(self.params["ef_search"])
            return index
        # IVF: the coarse quantiser is k-means, so it needs training vectors (about 40 per list).
        n = len(train)
        nlist = self.params["nlist"] or max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1))
        if n < nlist:
            raise PartitaError(f"an IVF index with {nlist} lists needs at least {nlist} vectors to train on, got {n}; use --index-type flat or hnsw")
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, int(nlist), ip)
        cp = index.cp
        cp.seed = int(self.params["seed"])
        sample = train
        if n > 256 * nlist:  # k-means does not need every vector; a seeded sample keeps it quick
            rng = np.random.default_rng(self.params["seed"])
            sample = train[np.sort(rng.choice(n, 256 * nlist, replace=False))]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = min(int(self.params["nprobe"]), int(nlist))
        self.params["nlist"] = int(nlist)
        index.make_direct_map()  # lets vectors() reconstruct rows (maps, centroids, rebuilds)
        return index

    @classmethod
    def build(cls, vectors: Any, pieces: Sequence[dict], *, dim: Optional[int] = None, **kwargs) -> "Index":
        """A new index of ``vectors`` (N x dim) described by ``pieces`` (N dicts: id, path, title,
        label, split, ...). Keyword arguments are those of the constructor."""
        v = np.asarray(vectors, dtype=np.float32)
        index = cls(dim or (v.shape[-1] if v.ndim == 2 else 0), **kwargs)
        index.add(v, pieces)
        return index

    def add(self, vectors: Any, pieces: Sequence[dict], *, model: Optional[dict] = None) -> list[int]:
        """Append vectors with their metadata; returns the rows they got.

        A piece whose ``id`` is already in the index is skipped (so running ``partita embed`` twice
        on a folder adds nothing twice); ``model``, when given, must be the index's embedder.
        """
        if model is not None:
            self.check_model(model)
        pieces = [_clean_piece(dict(p)) for p in pieces]
        v = _as_vectors(vectors, self.dim) if len(pieces) else np.zeros((0, self.dim), np.float32)
        if len(v) != len(pieces):
            raise PartitaError(f"{len(v)} vectors but {len(pieces)} metadata rows: they must match one to one")
        keep, seen = [], set()
        for j, p in enumerate(pieces):
            if p["id"] is None:
                p["id"] = f"row-{len(self.pieces) + len(keep)}"
            if p["id"] in self._ids or p["id"] in seen:
                continue
            seen.add(p["id"])
            keep.append(j)
        if not keep:
            return []
        v = v[keep]
        if self.faiss_index is None:
            self.kind = self.kind or choose_kind(len(v))
            self.faiss_index = self._new_faiss(self.kind, v)
        elif self.requested_kind == "auto" and choose_kind(len(self) + len(v)) != self.kind:
            # The collection outgrew its kind (say an exact index past EXACT_MAX): rebuild once.
            old = self.vectors()
            self.kind = choose_kind(len(self) + len(v))
            self.faiss_index = self._new_faiss(self.kind, np.concatenate([old, v]))
            self.faiss_index.add(old)
        start = len(self.pieces)
        self.faiss_index.add(v)
        for j in keep:
            self._ids[pieces[j]["id"]] = len(self.pieces)
            self.pieces.append(pieces[j])
        return list(range(start, len(self.pieces)))

    def check_model(self, model: dict) -> None:
        """Refuse a model other than the index's (compared by weight fingerprint)."""
        mine, theirs = self.model.get("fingerprint"), (model or {}).get("fingerprint")
        if mine and theirs and mine != theirs:
            raise PartitaError(
                f"model {model.get('name')!r} (fingerprint {theirs}) is not the embedder this index was built with "
                f"({self.model.get('name')!r}, fingerprint {mine}): vectors of two models cannot share an index; "
                f"use --model with the index's model or build a new index"
            )
        if not self.model and model:
            self.model = dict(model)

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"Index(dim={self.dim}, kind={self.kind or self.requested_kind!r}, pieces={len(self)})"

    def vectors(self, rows: Optional[Iterable[int]] = None) -> np.ndarray:
        """The stored vectors (all rows, or ``rows``), reconstructed from FAISS."""
        if self.faiss_index is None or len(self) == 0:
            return np.zeros((0, self.dim), np.float32)
        if rows is None:
            return self.faiss_index.reconstruct_n(0, len(self)).astype(np.float32)
        rows = [int(r) for r in rows]
        return np.stack([self.faiss_index.reconstruct(r) for r in rows]).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    def row_of(self, piece_id: str) -> Optional[int]:
        return self._ids.get(piece_id)

    def column(self, name: str) -> list:
        return [p.get(name) for p in self.pieces]

    def search(self, queries: Any, k: int = 10, *, exclude_self: bool = False) -> list[list[Hit]]:
        """The ``k`` nearest pieces to each query vector, nearest first.

        ``exclude_self``: drop hits at distance ~0 (a query that is itself in the index).
        """
        if k < 1:
            raise PartitaError(f"-k must be at least 1, not {k}")
        q = _as_vectors(queries, self.dim)
        if len(self) == 0:
            return [[] for _ in range(len(q))]
        want = min(k + (1 if exclude_self else 0), len(self))
        sims, rows = self.faiss_index.search(q, want)
        out = []
        for srow, rrow in zip(sims, rows):
            hits = []
            for s, r in zip(srow, rrow):
                if r < 0:  # HNSW/IVF return -1 when they found fewer than asked
                    continue
                s = float(min(max(s, -1.0), 1.0))
                if exclude_self and 1.0 - s < 1e-6:
                    continue
                hits.append(Hit(rank=len(hits) + 1, row=int(r), distance=1.0 - s, similarity=s, piece=dict(self.pieces[r])))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    def counts(self, column: str) -> dict:
        out: dict = {}
        for v in self.column(column):
            key = v if v is not None else "(none)"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    # ---------------------------------------------------------------- files
    def meta(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "requested_kind": self.requested_kind,
            "metric": "inner product of L2-normalised vectors; distance = 1 - cosine similarity",
            "params": self.params,
            "model": self.model,
            "embed": self.embed,
            "count": len(self),
            "labels": self.counts("label"),
            "splits": self.counts("split"),
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder (each file appears whole; index.json last, as the commit mark)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise PartitaError(f"{path}: exists and is not a folder; choose another --index")
        path.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        if self.faiss_index is None:  # an empty index: exact, since there is nothing to train on
            self.kind = "flat"
            self.faiss_index = self._new_faiss("flat", np.zeros((0, self.dim), np.float32))
        with atomic_path(path / INDEX_FILE) as tmp:
            faiss.write_index(self.faiss_index, str(tmp))
        with atomic_path(path / PIECES_FILE) as tmp:
            pq.write_table(pa.Table.from_pylist(self.pieces, schema=SCHEMA), tmp)
        _write_json(path / META_FILE, self.meta())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Index":
        """Read an index folder; a missing or damaged one raises a one-line PartitaError."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise PartitaError(f"{path}: no such index folder (build one with 'partita embed FILES --index {path}')")
        for name in (META_FILE, INDEX_FILE, PIECES_FILE):
            if not (path / name).is_file():
                raise PartitaError(f"{path}: not a partita index (no {name}); build one with 'partita embed'")
        meta = read_json(path / META_FILE, "index metadata")
        if meta.get("format") != FORMAT or not isinstance(meta.get("dim"), int):
            raise PartitaError(f"{path / META_FILE}: not a partita index description")
        if int(meta.get("format_version", 1)) > FORMAT_VERSION:
            raise PartitaError(f"{path}: index format {meta['format_version']} is newer than this partita: upgrade partita")
        p = meta.get("params", {})
        index = cls(
            meta["dim"], kind=meta.get("requested_kind", "auto"), model=meta.get("model"), embed=meta.get("embed"),
            **{k: p[k] for k in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "seed") if k in p},
        )
        index.kind = meta.get("kind")
        try:
            index.faiss_index = _faiss().read_index(str(path / INDEX_FILE))
        except Exception as e:  # faiss raises RuntimeError with a C++ trace in the message
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise PartitaError(f"{path / INDEX_FILE}: corrupt FAISS index ({first}); build the index again") from None
        try:
            rows = pq.ParquetFile(path / PIECES_FILE).read().to_pylist()
        except Exception as e:
            raise PartitaError(f"{path / PIECES_FILE}: corrupt metadata table ({type(e).__name__}); build the index again") from None
        if index.faiss_index.ntotal != len(rows) or index.faiss_index.d != index.dim:
            raise PartitaError(
                f"{path}: the FAISS index ({index.faiss_index.ntotal} vectors of dim {index.faiss_index.d}) does not match "
                f"pieces.parquet ({len(rows)} rows) / index.json (dim {index.dim}); build the index again"
            )
        if hasattr(index.faiss_index, "make_direct_map") and index.kind == "ivf":
            index.faiss_index.make_direct_map()
        if hasattr(index.faiss_index, "hnsw"):
            index.faiss_index.hnsw.efSearch = int(index.params["ef_search"])
        if hasattr(index.faiss_index, "nprobe"):
            index.faiss_index.nprobe = min(int(index.params["nprobe"]), index.faiss_index.nlist)
        index.pieces = [_clean_piece(r) for r in rows]
        index._ids = {p["id"]: r for r, p in enumerate(index.pieces)}
        index.path = path
        return index


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PartitaError(f"{path}: cannot read the {what} ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise PartitaError(f"{path}: corrupt {what} ({e.msg} at line {e.lineno}); build the index again") from None


# -------------------------------------------------------------------- models
def fingerprint(bundle: str | os.PathLike) -> str:
    """A short hash of a bundle's weights: two bundles with the same weights give the same one."""
    weights = Path(bundle) / "model.safetensors"
    h = hashlib.sha256()
    try:
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        raise PartitaError(f"{bundle}: not a model bundle (no readable model.safetensors)") from None
    return h.hexdigest()[:16]


def model_record(bundle: str | os.PathLike, *, shipped: Optional[str] = None) -> dict:
    """What index.json says about an embedder: name, where it is, its fingerprint.

    A shipped bundle is recorded by name (``shipped``), not by path, so the index still finds it
    after the package moves.
    """
    bundle = Path(bundle).resolve()
    return {
        "name": shipped or bundle.name,
        "shipped": bool(shipped),
        "path": None if shipped else str(bundle),
        "fingerprint": fingerprint(bundle),
    }


def resolve_model(index_model: dict, override: Optional[str | os.PathLike] = None) -> tuple[Path, dict]:
    """The bundle folder to embed queries with, and its record.

    ``override`` (the user's --model) must have the index's fingerprint; without it the index's
    own embedder is used (the shipped one by name, or the folder it was built from).
    """
    from partita import pretrained

    if override is not None:
        from partita.search.choice import shipped_model

        path = shipped_model(override)
        record = model_record(path, shipped=None)
        if (pretrained.ROOT / path.name).resolve() == path.resolve():
            record = model_record(path, shipped=path.name)
    elif index_model.get("shipped"):
        path = pretrained.bundle_path(index_model["name"])
        record = model_record(path, shipped=index_model["name"])
    elif index_model.get("path"):
        path = Path(index_model["path"])
        if not (path / "config.json").is_file():
            raise PartitaError(f"the index's embedder {path} is gone; pass --model with the bundle the index was built with")
        record = model_record(path)
    else:
        raise PartitaError("the index does not say which embedder made it; pass --model")
    if index_model.get("fingerprint") and record["fingerprint"] != index_model["fingerprint"]:
        raise PartitaError(
            f"model {record['name']!r} (fingerprint {record['fingerprint']}) is not the embedder this index was built "
            f"with ({index_model.get('name')!r}, fingerprint {index_model['fingerprint']}); pass the index's model to --model"
        )
    return path, record


def load_embedder(path: str | os.PathLike):
    """The embedder (SiaViT or FeatNet) of a bundle folder (another family: a one-line error)."""
    from partita.search.embed import _model

    return _model(Path(path))


# -------------------------------------------------------------------- inputs
MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")


def is_corpus(path: Path) -> bool:
    return path.is_dir() and (path / "corpus.json").is_file() and (path / "pieces.parquet").is_file()


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, Any]]:
    """Each input as ("corpus", folder) for a prepared corpus or ("file", path, label) per MIDI file.

    A folder of MIDI files is walked (sorted, so rows come in a stable order); files in a
    sub-folder are labelled by the first sub-folder's name, as ``partita data prepare`` does.
    """
    out: list = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if is_corpus(p):
            out.append(("corpus", p))
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MIDI_SUFFIXES)
            if not found:
                raise PartitaError(f"{p}: no MIDI files (.mid/.midi) in this folder")
            for f in found:
                rel = f.relative_to(p)
                out.append(("file", f, rel.parts[0] if len(rel.parts) > 1 else None))
        elif p.exists():
            out.append(("file", p, None))
        else:
            raise PartitaError(f"{p}: no such file or folder")
    return out


@dataclass
class EmbedReport:
    index: "Index"
    added: int
    skipped_known: int
    failures: list  # (path or id, one-line reason)
    created: bool
    choice: Any = None  # the partita.search.IndexChoice: which embedder, and why


def embed_into_index(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: Optional[str | os.PathLike] = None,
    kind: str = "auto",
    windows: Optional[int] = None,
    seed: Optional[int] = None,
    batch_size: int = 32,
    label: Optional[str] = None,
    splits: Optional[Sequence[str]] = None,
    store_paths: bool = True,
    calibrate: bool = True,
    unknown_quantile: Optional[float] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> EmbedReport:
    """Embed MIDI files, folders and prepared corpora into the index folder ``out`` (made, or
    added to when it exists), then refit the attribution (label centroids, calibration).

    ``model``: an embedder bundle folder or shipped name, siavit or featnet (default: the index's; a new
    index: ``partita.search.choose_index`` of the inputs, featnet-piano for piano music, else siavit-small).
    ``windows``/``seed``: the embedding settings (default: the index's, else 8 and 0); an existing
    index keeps its own, since vectors made with other settings would not be comparable.
    ``label``: the label of every MIDI file given (overrides sub-folder names). ``splits``: only
    these splits of a prepared corpus (e.g. train, valid). Unusable files are skipped and reported.
    ``unknown_quantile``: the share of held-out pieces by known composers that the "unknown"
    threshold keeps as known (partita.search.attribute; default: the index's own, else 0.95).
    """
    from partita import pretrained
    from partita.search import embed as E

    out = Path(out).expanduser()
    existing = (out / META_FILE).is_file()
    if out.exists() and not out.is_dir():
        raise PartitaError(f"{out}: exists and is not a folder; choose another --index")
    if out.is_dir() and not existing and any(out.iterdir()):
        raise PartitaError(f"{out}: a folder that is not an index and not empty; choose a new --index folder")
    if is_shipped(out):
        raise PartitaError(f"{out} is the index shipped with partita and is not changed; copy the folder and add to the copy")
    from partita.search.choice import IndexChoice, choose_index

    items = expand_inputs(inputs)
    if existing:
        index = Index.load(out)
        path, record = resolve_model(index.model, model)
        choice = IndexChoice(out, out.name, record["name"], f"adding to {out.name}/{record['name']} (the index's embedder)", given=True)
        if windows is not None and windows != index.embed.get("windows") or seed is not None and seed != index.embed.get("seed"):
            raise PartitaError(
                f"{out} was embedded with --windows {index.embed.get('windows')} --seed {index.embed.get('seed')}; "
                f"new pieces must use the same settings (leave the options out)"
            )
    else:
        choice = choose_index(list(inputs), out, model=model, new_index=True)
        if model is None:
            path = pretrained.bundle_path(choice.embedder)
            record = model_record(path, shipped=path.name)
        else:
            path, record = resolve_model({}, model)
        index = None
    embedder = load_embedder(path)
    settings = dict(index.embed) if index is not None else {"windows": 8 if windows is None else int(windows), "seed": 0 if seed is None else int(seed)}
    kw = {"windows": int(settings["windows"]), "seed": int(settings["seed"]), "batch_size": int(batch_size)}

    # Work list: (piece dict, notes array or file path), skipping pieces already in the index.
    known = set(index._ids) if index is not None else set()
    jobs: list[tuple[dict, Any]] = []
    skipped = 0
    from partita.data.corpus import Corpus

    for item in items:
        if item[0] == "corpus":
            corpus = Corpus(item[1])
            name = item[1].resolve().name
            wanted = set(splits) if splits else None
            for i, r in enumerate(corpus.pieces):
                if wanted is not None and r["split"] not in wanted:
                    continue
                piece = {"id": r["id"], "path": r["path"] if store_paths else None, "title": r["title"],
                         "label": label or r["label"], "split": r["split"], "source": name,
                         "duration": r["duration"], "n_notes": r["n_notes"]}
                if piece["id"] in known:
                    skipped += 1
                    continue
                known.add(piece["id"])
                jobs.append((piece, (corpus, i)))
        else:
            f = Path(item[1])
            pid = str(f.resolve())
            if pid in known:
                skipped += 1
                continue
            known.add(pid)
            piece = {"id": pid, "path": str(f.resolve()) if store_paths else None, "title": f.stem,
                     "label": label or item[2], "split": None, "source": "files"}
            jobs.append((piece, f))

    # Corpus pieces (note arrays from the store) and files, in chunks of CHUNK pieces: each chunk
    # is added and the index saved, so memory stays bounded and an interrupted run resumes where
    # it stopped (pieces already in the index are skipped).
    failures: list = []
    total, done, added = len(jobs), 0, 0

    def tick(offset: int):
        return None if progress is None else (lambda d, _t: progress(offset + d, total))

    def commit(vecs, pieces) -> None:
        nonlocal index, added
        if index is None:
            if not pieces:
                return
            index = Index(int(np.asarray(vecs).shape[1]), kind=kind, model=record, embed=settings)
        elif kind != "auto" and kind != index.kind:
            raise PartitaError(f"{out} is a {index.kind} index; --index-type {kind} applies only to a new index")
        if pieces:
            added += len(index.add(np.asarray(vecs, np.float32), pieces, model=record))
            index.save(out)

    corpus_jobs: dict[int, list] = {}
    for p, src in jobs:
        if isinstance(src, tuple):
            corpus_jobs.setdefault(id(src[0]), []).append((p, src))
    for whole_group in corpus_jobs.values():
        for start in range(0, len(whole_group), CHUNK):
            group = whole_group[start : start + CHUNK]
            corpus = group[0][1][0]
            vecs, kept, fails = E.embed_corpus(embedder, corpus, [i for _, (_, i) in group], progress=tick(done), **kw)
            by_index = {i: p for p, (_, i) in group}
            commit(vecs, [by_index[i] for i in kept])
            failures.extend((by_index[i]["id"], _one_line(r)) for i, r in fails)
            done += len(group)
    file_jobs = [(p, src) for p, src in jobs if not isinstance(src, tuple)]
    for start in range(0, len(file_jobs), CHUNK):
        chunk = file_jobs[start : start + CHUNK]
        stats: dict = {}
        vecs, kept, fails = E.embed_files(embedder, [src for _, src in chunk], progress=tick(done), stats=stats, **kw)
        by_path = {str(src): p for p, src in chunk}
        pieces = []
        for kp in kept:
            p = by_path[str(kp)]
            p["duration"], p["n_notes"] = stats.get(str(kp), (None, None))
            pieces.append(p)
        commit(vecs, pieces)
        failures.extend((str(fp), _strip_path(str(fp), r)) for fp, r in fails)
        done += len(chunk)

    if index is None:
        detail = f" ({failures[0][0]}: {failures[0][1]})" if failures else ""
        raise PartitaError(f"no piece could be embedded{detail}; nothing written")
    if kind != "auto" and kind != index.kind:
        raise PartitaError(f"{out} is a {index.kind} index; --index-type {kind} applies only to a new index")
    if not added:
        index.save(out)
    if calibrate and not existing:
        _fit_reader(jobs, out, index)
    if calibrate:
        from partita.search.attribute import fit_attribution

        if unknown_quantile is None:  # keep the index's own choice, else the default
            previous = read_json(out / ATTRIBUTION_FILE, "attribution") if (out / ATTRIBUTION_FILE).is_file() else {}
            unknown_quantile = float((previous.get("fitted") or {}).get("quantile", 0.95))
        attribution = fit_attribution(index, quantile=unknown_quantile)
        if attribution is not None:
            attribution.save(out)
        elif (out / ATTRIBUTION_FILE).exists():
            (out / ATTRIBUTION_FILE).unlink()
    return EmbedReport(index=index, added=added, skipped_known=skipped, failures=failures, created=not existing,
                       choice=choice)


def _fit_reader(jobs: list, out: Path, index: "Index") -> None:
    """Fit the composer readout (``partita.search.reader``) of a new index from the labelled
    pieces just embedded, when at least two labels have enough works; its novelty also measures
    the distance to the training pieces in the index's own embedding."""
    from partita.search import reader as R

    works: dict = {}
    for piece, src in jobs:
        if piece["label"] is not None:
            works.setdefault(piece["label"], set()).add(_work(piece, src))
    if sum(len(w) >= 5 for w in works.values()) < 2:
        return
    notes, labels, groups, vectors, ids = [], [], [], [], []
    for piece, src in jobs:
        row = index.row_of(piece["id"])
        if piece["label"] is None or row is None:  # unlabelled, or the embedder skipped it
            continue
        try:
            if isinstance(src, tuple):
                n = src[0].notes(src[1])
            else:
                from partita.io import load, note_array, preprocess

                n = note_array(preprocess(load(src), sustain=True), unit="second")
            R.piece_views(n[:2])  # fewer than 2 pitched notes: skipped, as the embedder skipped it
        except Exception:
            continue
        notes.append(n)
        labels.append(piece["label"])
        groups.append(_work(piece, src))
        vectors.append(index.vectors([row])[0])
        ids.append(piece["id"])
    readout = R.fit_reader(notes, labels, groups, vectors=vectors, embedder=index.model.get("fingerprint"), ids=ids)
    if readout is not None:
        readout.save(out, index=index)  # names its pieces: their vectors are the index's


def _work(piece: dict, src: Any) -> str:
    """The work a piece belongs to: the corpus's group (ASAP's folder), else the piece itself."""
    if isinstance(src, tuple):
        g = src[0].pieces[src[1]].get("group")
        if g:
            return str(g)
    return str(piece["id"])


def _one_line(reason: Any) -> str:
    text = str(reason).strip().splitlines()
    return text[0] if text else "unreadable"


def _strip_path(path: str, reason: Any) -> str:
    """The reason without the file name in front (tables show the file in its own column)."""
    r = _one_line(reason)
    return r[len(path) + 2 :] if r.startswith(path + ": ") else r


def embed_queries(index: Index, queries: Sequence[str | os.PathLike], *, model: Optional[str | os.PathLike] = None,
                  batch_size: int = 32, progress: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, list[str], list]:
    """Embed query MIDI files with the index's embedder and settings: (vectors, kept paths, failures)."""
    from partita.search import embed as E

    path, _ = resolve_model(index.model, model)
    embedder = load_embedder(path)
    kw = {"windows": int(index.embed.get("windows", 8)), "seed": int(index.embed.get("seed", 0)), "batch_size": batch_size}
    files = []
    for q in queries:
        p = Path(q).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MIDI_SUFFIXES))
        else:
            files.append(p)
    vecs, kept, fails = E.embed_files(embedder, files, progress=progress, **kw)
    return np.asarray(vecs, np.float32).reshape(-1, index.dim), [str(k) for k in kept], [(str(p), _strip_path(str(p), r)) for p, r in fails]


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` is inside the package's folder of shipped bundles and indexes."""
    from partita import pretrained

    try:
        Path(path).expanduser().resolve().relative_to(pretrained.ROOT)
        return True
    except ValueError:
        return False


#: The indexes that ship with the package, by the name ``--index`` accepts.
SHIPPED_INDEXES = {"bundled": "bundled-index", "piano": "piano-index"}

def shipped_index(name: str = "bundled") -> Path:
    """The folder of a shipped index: ``bundled`` (the bundled corpus's train and valid pieces,
    embedded by the shipped SiaViT) or ``piano`` (ASAP's train and valid works, performances and
    scores, embedded by the shipped FeatNet)."""
    from partita import pretrained

    folder = SHIPPED_INDEXES.get(name, name)
    path = pretrained.ROOT / folder
    if folder not in SHIPPED_INDEXES.values() or not (path / META_FILE).is_file():
        raise PartitaError(f"no shipped index {name!r} (shipped: {', '.join(SHIPPED_INDEXES)}); "
                           f"pass --index with one built by 'partita embed'")
    return path
