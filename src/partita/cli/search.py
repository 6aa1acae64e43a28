"""``partita embed``, ``similar``, ``attribute``, ``map``: thin over ``partita.search``.

``similar`` and ``attribute`` default to an index that ships with the package, so they work right
after install: the piano index (ASAP's train and valid works, FeatNet) when every query is piano
music, else the bundled corpus's (music21's, SiaViT); ``--index piano`` / ``--index bundled`` name
them. ``map`` defaults to the bundled corpus's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, err_console, progress_bar, write_json
from partita.errors import PartitaError


def _choose(index: Optional[Path], queries: list[Path] = (), model: Optional[Path] = None):
    """The index and embedder these queries get (``partita.search.choose_index``), said once."""
    from partita.search import choose_index

    return choose_index(list(queries), index, model=model)


def _splits(values: Optional[list[str]]) -> Optional[list[str]]:
    if not values:
        return None
    out = [s.strip() for v in values for s in v.split(",") if s.strip()]
    bad = [s for s in out if s not in ("train", "valid", "test", "unseen")]
    if bad:
        raise PartitaError(f"--split takes train, valid, test or unseen, not {bad[0]!r}")
    return out


def _report_failures(failures: list, what: str = "skipped") -> None:
    for path, reason in failures[:20]:
        err_console.print(f"{what}: {path}: {reason}", markup=False, highlight=False)
    if len(failures) > 20:
        err_console.print(f"... and {len(failures) - 20} more (see --json)", markup=False, highlight=False)


def _embed_queries(index, queries: list[Path], model: Optional[Path]):
    """Query vectors; every file unusable: the first reason as the one-line error."""
    from partita.search.index import embed_queries

    vecs, kept, failures = embed_queries(index, queries, model=model)
    if not kept:
        if failures:
            path, reason = failures[0]
            more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
            raise PartitaError(f"{path}: {reason}{more}")
        raise PartitaError("no query MIDI files given")
    _report_failures(failures)
    return vecs, kept, failures


def embed(
    inputs: list[Path] = typer.Argument(..., help="MIDI files, folders of MIDI files, or prepared corpus folders."),
    index: Path = typer.Option(..., "--index", "-i", help="Index folder to create, or to add the pieces to."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Embedder bundle or shipped name (default: the index's; a new index: featnet-piano for piano music, else siavit-small)."),
    index_type: str = typer.Option("auto", "--index-type", help="auto (exact up to 50k pieces, HNSW above, IVF from 2M), flat, hnsw or ivf."),
    windows: Optional[int] = typer.Option(None, "--windows", help="Windows averaged per piece (default 8; an existing index keeps its own)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Embedding seed (default 0; an existing index keeps its own)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Windows per model call."),
    label: Optional[str] = typer.Option(None, "--label", help="Label (composer) of every piece given; default: sub-folder name or the corpus's labels."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Prepared corpora: only these splits (repeat or comma-separate: train,valid)."),
    unknown_quantile: Optional[float] = typer.Option(None, "--unknown-quantile", help="'unknown composer' beyond the novelty of this share of held-out pieces by known composers (default 0.95, or the index's own)."),
    paths: bool = typer.Option(True, "--paths/--no-paths", help="Store each piece's file path in the metadata (off for an index you ship)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON."),
) -> None:
    """Embed pieces into a FAISS index folder with a metadata table; label centroids and their
    calibration (for 'partita attribute') are refit after every addition."""
    from partita.search.index import INDEX_FILE, embed_into_index

    if unknown_quantile is not None and not 0.5 <= unknown_quantile <= 1.0:
        raise PartitaError(f"--unknown-quantile must be between 0.5 and 1, not {unknown_quantile}")
    if index_type not in ("auto", "flat", "hnsw", "ivf"):
        raise PartitaError(f"--index-type takes auto, flat, hnsw or ivf, not {index_type!r}")
    with progress_bar("embedding", unit="pieces") as update:
        report = embed_into_index(
            inputs, index, model=model, kind=index_type, windows=windows, seed=seed, batch_size=batch_size,
            label=label, splits=_splits(split), store_paths=paths, unknown_quantile=unknown_quantile, progress=update,
        )
    _report_failures(report.failures)
    from rich.table import Table

    idx = report.index
    table = Table(title=f"Index {index} ({report.choice.reason})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("created" if report.created else "added to", f"{report.added:,} pieces")
    if report.skipped_known:
        table.add_row("already in the index", f"{report.skipped_known:,}")
    table.add_row("could not be embedded", f"{len(report.failures):,}")
    table.add_row("pieces in the index", f"{len(idx):,}")
    table.add_row("index kind", f"{idx.kind} ({(index / INDEX_FILE).stat().st_size / 2**20:.1f} MiB)")
    table.add_row("embedder", f"{idx.model.get('name')} ({idx.model.get('fingerprint')})")
    table.add_row("labels", ", ".join(f"{k} {v}" for k, v in idx.counts("label").items()))
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in idx.counts("split").items()))
    console.print(table)
    from partita.search.attribute import ATTRIBUTION_FILE

    attribution = None
    if (index / ATTRIBUTION_FILE).is_file():
        from partita.search.attribute import load_attribution

        a = load_attribution(index)
        f = a.fitted
        attribution = {"labels": len(a.labels), "temperature": a.temperature, "threshold": a.threshold, **f}
        line = f"attribution: {len(a.labels)} labels, calibrated on {f.get('n_calibration', 0)} pieces ({f.get('calibration')})"
        if "top1" in f:
            line += f", top-1 {f['top1']:.1%} on them"
        console.print(line)
    write_json(json_path, {
        "index": str(index), "choice": report.choice.to_dict(), "created": report.created, "added": report.added, "already_in_index": report.skipped_known,
        "failures": [{"path": p, "reason": r} for p, r in report.failures], "meta": idx.meta(), "attribution": attribution,
    })


def similar(
    queries: list[Path] = typer.Argument(..., help="Query MIDI files."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder, or a shipped one: piano, bundled (default: piano for piano files, else bundled)."),
    k: int = typer.Option(10, "-k", "--top", help="How many similar pieces per query."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Embedder bundle (default: the index's own)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """The pieces of an index most similar to each query (cosine distance: 0 = same direction)."""
    from rich.table import Table

    from partita.search.index import Index

    if k < 1:
        raise PartitaError(f"-k must be at least 1, not {k}")
    choice = _choose(index, queries, model)
    folder = choice.index
    idx = Index.load(folder)
    vecs, kept, failures = _embed_queries(idx, queries, model)
    results = idx.search(vecs, k)
    out = []
    for path, hits in zip(kept, results):
        table = Table(title=f"Most similar to {Path(path).name} ({choice.reason})", title_justify="left")
        for col, just in (("#", "right"), ("distance", "right"), ("title", "left"), ("label", "left"), ("split", "left"), ("id", "left")):
            table.add_column(col, justify=just, overflow="fold")
        for h in hits:
            p = h.piece
            table.add_row(str(h.rank), f"{h.distance:.4f}", str(p.get("title") or ""), str(p.get("label") or ""),
                          str(p.get("split") or ""), str(p.get("id") or ""))
        console.print(table)
        out.append({"query": path, "hits": [h.to_dict() for h in hits]})
    write_json(json_path, {"index": str(folder), "choice": choice.to_dict(), "k": k, "results": out,
                           "failures": [{"path": p, "reason": r} for p, r in failures]})


def attribute(
    queries: list[Path] = typer.Argument(..., help="Query MIDI files."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder, or a shipped one: piano, bundled (default: piano for piano files, else bundled)."),
    k: int = typer.Option(3, "-k", "--top", help="How many composers to list per query."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Embedder bundle (default: the index's own)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """The likely composers of each query with calibrated probabilities, or "unknown composer"
    when it is farther from every known composer than the index's threshold."""
    from rich.table import Table

    from partita.search.attribute import load_attribution
    from partita.search.index import Index

    if k < 1:
        raise PartitaError(f"-k must be at least 1, not {k}")
    choice = _choose(index, queries, model)
    folder = choice.index
    idx = Index.load(folder)
    from partita.search.reader import load_reader

    readout = load_reader(folder)
    if readout is not None:
        return _attribute_with_readout(idx, readout, choice, queries, k, json_path)
    attribution = load_attribution(folder)
    if attribution.model_fingerprint and attribution.model_fingerprint != idx.model.get("fingerprint"):
        raise PartitaError(f"{folder}: attribution.json belongs to another embedder; run 'partita embed' on the index again")
    vecs, kept, failures = _embed_queries(idx, queries, model)
    results = attribution.attribute(vecs, k=k)
    limit = f"unknown beyond novelty {attribution.threshold:.3g}" if attribution.threshold != float("inf") else "never unknown"
    table = Table(title=f"Attribution ({choice.reason}; {len(attribution.labels)} composers, {limit})", title_justify="left")
    table.add_column("file", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("verdict", overflow="fold")
    table.add_column("novelty", justify="right")
    table.add_column(f"top {k} (calibrated probability)", overflow="fold")
    for path, r in zip(kept, results):
        verdict = r["verdict"] if r["known"] else "[bold]unknown composer[/bold]"
        top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top"])
        table.add_row(Path(path).name, verdict, f"{r['novelty']:.3g}", top)
    console.print(table)
    f = attribution.fitted
    console.print(
        f"probabilities: temperature {attribution.temperature:.4g} fit on {f.get('n_calibration', 0)} {f.get('calibration')} pieces; "
        f"unknown: {f.get('threshold_by', '')}"
    )
    write_json(json_path, {
        "index": str(folder), "choice": choice.to_dict(), "k": k, "temperature": attribution.temperature,
        "threshold": attribution.threshold if attribution.threshold != float("inf") else None,
        "fitted": f, "results": [{"query": p, **r} for p, r in zip(kept, results)],
        "failures": [{"path": p, "reason": r} for p, r in failures],
    })


def _attribute_with_readout(idx, readout, choice, queries: list[Path], k: int, json_path: Optional[Path]) -> None:
    """``partita attribute`` with an index's composer readout: calibrated probabilities, the
    length-aware "unknown", and why: the features between the top two composers and their nearest
    pieces in the index."""
    from rich.table import Table

    from partita.search.reader import attribute_files

    files = [f for q in queries for f in (sorted(p for p in Path(q).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
                                          if Path(q).is_dir() else [Path(q)])]
    results, failures = attribute_files(idx, readout, files, k=k)
    if not results:
        if failures:
            raise PartitaError(f"{failures[0][0]}: {failures[0][1]}" + (f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""))
        raise PartitaError("no query MIDI files given")
    _report_failures(failures)
    table = Table(title=f"Attribution ({choice.reason}; {len(readout.labels)} composers, unknown beyond the "
                        f"length-normalised novelty of {readout.fitted.get('alpha', 0.05):.0%} of held-out works)",
                  title_justify="left")
    table.add_column("file", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("verdict", overflow="fold")
    table.add_column("novelty", justify="right")
    table.add_column(f"top {k} (calibrated probability)", overflow="fold")
    table.add_column("why (features toward the top two; their nearest pieces)", overflow="fold")
    for r in results:
        verdict = r["verdict"] if r["known"] else "[bold]unknown composer[/bold]"
        top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top"])
        why = ""
        if r["why"]:
            a, b = r["why"]["between"]
            pulls = "; ".join(f"{f['feature']} ({f['value_sd']:+.1f} sd) -> {f['toward']}" for f in r["why"]["features"][:3])
            near = " | ".join(f"{lab}: " + ", ".join(str(h["title"]) for h in hits[:2]) for lab, hits in r["nearest"].items())
            why = f"{a} over {b}: {pulls}. Nearest: {near}"
        table.add_row(Path(r["query"]).name, verdict, f"{r['novelty']:.3g}/{r['threshold']:.3g}" if r["threshold"] else f"{r['novelty']:.3g}", top, why)
    console.print(table)
    f = readout.fitted
    console.print(f"readout: {len(readout.labels)} composers with >= {f.get('min_works')} works; on held-out works "
                  f"({f.get('held_out')}): top-1 {f.get('top1', 0):.1%}, balanced {f.get('balanced_top1', 0):.1%}, "
                  f"ECE {f.get('ece', 0):.3f}; temperature {readout.temperature:.3g}")
    write_json(json_path, {"index": str(idx.path), "choice": choice.to_dict(), "k": k, "method": "readout",
                           "temperature": readout.temperature, "fitted": f, "results": results,
                           "failures": [{"path": p, "reason": r} for p, r in failures]})


def map_cmd(
    index: Optional[Path] = typer.Argument(None, help="Index folder, or a shipped one: bundled (default), piano."),
    highlight: Optional[list[Path]] = typer.Option(None, "--highlight", "-H", help="MIDI files (or folders) to place on the map and highlight; repeat."),
    out: Path = typer.Option(Path("map.html"), "--out", "-o", help="The interactive page (self-contained HTML)."),
    png: Optional[Path] = typer.Option(None, "--png", help="The PNG picture (default: next to the page, .png)."),
    method: str = typer.Option("tsne", "--method", help="tsne (openTSNE) or pca."),
    dims: int = typer.Option(2, "--dims", help="2 or 3."),
    seed: int = typer.Option(0, "--seed", help="Seed of the map: the same seed draws the same map."),
    perplexity: float = typer.Option(30.0, "--perplexity", help="t-SNE perplexity (lowered for small indexes)."),
    refit: bool = typer.Option(False, "--refit", help="Fit the map again instead of reusing the one stored in the index."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Embedder bundle for --highlight (default: the index's own)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the map's coordinates as JSON."),
) -> None:
    """Draw an index as a 2-D/3-D map (t-SNE or PCA): an interactive page that works offline
    (per-piece and per-composer views; hover shows title and composer) and a PNG."""
    from partita.search.maps import draw_map

    choice = _choose(index, list(highlight or []), model)
    folder = choice.index
    with console.status("drawing the map"):
        info = draw_map(folder, out, highlight=list(highlight or []), png=png, method=method, dims=dims, seed=seed,
                        perplexity=perplexity, refit=refit, model=model)
    _report_failures(info["failures"])
    how = "fitted" if info["fitted"] else f"reused the stored map, {info['placed']} new pieces placed into it"
    console.print(f"{method} {dims}-D map of {info['pieces']:,} pieces of {choice.label} ({how}; {choice.reason}); "
                  f"{len(info['highlights'])} highlighted")
    for h in info["highlights"]:
        console.print(f"  {h['name']}: " + ", ".join(f"{c:.1f}" for c in h["coords"]) + (f"  ({h['note']})" if h.get("note") else ""))
    console.print(f"wrote {info['html']} and {info['png']}")
    write_json(json_path, {**info, "choice": choice.to_dict(), "failures": [{"path": p, "reason": r} for p, r in info["failures"]]})
