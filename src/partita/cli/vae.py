"""``partita vae ...`` (reconstruct, sample, interpolate), ``partita train vae`` and ``partita eval vae``.

Thin over ``partita.generation.vae``, ``partita.train.vae`` and ``partita.evaluate.vae``. Without
``--model`` the commands use the MusicVAE that ships with partita for the window length
(``--bars 2``: musicvae-2bar, ``--bars 16``: musicvae-16bar, hierarchical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, progress_bar, write_json
from partita.cli.evaluate import app as eval_app
from partita.cli.train import app as train_app
from partita.cli.train import print_trained, with_run_options
from partita.errors import PartitaError

app = typer.Typer(
    help="MusicVAE melodies: reconstruct a MIDI melody, sample new ones, interpolate between two.",
    no_args_is_help=True,
)


# --- partita train vae -------------------------------------------------------------------------


@train_app.command("vae")
@with_run_options
def train_vae_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A prepared corpus (partita data prepare)."),
    out: Path = typer.Option(Path("runs/vae"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    bars: int = typer.Option(2, "--bars", help="Window length in 16-step bars (2 and 16 in MusicVAE)."),
    decoder: Optional[str] = typer.Option(None, "--decoder", help="flat or hierarchical (default: flat up to 4 bars, else hierarchical)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny (tests), small (CPU; the default) or base (the paper's sizes, GPU); a resumed run keeps its own."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of MusicVAEConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set z_size=256 (repeatable)."),
    labels: list[str] = typer.Option([], "--labels", "-l", help="Train only on pieces with these labels (repeatable), e.g. -l Essen."),
    transpose: int = typer.Option(5, "--transpose", help="Random transposition of each training window, up to +-N semitones (0: off)."),
    holdout: list[Path] = typer.Option([], "--holdout", help="A prepared corpus whose valid and test windows stay out of training, in any key (repeatable)."),
    segments: Optional[str] = typer.Option(None, "--segments", help="A trained short-window MusicVAE (e.g. musicvae-2bar) that codes each segment; the new hierarchical model learns the sequence of its codes."),
) -> None:
    """Train a MusicVAE on melody windows of a corpus; writes checkpoints, logs and a bundle into --out."""
    from partita.models.musicvae import MusicVAEConfig
    from partita.train.common import apply_overrides, command_line
    from partita.train.vae import train_vae

    overrides = apply_overrides(MusicVAEConfig, {}, config, set_)
    with progress_bar("melody windows") as update:
        card = train_vae(
            data, out, run_config, bars=bars, decoder=decoder, preset=preset, overrides=overrides,
            labels=labels or None, holdout=holdout, transpose=transpose, segments=segments, data_progress=update, command=command_line(),
        )
    console.print(f"{card['decoder']} decoder, {card['bars']} bars, {card['windows']['train']:,} training windows")
    print_trained(card, out / "bundle", f"partita vae sample --model {out / 'bundle'}")


# --- partita vae reconstruct | sample | interpolate ----------------------------------------------


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PartitaError(f"{out}: exists and is not a folder (choose another --out)")


def _write(melodies_or_scores, out: Path, stem: str) -> list[str]:
    from partita.io.midi import save

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, item in enumerate(melodies_or_scores):
        score = item.to_score() if hasattr(item, "to_score") else item
        files.append(str(save(score, out / f"{stem}-{k:03d}.mid")))
    return files


def _notes(item) -> int:
    return item.n_notes if hasattr(item, "n_notes") else int(item.note_num())


@app.command("reconstruct")
def reconstruct_cmd(
    midi: Path = typer.Argument(..., help="A MIDI file with a melody (the track with the most notes is used)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A MusicVAE bundle (default: the shipped one for --bars)."),
    bars: int = typer.Option(2, "--bars", help="Which shipped model without --model: 2 or 16."),
    out: Path = typer.Option(Path("vae-out"), "--out", "-o", help="Folder for the MIDI files."),
    track: Optional[int] = typer.Option(None, "--track", help="Index of the track to read (default: the one with the most notes)."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="Reconstruct only the first N windows."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0: greedy (the model's best guess); > 0 samples."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Encode a melody window by window and decode it again; writes the input line and its reconstruction."""
    from partita.generation.vae import reconstruct
    from partita.io.midi import save

    _check_out(out)
    rec = reconstruct(None if model is None else str(model), str(midi), track=track, max_windows=max_windows,
                      temperature=temperature, seed=seed, bars=bars)
    out.mkdir(parents=True, exist_ok=True)
    stem = midi.stem
    original = save(rec.input_score, out / f"{stem}-input.mid")
    rebuilt = save(rec.score, out / f"{stem}-reconstruction.mid")
    table = Table(title=f"Reconstruction of {midi.name} (track {rec.original.track})", title_justify="left")
    for col in ("file", "windows", "bars", "notes", "step accuracy"):
        table.add_column(col, justify="left" if col == "file" else "right")
    table.add_row(original.name, str(rec.windows), f"{rec.original.bars:g}", str(rec.original.n_notes), "")
    table.add_row(rebuilt.name, str(rec.windows), f"{rec.melody.bars:g}", str(rec.melody.n_notes), f"{rec.accuracy:.3f}")
    console.print(table)
    write_json(json_path, {"input": str(midi), "track": rec.original.track, "windows": rec.windows,
                           "accuracy": rec.accuracy, "files": {"input": str(original), "reconstruction": str(rebuilt)}})


@app.command("sample")
def sample_cmd(
    n: int = typer.Option(8, "-n", "--num-samples", help="How many melodies."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A MusicVAE or tvae bundle (default: the shipped MusicVAE for --bars)."),
    bars: int = typer.Option(2, "--bars", help="Which shipped model without --model: 2 or 16."),
    composer: Optional[str] = typer.Option(None, "--composer", "-c", help="Composer label (tvae bundles only)."),
    out: Path = typer.Option(Path("vae-out"), "--out", "-o", help="Folder for sample-000.mid, ..."),
    temperature: float = typer.Option(0.5, "--temperature", "-t", help="Sampling temperature (0 = greedy)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same melodies."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Sample melodies from the prior of a MusicVAE (or, with a tvae bundle, in a composer's style)."""
    from partita.bundle import load

    _check_out(out)
    if n < 1:
        raise PartitaError(f"-n must be at least 1, got {n}")
    bundle = None
    if model is not None:
        bundle = load(model, ("musicvae", "tvae"))
    if bundle is not None and bundle.family == "tvae":
        from partita.generation.tvae import sample_tvae

        items = sample_tvae(bundle, composer=composer, n=n, seed=seed, temperature=temperature)
    else:
        if composer is not None:
            raise PartitaError("--composer needs a composer-conditioned tvae bundle (--model); a MusicVAE samples without one")
        from partita.generation.vae import sample

        items = sample(bundle, n=n, seed=seed, temperature=temperature, bars=bars)
    files = _write(items, out, "sample")
    table = Table(title=f"Samples in {out}", title_justify="left")
    table.add_column("file")
    table.add_column("notes", justify="right")
    for f, item in zip(files, items):
        table.add_row(Path(f).name, str(_notes(item)))
    console.print(table)
    write_json(json_path, {"model": None if model is None else str(model), "composer": composer, "seed": seed,
                           "temperature": temperature, "files": files, "notes": [_notes(i) for i in items]})


@app.command("interpolate")
def interpolate_cmd(
    a: Path = typer.Argument(..., help="First MIDI file (its first window is used)."),
    b: Path = typer.Argument(..., help="Second MIDI file."),
    steps: int = typer.Option(7, "--steps", help="Melodies between A's and B's reconstructions."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A MusicVAE bundle (default: the shipped one for --bars)."),
    bars: int = typer.Option(2, "--bars", help="Which shipped model without --model: 2 or 16."),
    out: Path = typer.Option(Path("vae-out"), "--out", "-o", help="Folder for interpolation-000.mid, ..."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0: greedy; > 0 samples."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
) -> None:
    """Spherical interpolation in latent space from A to B; writes steps + 2 melodies (A's and B's reconstructions at the ends)."""
    from partita.generation.vae import interpolate, interpolation_frame

    _check_out(out)
    melodies = interpolate(None if model is None else str(model), str(a), str(b), steps, temperature=temperature,
                           seed=seed, bars=bars)
    frame = interpolation_frame(str(a))  # A's tempo and metre
    files = _write([m.to_score(frame=frame) for m in melodies], out, "interpolation")
    table = Table(title=f"Interpolation {a.name} -> {b.name} in {out}", title_justify="left")
    for col in ("file", "t", "notes"):
        table.add_column(col, justify="left" if col == "file" else "right")
    ts = [k / (len(melodies) - 1) for k in range(len(melodies))]
    for f, m, t in zip(files, melodies, ts):
        table.add_row(Path(f).name, f"{t:.3f}", str(m.n_notes))
    console.print(table)
    write_json(json_path, {"a": str(a), "b": str(b), "steps": steps, "t": ts, "files": files})


# --- partita eval vae --------------------------------------------------------------------------


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


@eval_app.command("vae")
def eval_vae_cmd(
    model: list[Path] = typer.Option([], "--model", "-m", help="MusicVAE bundle(s) side by side (repeatable; default: the three shipped)."),
    data: Path = typer.Option(..., "--data", help="The prepared corpus."),
    split: str = typer.Option("test", "--split", help="Which split to score."),
    labels: list[str] = typer.Option([], "--labels", "-l", help="Only these labels (default: the first model's training labels)."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="A seeded random subset of N windows per length."),
    pairs: int = typer.Option(50, "--pairs", help="Interpolation pairs per model (0: skip)."),
    steps: int = typer.Option(7, "--steps", help="Interpolation points between A and B."),
    samples: int = typer.Option(100, "--samples", help="Melodies sampled from the prior per model (0: skip)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Reconstruction accuracy (teacher-forced and sampled) and interpolation quality, next to baselines."""
    from partita.evaluate.vae import evaluate_vae

    if not model:
        from partita.pretrained import MUSICVAE_2BAR, MUSICVAE_16BAR, MUSICVAE_16BAR_FLAT, bundle_path

        model = [bundle_path(MUSICVAE_2BAR), bundle_path(MUSICVAE_16BAR), bundle_path(MUSICVAE_16BAR_FLAT)]
    with progress_bar("evaluating") as update:
        r = evaluate_vae([str(m) for m in model], data, split=split, labels=labels or None, max_windows=max_windows,
                         pairs=pairs, steps=steps, samples=samples, seed=seed, progress=update)
    sizes = ", ".join(f"{b}-bar: {v['test']:,}" for b, v in r["windows"].items())
    table = Table(title=f"Reconstruction accuracy per step, {r['split']} split ({sizes} windows)", title_justify="left",
                  caption="TF: teacher-forced; sampled: greedy from mu; 'ev': only steps whose true event is a note-on/off",
                  caption_justify="left")
    for col in ("model", "TF", "TF ev", "sampled", "sampled ev", "other z", "KL", "dims"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for m in r["models"]:
        tf, s = m["teacher_forced"], m["sampled"]
        table.add_row(f"{m['name']} ({m['bars']}-bar {m['decoder'][:4]})", _pct(tf["accuracy"]), _pct(tf["accuracy_non_hold"]),
                      _pct(s["accuracy"]), _pct(s["accuracy_non_hold"]), _pct(m["sampled_other_code"]["accuracy"]),
                      f"{m['kl_nats']:.1f}", str(m["kl_dims_over_0.1_nats"]))
    short = {"majority class per step": "majority/step", "bigram next event": "bigram"}
    for bl in r["baselines"]:
        cells = [_pct(bl["accuracy"]), _pct(bl["accuracy_non_hold"])]
        row = cells + ["", ""] if bl["compare_with"] == "teacher_forced" else ["", ""] + cells
        table.add_row(f"{short.get(bl['name'], bl['name'])} ({bl['bars']}-bar)", *row, "", "", "")
    console.print(table)
    console.print("other z: sampled accuracy decoding another window's code; dims: latent dimensions over 0.1 nats")
    for m in r["models"]:
        if m["bars"] > 2:
            console.print(f"{m['name']}: sampled accuracy by bar " + " ".join(f"{100 * x:.0f}" for x in m["sampled_by_bar"]))
    for m in r["models"]:
        if "prior_samples" in m:
            p = m["prior_samples"]
            console.print(f"{m['name']}: {p['n']} melodies sampled from the prior, {_pct(p['within_real_statistics'])} "
                          f"within real statistics; {p['notes_per_bar']:.1f} notes per bar (real {p['real_notes_per_bar']:.1f})")
    if r["interpolation"]:
        it = Table(title=f"Interpolation, {r['interpolation'][0]['pairs']} pairs of {r['split']} windows",
                   title_justify="left", caption="distance: share of steps whose sounding pitch differs; monotone: "
                   "Spearman of distance with t; musical: inner points with real-melody statistics; endpoints: "
                   "event accuracy of t=0 and t=1 against A and B", caption_justify="left")
        for col in ("method", "to A, t=0->1", "to B, t=0->1", "monotone A/B", "musical", "endpoints", "change/step"):
            it.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for x in r["interpolation"]:
            da, db = x["distance_to_a"], x["distance_to_b"]
            name = "data crossfade" if x["kind"] == "data crossfade" else x["name"]
            it.add_row(f"{name} ({x['bars']}-bar)", f"{da[0]:.2f}->{da[-1]:.2f}", f"{db[0]:.2f}->{db[-1]:.2f}",
                       f"{x['monotone_a']:+.2f}/{x['monotone_b']:+.2f}", _pct(x["musical_inner"]),
                       _pct(x["endpoint_accuracy"]), f"{x['change_per_step']:.2f}")
        console.print(it)
    write_json(json_out, r)
