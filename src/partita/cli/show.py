"""``partita render``, ``partita plot`` and ``partita eval metrics``: hear, see and measure MIDI files
(thin over ``partita.io.audio``, ``partita.viz.pianoroll`` and ``partita.evaluate.metrics``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, progress_bar, write_json
from partita.cli.evaluate import app as eval_app
from partita.errors import PartitaError


def render(
    midi: Path = typer.Argument(..., help="The MIDI file to render."),
    out: Path = typer.Option(..., "--out", "-o", help="Audio file to write: .wav, .flac (.ogg, .mp3 where libsndfile is installed)."),
    soundfont: Optional[Path] = typer.Option(None, "--soundfont", "-s", help="SoundFont (.sf2 or .sf3) to play with (default: $PARTITA_SOUNDFONT, else one installed on the system)."),
    sample_rate: int = typer.Option(44100, "--sample-rate", "-r", help="Samples per second."),
    mono: bool = typer.Option(False, "--mono", help="One channel instead of two."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Render only the first S seconds."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write what was done as JSON."),
) -> None:
    """Render a MIDI file to audio through a SoundFont (the sustain pedal is applied), in blocks
    written as they are made: any length fits in memory."""
    import time

    from partita.io.audio import find_soundfont, render_file

    font = find_soundfont(soundfont)  # before reading anything: the commonest mistake says so at once
    t0 = time.perf_counter()
    info = render_file(midi, out, soundfont=font, sample_rate=sample_rate, stereo=not mono, seconds=seconds)
    took = time.perf_counter() - t0
    length = info["seconds"]
    result = {
        "midi": str(midi), "out": str(out), "soundfont": str(font), "sample_rate": sample_rate,
        "channels": info["channels"], "seconds": round(length, 3), "render_seconds": round(took, 3),
        "bytes": out.stat().st_size,
    }
    console.print(f"wrote {out}: {length:.1f} s of audio, {info['channels']} channel(s) at {sample_rate} Hz, "
                  f"{result['bytes'] / 1e6:.1f} MB, in {took:.1f} s (SoundFont {font.name})", highlight=False)
    write_json(json_path, result)


def plot(
    midi: Path = typer.Argument(..., help="The MIDI file to draw."),
    out: Path = typer.Option(..., "--out", "-o", help="Picture to write (.png, .svg or .pdf)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title above the plot (default: the file name)."),
    unit: str = typer.Option("beat", "--unit", help="Time axis: beat (quarter notes) or second."),
    start: Optional[float] = typer.Option(None, "--start", help="Draw from this time (in --unit)."),
    end: Optional[float] = typer.Option(None, "--end", help="Draw up to this time (in --unit)."),
    width: int = typer.Option(1200, "--width", help="Width in pixels."),
    height: int = typer.Option(400, "--height", help="Height in pixels."),
) -> None:
    """Draw a pianoroll: velocity as colour, bar lines, one colour per track."""
    from partita.viz.pianoroll import plot_pianoroll

    suffix = out.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise PartitaError(f"{out}: unknown picture format {suffix or '(no suffix)'}; use .png, .svg or .pdf")
    if width < 100 or height < 60:
        raise PartitaError(f"a {width}x{height} pixel plot is too small to read; use at least 100x60")
    fig = plot_pianoroll(midi, title=midi.name if title is None else title, unit=unit, start=start, end=end,
                         figsize=(width / 100, height / 100), dpi=100)
    fig.tight_layout(pad=0.4)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    console.print(f"wrote {out}")


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


@eval_app.command("metrics")
def metrics(
    generated: Path = typer.Argument(..., help="Folder of generated MIDI files (any depth)."),
    reference: Path = typer.Option(..., "--reference", help="A prepared corpus or a folder of MIDI files."),
    split: str = typer.Option("test", "--split", help="Split of a prepared reference corpus (all for every split)."),
    max_pieces: Optional[int] = typer.Option(None, "--max-pieces", help="Use at most N pieces of each set (a seeded random subset)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --max-pieces and of distance subsampling."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write every number as JSON."),
) -> None:
    """Musical metrics of generated pieces against a reference set: per-feature means, and MGEval's
    intra/inter-set distances with KL divergence and overlap area."""
    from rich.table import Table

    from partita.evaluate.metrics import FEATURES, check_source, compare_sets, load_set, summarize_set

    check_source(generated)
    check_source(reference)
    if max_pieces is not None and max_pieces < 2:
        raise PartitaError("--max-pieces must be at least 2 (distances need pairs)")
    with progress_bar("reference") as update:
        ref = load_set(reference, split=split, max_pieces=max_pieces, seed=seed, progress=update)
    with progress_bar("generated") as update:
        gen = load_set(generated, split=None, max_pieces=max_pieces, seed=seed, progress=update)
    for s in (ref, gen):
        if len(s) < 2:
            raise PartitaError(f"{s.source}: {len(s)} usable piece(s), need at least 2 ({len(s.skipped)} skipped)")
    result = compare_sets(ref, gen, seed=seed)
    table = Table(
        title=f"{len(gen)} generated pieces vs {len(ref)} reference pieces"
        + (f" ({split} split)" if (Path(reference) / "corpus.json").exists() else ""),
        title_justify="left",
    )
    for col in ("feature", "reference", "generated", "KL ref", "OA ref", "KL gen", "OA gen"):
        table.add_column(col, justify="left" if col == "feature" else "right", no_wrap=True)
    for name, row in result["features"].items():
        if FEATURES[name] == ():
            r = f"{_fmt(row['reference_mean'], 2)} ± {_fmt(row['reference_std'], 2)}"
            g = f"{_fmt(row['generated_mean'], 2)} ± {_fmt(row['generated_std'], 2)}"
        else:
            r = g = f"({'x'.join(map(str, FEATURES[name]))})"
        table.add_row(name, r, g, _fmt(row["kl_ref"]), _fmt(row["oa_ref"]), _fmt(row["kl_gen"]), _fmt(row["oa_gen"]))
    console.print(table)
    console.print("KL/OA ref: the reference's intra-set distances against the inter-set ones; gen: the generated set's. "
                  "Closer sets: KL near 0, OA near 1.", highlight=False)
    skipped = ref.skipped + gen.skipped
    if skipped:
        console.print(f"skipped {len(skipped)} file(s): " + ", ".join(f"{n} ({r})" for n, r in skipped[:5])
                      + (" ..." if len(skipped) > 5 else ""), highlight=False)
    payload = {
        "generated": str(generated), "reference": str(reference), "split": split, **result,
        "reference_summary": summarize_set(ref), "generated_summary": summarize_set(gen),
        "generated_pieces": {n: {k: (float(v) if not hasattr(v, "shape") or v.shape == () else v.tolist()) for k, v in m.items()}
                             for n, m in zip(gen.names, gen.metrics)},
        "skipped": [{"file": n, "reason": r} for n, r in skipped],
    }
    write_json(json_path, _json_safe(payload))


def _json_safe(x):
    """NaN is not JSON: write null instead."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x
