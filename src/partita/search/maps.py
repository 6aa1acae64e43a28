"""Maps of an index: t-SNE (or PCA) of the piece vectors to 2-D or 3-D, drawn as an interactive
plotly page (self-contained, works offline) and a PNG (matplotlib).

Fitting t-SNE is the slow part and its result depends on every point, so the fitted map is kept
in the index folder (``map-tsne-2d.json`` and so on, one per method and dimension count: the
settings, the ids of the fitted pieces and their coordinates; json only, no pickle). Drawing again reuses it; pieces added to the index since, and
highlighted query files, are *placed* into the existing map instead of refitting it:

* t-SNE: openTSNE's ``TSNEEmbedding.transform`` optimises only the new points against the fixed
  reference map (affinities to their nearest reference pieces, rebuilt from the index's vectors
  with the stored perplexity and seed), so the old points do not move;
* PCA: the stored mean and components project new points exactly.

``--refit`` fits from scratch (after many additions, say). Colours are labels (composers); the
composer view shows each label's centroid on the map, sized by its number of pieces.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from partita.errors import PartitaError
from partita.io.files import atomic_path, atomic_write

__all__ = ["METHODS", "MapState", "draw_map", "figure_html", "figure_png", "fit_map", "load_map", "place"]

def map_file(method: str, dims: int) -> str:
    """The file of a fitted map in the index folder: one per method and dimension count."""
    return f"map-{method}-{dims}d.json"
METHODS = ("tsne", "pca")
NO_LABEL = "(no label)"


@dataclass
class MapState:
    """A fitted map: ``coords[i]`` is the position of the piece ``ids[i]``."""

    method: str
    dims: int
    seed: int
    coords: np.ndarray
    ids: list[str]
    perplexity: Optional[float] = None
    pca_mean: Optional[np.ndarray] = None
    pca_components: Optional[np.ndarray] = None
    fingerprint: Optional[str] = None  # the embedder of the vectors it was fitted on
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "format": "partita.map", "format_version": 1, "method": self.method, "dims": self.dims, "seed": self.seed,
            "perplexity": self.perplexity, "fingerprint": self.fingerprint, "extra": self.extra, "ids": self.ids,
            "coords": [[round(float(x), 4) for x in row] for row in self.coords],
        }
        if self.pca_mean is not None:
            d["pca_mean"] = [float(x) for x in self.pca_mean]
            d["pca_components"] = [[float(x) for x in row] for row in self.pca_components]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MapState":
        try:
            coords = np.asarray(d["coords"], dtype=np.float64).reshape(-1, int(d["dims"]))
            return cls(
                method=str(d["method"]), dims=int(d["dims"]), seed=int(d["seed"]), coords=coords,
                ids=[str(x) for x in d["ids"]], perplexity=d.get("perplexity"),
                pca_mean=None if d.get("pca_mean") is None else np.asarray(d["pca_mean"], dtype=np.float64),
                pca_components=None if d.get("pca_components") is None else np.asarray(d["pca_components"], dtype=np.float64),
                fingerprint=d.get("fingerprint"), extra=dict(d.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PartitaError(f"corrupt stored map ({type(e).__name__}); draw it again with --refit") from None

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / map_file(self.method, self.dims)
        return atomic_write(path, json.dumps(self.to_dict()) + "\n")


def load_map(folder: str | os.PathLike, method: str = "tsne", dims: int = 2) -> Optional[MapState]:
    path = Path(folder) / map_file(method, dims)
    if not path.is_file():
        return None
    try:
        return MapState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        raise PartitaError(f"{path}: corrupt map file; draw it again with --refit") from None


def _check(method: str, dims: int) -> None:
    if method not in METHODS:
        raise PartitaError(f"unknown map method {method!r}: use {' or '.join(METHODS)}")
    if dims not in (2, 3):
        raise PartitaError(f"a map has 2 or 3 dimensions, not {dims}")


def _perplexity(n: int, perplexity: float) -> float:
    # openTSNE needs 3 * perplexity < n; a small index gets a proportionally small perplexity.
    return float(max(1.0, min(perplexity, (n - 1) / 3.0)))


def _gradient(n: int, dims: int) -> str:
    # Barnes-Hut is the quicker one below ~10k points (FFT interpolation has a fixed cost per
    # iteration) and the only one for 3-D maps; FFT interpolation wins on large 2-D maps.
    return "fft" if dims <= 2 and n >= 10_000 else "bh"


def _affinities(reference: np.ndarray, perplexity: float, seed: int):
    from openTSNE.affinity import PerplexityBasedNN

    method = "exact" if len(reference) <= 5000 else "annoy"
    return PerplexityBasedNN(reference, perplexity=perplexity, method=method, random_state=seed, n_jobs=1, verbose=False)


def fit_map(vectors: Any, *, method: str = "tsne", dims: int = 2, seed: int = 0, perplexity: float = 30.0,
            ids: Optional[Sequence[str]] = None, fingerprint: Optional[str] = None) -> MapState:
    """Fit a 2-D or 3-D map of ``vectors`` (seeded: the same seed gives the same map)."""
    _check(method, dims)
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    need = 2 if method == "pca" else 5
    if n < need:
        raise PartitaError(f"a {method} map needs at least {need} pieces, the index has {n}; embed more pieces first")
    if method == "pca":
        mean = x.mean(axis=0)
        # SVD of the centred data: the rows of vt are the principal axes, largest variance first.
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:dims]
        if comps.shape[0] < dims:  # fewer pieces than dimensions: pad with zero axes
            comps = np.vstack([comps, np.zeros((dims - comps.shape[0], x.shape[1]))])
        # Fix each axis's sign (SVD's is arbitrary), so the same data always gives the same picture.
        signs = np.sign(comps[np.arange(dims), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        coords = (x - mean) @ comps.T
        return MapState(method, dims, seed, coords, ids, pca_mean=mean, pca_components=comps, fingerprint=fingerprint)
    from openTSNE import TSNE

    p = _perplexity(n, perplexity)
    tsne = TSNE(
        n_components=dims, perplexity=p, random_state=seed, n_jobs=1, verbose=False,
        neighbors="exact" if n <= 5000 else "annoy",
        negative_gradient_method=_gradient(n, dims),
    )
    coords = np.asarray(tsne.fit(x.astype(np.float32)), dtype=np.float64)
    return MapState(method, dims, seed, coords, ids, perplexity=p, fingerprint=fingerprint)


def place(state: MapState, reference: Any, new: Any) -> np.ndarray:
    """Positions of ``new`` vectors in the fitted map, without moving it. ``reference`` holds the
    vectors of the fitted pieces, in ``state.ids`` order."""
    new = np.asarray(new, dtype=np.float64).reshape(-1, np.asarray(reference).shape[1])
    if len(new) == 0:
        return np.zeros((0, state.dims))
    if state.method == "pca":
        return (new - state.pca_mean) @ state.pca_components.T
    from openTSNE import TSNEEmbedding

    ref = np.asarray(reference, dtype=np.float32)
    emb = TSNEEmbedding(
        state.coords.astype(np.float64), _affinities(ref, state.perplexity or _perplexity(len(ref), 30.0), state.seed),
        random_state=state.seed, n_jobs=1, verbose=False,
        negative_gradient_method=_gradient(len(ref), state.dims),
    )
    # openTSNE's advice for placing points: a small perplexity keeps each one near its closest
    # reference pieces instead of the average of a wide neighbourhood.
    k = min(5.0, max(1.0, (len(ref) - 1) / 3.0))
    return np.asarray(emb.transform(new.astype(np.float32), perplexity=k), dtype=np.float64)


# ------------------------------------------------------------------------ figures
def _palette(labels: list[str]) -> dict:
    import plotly.colors as pc

    colours = pc.qualitative.Plotly + pc.qualitative.Dark24 + pc.qualitative.Light24
    out, j = {}, 0
    for lab in labels:
        if lab == NO_LABEL:
            out[lab] = "#9e9e9e"
        else:
            out[lab] = colours[j % len(colours)]
            j += 1
    return out


def _label_order(pieces: Sequence[dict]) -> list[str]:
    labels = sorted({p.get("label") or NO_LABEL for p in pieces}, key=lambda s: (s == NO_LABEL, s.lower()))
    return labels


def _esc(s: Any) -> str:
    import html

    return html.escape("" if s is None else str(s))


def figure_html(coords: np.ndarray, pieces: Sequence[dict], *, highlights: Sequence[dict] = (), title: str = "partita map"):
    """The plotly figure: one trace per label (click the legend to hide one), highlighted pieces as
    large black-edged stars with their names, and buttons that switch between the per-piece view
    and the per-composer view (label centroids sized by piece count)."""
    import plotly.graph_objects as go

    dims = coords.shape[1]
    labels = _label_order(pieces)
    colours = _palette(labels)
    big = len(pieces) > 20000  # WebGL above this; SVG is sharper and exports better below
    Scatter2 = go.Scattergl if big else go.Scatter
    traces, is_piece = [], []
    lab_of = np.array([p.get("label") or NO_LABEL for p in pieces], dtype=object)
    for lab in labels:
        m = np.flatnonzero(lab_of == lab)
        hover = [
            f"<b>{_esc(pieces[i].get('title') or pieces[i].get('id'))}</b><br>composer: {_esc(lab)}"
            + (f"<br>split: {_esc(pieces[i].get('split'))}" if pieces[i].get("split") else "")
            for i in m
        ]
        common = dict(name=f"{lab} ({len(m)})", legendgroup=lab, text=hover, hoverinfo="text",
                      marker=dict(color=colours[lab], size=5 if dims == 2 else 3, opacity=0.75))
        if dims == 2:
            traces.append(Scatter2(x=coords[m, 0], y=coords[m, 1], mode="markers", **common))
        else:
            traces.append(go.Scatter3d(x=coords[m, 0], y=coords[m, 1], z=coords[m, 2], mode="markers", **common))
        is_piece.append(True)
    # Composer view: centroid of each label's map positions.
    for lab in labels:
        m = np.flatnonzero(lab_of == lab)
        c = coords[m].mean(axis=0)
        size = float(10 + 2 * np.sqrt(len(m)))
        common = dict(name=f"{lab} ({len(m)})", legendgroup=lab, text=[f"<b>{_esc(lab)}</b><br>{len(m)} pieces"],
                      hoverinfo="text", visible=False, showlegend=True,
                      marker=dict(color=colours[lab], size=size if dims == 2 else size / 2, line=dict(color="black", width=1)))
        if dims == 2:
            traces.append(go.Scatter(x=[c[0]], y=[c[1]], mode="markers+text", textposition="top center",
                                     texttemplate=_esc(lab), **common))
        else:
            traces.append(go.Scatter3d(x=[c[0]], y=[c[1]], z=[c[2]], mode="markers+text", texttemplate=_esc(lab), **common))
        is_piece.append(False)
    if len(highlights):
        hc = np.array([h["coords"] for h in highlights], dtype=np.float64).reshape(-1, dims)
        names = [_esc(h["name"]) for h in highlights]
        hover = [f"<b>{_esc(h['name'])}</b> (highlighted)" + (f"<br>{_esc(h['note'])}" if h.get("note") else "") for h in highlights]
        common = dict(name="highlighted", text=names, hovertext=hover, hoverinfo="text", textposition="top center",
                      marker=dict(symbol="star" if dims == 2 else "diamond", size=18 if dims == 2 else 8, color="gold",
                                  line=dict(color="black", width=2)))
        if dims == 2:
            traces.append(go.Scatter(x=hc[:, 0], y=hc[:, 1], mode="markers+text", **common))
        else:
            traces.append(go.Scatter3d(x=hc[:, 0], y=hc[:, 1], z=hc[:, 2], mode="markers+text", **common))
        is_piece.append(None)  # visible in both views
    fig = go.Figure(traces)
    vis_pieces = [True if p is None else p for p in is_piece]
    vis_comp = [True if p is None else (not p) for p in is_piece]
    fig.update_layout(
        title=title, template="plotly_white", legend=dict(itemsizing="constant"), hovermode="closest", height=760,
        updatemenus=[dict(type="buttons", direction="right", x=0.0, y=1.08, xanchor="left", showactive=True, buttons=[
            dict(label="pieces", method="update", args=[{"visible": vis_pieces}]),
            dict(label="composers", method="update", args=[{"visible": vis_comp}]),
        ])],
    )
    if dims == 2:
        fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
        fig.update_yaxes(showticklabels=False, title=None, zeroline=False, scaleanchor="x")
    return fig


def write_html(fig, path: str | os.PathLike) -> Path:
    """A self-contained page: plotly.js is inlined (about 4.5 MB), so it opens without a network."""
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True, include_mathjax=False)
    return Path(path)


def figure_png(coords: np.ndarray, pieces: Sequence[dict], path: str | os.PathLike, *, highlights: Sequence[dict] = (),
               title: str = "partita map") -> Path:
    """The same map as a PNG: pieces coloured by label, composer names at their centroids,
    highlighted pieces as large stars with their names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dims = coords.shape[1]
    labels = _label_order(pieces)
    colours = _palette(labels)
    lab_of = np.array([p.get("label") or NO_LABEL for p in pieces], dtype=object)
    fig = plt.figure(figsize=(11, 8), dpi=110)
    ax = fig.add_subplot(111, projection="3d" if dims == 3 else None)
    for lab in labels:
        m = lab_of == lab
        pts = coords[m]
        ax.scatter(*pts.T, s=7, alpha=0.7, color=colours[lab], label=f"{lab} ({int(m.sum())})", linewidths=0)
    for lab in labels:
        c = coords[lab_of == lab].mean(axis=0)
        ax.text(*c, lab, fontsize=9, fontweight="bold", ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colours[lab], alpha=0.8))
    if len(highlights):
        hc = np.array([h["coords"] for h in highlights], dtype=np.float64).reshape(-1, dims)
        ax.scatter(*hc.T, s=260, marker="*", color="gold", edgecolors="black", linewidths=1.5, zorder=5, label="highlighted")
        for h, c in zip(highlights, hc):
            ax.text(*c, "  " + str(h["name"]), fontsize=9, zorder=6)
    ax.set_title(title)
    if dims == 2:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    for handle in getattr(legend, "legend_handles", getattr(legend, "legendHandles", [])):
        handle.set_sizes([40])  # one marker size in the legend, whatever the size on the map
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------ the whole job
def map_coordinates(index, *, method: str = "tsne", dims: int = 2, seed: int = 0, perplexity: float = 30.0,
                    refit: bool = False, save: bool = True) -> tuple[np.ndarray, MapState, dict]:
    """Map positions of every piece of ``index`` (an :class:`~partita.search.index.Index` loaded from
    a folder): the stored map where it fits (same method, dims, seed and embedder), pieces added
    since placed into it; else a fresh fit, stored in the folder when ``save`` and writable."""
    _check(method, dims)
    vectors = index.vectors()
    ids = index.column("id")
    fp = index.model.get("fingerprint")
    state = None if refit or index.path is None else load_map(index.path, method, dims)
    info = {"method": method, "dims": dims, "seed": seed}
    usable = (
        state is not None and state.method == method and state.dims == dims and state.seed == seed
        and state.fingerprint == fp and all(index.row_of(i) is not None for i in state.ids)
        and (method == "pca" or state.perplexity == _perplexity(len(state.ids), perplexity))
    )
    if usable:
        rows = [index.row_of(i) for i in state.ids]
        known = set(state.ids)
        new_rows = [r for r, i in enumerate(ids) if i not in known]
        coords = np.zeros((len(ids), dims))
        coords[rows] = state.coords
        if new_rows:
            coords[new_rows] = place(state, vectors[rows], vectors[new_rows])
        info.update(fitted=False, reused=len(rows), placed=len(new_rows))
    else:
        state = fit_map(vectors, method=method, dims=dims, seed=seed, perplexity=perplexity, ids=ids, fingerprint=fp)
        coords = state.coords
        info.update(fitted=True, reused=0, placed=0)
        from partita.search.index import is_shipped

        if save and index.path is not None and not is_shipped(index.path):  # the shipped index stays as shipped
            try:
                state.save(index.path)
                info["saved"] = str(Path(index.path) / map_file(method, dims))
            except OSError:  # a read-only install (the shipped index): use it, do not keep it
                info["saved"] = None
    return coords, state, info


def draw_map(
    index_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    highlight: Sequence[str | os.PathLike] = (),
    png: Optional[str | os.PathLike] = None,
    method: str = "tsne",
    dims: int = 2,
    seed: int = 0,
    perplexity: float = 30.0,
    refit: bool = False,
    model: Optional[str | os.PathLike] = None,
) -> dict:
    """Draw the map of an index folder to ``out`` (HTML) and ``png`` (default: next to it),
    with ``highlight`` MIDI files embedded and placed on it. Returns what was done."""
    from partita.search.index import Index, embed_queries

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise PartitaError(f"{out}: the map is an HTML page; give -o a name ending in .html")
    _check(method, dims)
    index = Index.load(index_path)
    coords, state, info = map_coordinates(index, method=method, dims=dims, seed=seed, perplexity=perplexity, refit=refit)
    highlights, failures = [], []
    if highlight:
        vecs, kept, failures = embed_queries(index, list(highlight), model=model)
        attribution = None
        try:
            from partita.search.attribute import load_attribution

            attribution = load_attribution(index.path)
        except PartitaError:
            pass
        rows = [index.row_of(i) for i in state.ids]
        ref = index.vectors(rows) if len(rows) else np.zeros((0, index.dim))
        placed = place(state, ref, vecs) if len(vecs) else np.zeros((0, dims))
        verdicts = attribution.attribute(vecs, k=1) if attribution is not None and len(vecs) else [None] * len(vecs)
        from partita.search.reader import attribute_files, load_reader

        readout = load_reader(index.path)
        if readout is not None and len(kept):  # the composer readout partita attribute uses
            read = {r["query"]: r for r in attribute_files(index, readout, kept, k=1, nearest=0)[0]}
            verdicts = [read.get(str(p)) for p in kept]
        for path, c, v in zip(kept, placed, verdicts):
            # A highlighted file that is itself in the index sits where the index has it.
            row = index.row_of(str(Path(path).resolve()))
            note = None if v is None else (f"attributed: {v['verdict']}" + (f" ({v['top'][0]['probability']:.0%})" if v["known"] else ""))
            highlights.append({"name": Path(path).name, "path": str(path), "coords": (coords[row] if row is not None else c).tolist(), "note": note})
    title = f"{Path(index_path).name}: {len(index)} pieces, {method} {dims}-D"
    fig = figure_html(coords, index.pieces, highlights=highlights, title=title)
    write_html(fig, out)
    png = Path(png) if png is not None else out.with_suffix(".png")
    figure_png(coords, index.pieces, png, highlights=highlights, title=title)
    points = [{"id": p["id"], "title": p.get("title"), "label": p.get("label"), "coords": [round(float(v), 4) for v in c]}
              for p, c in zip(index.pieces, coords)]
    info.update(html=str(out), png=str(png), pieces=len(index), highlights=highlights, failures=failures, points=points)
    return info
