"""``partita eval``: honest numbers on held-out pieces, next to baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, write_json
from partita.errors import PartitaError

app = typer.Typer(help="Evaluate models on held-out pieces against baselines.", no_args_is_help=True)


@app.command("gpt")
def gpt_cmd(
    model: Path = typer.Option(..., "--model", help="A GPT bundle (training's RUN/bundle)."),
    data: Path = typer.Option(..., "--data", help="The prepared corpus (tokenized with the model's tokenizer)."),
    split: str = typer.Option("test", "--split", help="Which split to score."),
    batch_size: int = typer.Option(8, "--batch-size", "-b"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Bits per token and per note: the transformer (with and without memory) vs an n-gram."""
    from partita.cli.common import progress_bar
    from partita.evaluate.gpt import evaluate_gpt

    with progress_bar("scoring", unit="tokens") as update:
        results = evaluate_gpt(model, data, split=split, batch_size=batch_size, progress=update)
    table = Table(title=f"{results['split']} split: {results['pieces']} pieces, {results['tokens']:,} tokens, {results['notes']:,} notes", title_justify="left")
    for col in ("model", "bits/token", "bits/note", "bits/token far into pieces"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in results.items():
        if isinstance(r, dict) and "bits_per_token" in r:
            far = r.get("far_bits_per_token")
            table.add_row(name, f"{r['bits_per_token']:.3f}", f"{r['bits_per_note']:.3f}", "" if far is None else f"{far:.3f} ({r['far_tokens']:,} tokens)")
    console.print(table)
    if "spans" in results:  # a model trained for infilling
        sp = results["spans"]
        console.print(f"infilling, {sp['spans']} spans of {sp['span_bars']} bars ({sp['tokens']:,} tokens): "
                      f"{sp['with_future_bits_per_token']:.3f} bits/token with the music after the span, "
                      f"{sp['without_future_bits_per_token']:.3f} without it")
    write_json(json_out, results)


@app.command("continuation")
def continuation_cmd(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A GPT bundle (default: the shipped gpt-piano)."),
    data: Path = typer.Option(..., "--data", help="A prepared corpus; one piece per work of --split is continued."),
    split: str = typer.Option("test", "--split", help="Which split's works to continue."),
    prompt_seconds: float = typer.Option(25.0, "--prompt-seconds", help="The opening given as the prompt (seconds)."),
    seconds: float = typer.Option(15.0, "--seconds", help="Seconds continued and compared."),
    pieces: Optional[int] = typer.Option(None, "--pieces", help="At most this many works (default: all)."),
    n: int = typer.Option(1, "-n", "--num-samples", help="Continuations per piece (their features are averaged)."),
    temperature: float = typer.Option(1.0, "--temperature", "-t"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    no_labels: bool = typer.Option(False, "--no-labels", help="Do not give the model the piece's composer label."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for decoding (default: chosen while decoding)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results (every piece) as JSON here."),
) -> None:
    """Does the model follow its prompt? Continue held-out openings and compare key, density,
    register, polyphony and tempo with the real continuation, next to two baselines."""
    import math

    from partita.cli.common import progress_bar
    from partita.evaluate.continuation import CANDIDATES, evaluate_continuation
    from partita.generation import SamplingConfig

    if model is None:
        from partita.pretrained import GPT_PIANO, bundle_path

        model = bundle_path(GPT_PIANO)
    config = SamplingConfig(temperature=temperature, top_p=top_p, threads=threads).checked()
    with progress_bar("continuing") as update:
        results = evaluate_continuation(model, data, split=split, prompt_seconds=prompt_seconds, seconds=seconds,
                                        max_pieces=pieces, n=n, seed=seed, config=config, use_labels=not no_labels,
                                        progress=lambda done, total, _name: update(done, total))
    s, st = results["summary"], results["settings"]

    def cell(x, fmt="{:.3f}"):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    table = Table(title=f"{st['pieces']} {split} works of {data}: {st['prompt_seconds']:g} s prompts, the next "
                        f"{st['seconds']:g} s", title_justify="left")
    table.add_column("feature")
    for c in CANDIDATES:
        table.add_column(c, justify="right")
    rows = [("pitch-class similarity to the prompt", "pch_similarity_to_prompt", "{:.3f}"),
            ("pitch-class similarity to the real continuation", "pch_similarity_to_real", "{:.3f}")]
    for label, key, fmt in rows:
        table.add_row(label, *[cell(s[c][key], fmt) for c in CANDIDATES])
    for f, unit, fmt in (("density", "notes/s", "{:.2f}"), ("mean_pitch", "MIDI", "{:.1f}"),
                         ("pitch_range", "semitones", "{:.1f}"), ("polyphony", "notes at once", "{:.2f}"),
                         ("ioi", "s between onsets", "{:.3f}")):
        table.add_row(f"{f.replace('_', ' ')} ({unit}), mean", *[cell(s[c][f], fmt) for c in CANDIDATES])
        if f == "mean_pitch":  # a ratio of MIDI numbers means nothing: the distance in semitones
            table.add_row("  mean |difference to real| (semitones)", "",
                          *[cell(s[c][f + "_abs_diff_to_real"], "{:.1f}") for c in CANDIDATES[1:]])
            continue
        table.add_row("  median ratio to real / share within +-30%", "",
                      *[f"{cell(s[c][f + '_ratio_to_real_median'], '{:.2f}')} / {cell(s[c][f + '_within_30pct_of_real'], '{:.0%}')}"
                        for c in CANDIDATES[1:]])
    console.print(table)
    for name, t in results["targets"].items():
        goal = t["goal"]
        goal = f">= {goal:.3f}" if not isinstance(goal, list) else f"in [{goal[0]}, {goal[1]}]"
        console.print(f"target {name}: model {t['model']:.3f}, goal {goal}: {'met' if t['met'] else 'NOT met'}")
    write_json(json_out, results)


@app.command("accompany")
def accompany_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="An accompaniment bundle (partita train gpt --accompany); none: the baselines only. "
                                         "chorale: a harmony bundle (default chorale-harmony)."),
    data: str = typer.Option(..., "--data", help="pop: a POP909 folder (NNN/NNN.mid with chord_midi.txt); chorale: a folder of "
                             "four-part chorales or 'bundled'. The held-out songs (chorales) are scored."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="pop: windows sampled per window, the best kept (partita accompany --candidates)."),
    density: Optional[float] = typer.Option(None, "--density", help="pop: notes a beat to aim at (partita accompany --density)."),
    chord_model: Optional[Path] = typer.Option(None, "--chord-model", help="pop: the chord tagger of the tagged and pop rows (default pop-chords)."),
    unconditioned: str = typer.Option("gpt-piano", "--unconditioned", help="pop: a piano model that never learnt to accompany, continuing the melody's first two bars (a baseline); 'none' leaves it out."),
    style: str = typer.Option("pop", "--style", help="pop (POP909 songs) or chorale (alto, tenor, bass under held-out Bach sopranos)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many held-out songs (default 10) or chorales (default: all)."),
    bars: Optional[int] = typer.Option(32, "--bars", help="The first N bars of every song (0: whole songs)."),
    seed: int = typer.Option(0, "--seed"),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results (per song too) as JSON here."),
) -> None:
    """Chord fit, beats, density, polyphony and register of accompaniments of held-out melodies:
    the chord tagger's and the model's next to the real accompaniment, the rule (diatonic block
    chords) and another song's."""
    from partita.cli.common import progress_bar
    from partita.evaluate.accompany import evaluate_accompany

    if style == "chorale":
        return _chorales(model, data, limit, seed, temperature, json_out)
    if style != "pop":
        raise PartitaError(f"--style must be pop or chorale, not {style!r}")
    options = {k: v for k, v in {"temperature": temperature, "top_p": top_p, "candidates": candidates, "density": density}.items()
               if v is not None}
    with progress_bar("accompanying", unit="songs") as update:
        results = evaluate_accompany(model, data, limit=10 if limit is None else limit, bars=bars or None, seed=seed, progress=update,
                                     unconditioned=None if unconditioned.lower() == "none" else unconditioned,
                                     chord_model=None if chord_model is None else str(chord_model), **options)
    table = Table(title=f"{len(results['songs'])} held-out songs, first {results['bars'] or 'all'} bars", title_justify="left")
    cols = ("chord_fit", "on_beat", "notes_per_beat", "notes_per_beat_ratio", "polyphony", "polyphony_ratio", "below_melody")
    table.add_column("system")
    for col in cols:
        table.add_column(col.replace("_", " "), justify="right")
    for name, row in results["systems"].items():
        table.add_row(name, *("" if row[c] is None else f"{row[c]:.3f}" for c in cols))
    console.print(table)
    write_json(json_out, results)


def _chorales(model, data: str, limit: Optional[int], seed: int, temperature: Optional[float], json_out: Optional[Path]) -> None:
    from partita.cli.common import progress_bar
    from partita.evaluate.accompany import evaluate_chorales

    with progress_bar("harmonizing", unit="chorales") as update:
        results = evaluate_chorales(None if model is None else str(model), data, limit=limit,
                                    seed=seed, temperature=temperature, progress=update)
    table = Table(title=f"{len(results['chorales'])} held-out chorales ({results['beats']} beats), alto, tenor and bass "
                        f"under Bach's soprano; per 100 beats", title_justify="left")
    cols = ("chord_fit", "parallels", "parallel_fifths", "parallel_octaves", "crossing", "out_of_range", "notes_per_beat")
    table.add_column("system")
    for col in cols:
        table.add_column(col.replace("_", " "), justify="right")
    for name, row in results["systems"].items():
        table.add_row({"real": "Bach"}.get(name, name), *("" if row[c] is None else f"{row[c]:.3f}" for c in cols))
    console.print(table)
    write_json(json_out, results)
