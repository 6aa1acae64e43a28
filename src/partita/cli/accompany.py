"""``partita accompany``: write an accompaniment under a melody (thin over ``partita.generation.accompany``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, progress_bar, write_json
from partita.cli.sampling import sampling_options
from partita.cli.train import app as train_app, print_trained, with_run_options
from partita.errors import PartitaError


@sampling_options(exclude=("bars", "seconds", "max_new_tokens", "allow_early_end", "programs", "max_pause"))
def accompany(
    file: Path = typer.Argument(..., help="The MIDI file with the melody."),
    style: str = typer.Option("pop", "--style", help="pop (the chords a tagger learnt from POP909, played as a piano part; with --model, a transformer's piano part on them), folk (diatonic chords by a rule) or chorale (alto, tenor, bass under a soprano)."),
    melody_track: Optional[int] = typer.Option(None, "--melody-track", help="The melody's track, 1-based (default: a track named MELODY, else the highest track of single notes)."),
    chords: Optional[str] = typer.Option(None, "--chords", help="Impose a progression, one chord per bar, repeated: --chords \"C G Am F\"."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="How the chords are played (pop without --model, folk): block, broken (one note a beat, the bass first) or arpeggio (a bass and eighths above it, held as with the pedal); default arpeggio for pop, block for folk."),
    density: Optional[float] = typer.Option(None, "--density", help="Notes a beat to aim at: the chords are struck (or move) that often; with --model, of --candidates windows the one nearest it is kept."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="pop with --model: windows sampled per window; the one that agrees best with the chords (and --density) is kept (default 1, 4 with --density)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="pop: a transformer trained with 'partita train gpt --accompany MELODY:PIANO' to write the piano part (its notes are moved to the chords); chorale: a harmony bundle (default chorale-harmony)."),
    chord_model: Optional[Path] = typer.Option(None, "--chord-model", help="pop: a chord tagger bundle (partita train chords; default pop-chords)."),
    n: int = typer.Option(1, "-n", "--num-samples", help="How many versions to write (version i uses seed + i)."),
    out: Path = typer.Option(Path("accompanied"), "--out", "-o", help="Folder for FILE-accompany-000.mid, ..."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, ..."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    sampling: dict = None,
) -> None:
    """Write an accompaniment under the melody of a MIDI file: every note of the file is kept as it
    was, the accompaniment is a new track."""
    from partita.generation.accompany import accompany as run_accompany
    from partita.io.midi import save

    if out.exists() and not out.is_dir():
        raise PartitaError(f"{out}: exists and is not a folder (choose another --out)")
    with progress_bar("accompanying", unit="windows") as update:
        results = run_accompany(str(file), style=style, model=None if model is None else str(model),
                                melody_track=melody_track, chords=chords, n=n, device=device, progress=update, pattern=pattern,
                                density=density, candidates=candidates,
                                chord_model=None if chord_model is None else str(chord_model), **sampling)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        path = save(r.score, out / f"{file.stem}-accompany-{r.index:03d}.mid")
        added = ", ".join(f"{name} ({k} notes)" for name, k in r.added.items())
        how = {"model": "the model's notes on the tagged chords" if chords is None else "the model's notes on your chords",
               "chords": f"the tagged chords, {r.pattern}", "rule": f"the rule's chords, {r.pattern}"}.get(r.method, r.method)
        if r.method == "rule" and chords is not None:
            how = f"your chords, {r.pattern}"
        console.print(f"{path}: melody = track {r.melody_track + 1} {r.melody_name}; added {added} over {r.bars} bars "
                      f"({r.style}: {how})", markup=False, highlight=False)
        rows.append({"file": str(path), "melody_track": r.melody_track + 1, "melody_name": r.melody_name,
                     "added": r.added, "bars": r.bars, "style": r.style, "method": r.method, "pattern": r.pattern, "tokens": r.tokens,
                     "stops": r.stops})
    write_json(json_path, {"file": str(file), "model": None if model is None else str(model), "samples": rows})


@train_app.command("chorale")
def train_chorale(
    data: str = typer.Option("bundled", "--data", help="A folder of four-part chorales (MIDI, a track a voice), or 'bundled' for music21's Bach chorales."),
    out: Path = typer.Option(Path("runs/chorale-harmony"), "--out", "-o", help="The bundle folder to write."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Score the held-out chorales into the card (partita eval accompany --style chorale)."),
) -> None:
    """Count a chorale harmonizer (partita accompany --style chorale) from four-part chorales: the
    chords Bach follows a chord with, the soprano tones and basses of each, the voices' ranges. The
    tunes of the held-out split are left out."""
    from partita.bundle import save_bundle
    from partita.generation.chorale import chorale_files, split_chorales, train_harmony

    with progress_bar("reading", unit="files") as update:
        files = chorale_files(data, progress=update)
    splits, skipped = split_chorales(files)
    with progress_bar("counting", unit="chorales") as update:
        model, report = train_harmony(splits["train"], progress=update)
    card = {"family": "harmony", "data": "music21's Bach chorales (music21 corpus, BSD-3 licence; the music is public domain)"
            if data == "bundled" else str(data), "command": f"partita train chorale --data {data} --out {out}", "split": "by tune: the first 12 soprano intervals, 15% held out",
            "train_chorales": report["chorales"], "test_chorales": len(splits["test"]), "skipped": len(skipped),
            "beats": report["beats"], "chords": report["chords"], "modes": report["modes"]}
    save_bundle(model, out, card=card, generation={"temperature": 0.5})
    if evaluate:
        from partita.evaluate.accompany import evaluate_chorales

        with progress_bar("harmonizing held-out chorales", unit="chorales") as update:
            results = evaluate_chorales(str(out), data, progress=update)
        card["metrics"] = {"test": {"chorales": len(results["chorales"]), "beats": results["beats"], "systems": results["systems"]}}
        save_bundle(model, out, card=card, generation={"temperature": 0.5})
    console.print(f"{out}: {report['chorales']} chorales ({report['beats']} beats, {report['chords']} chords), "
                  f"{len(splits['test'])} held out, {len(skipped)} skipped (not four voices)", markup=False, highlight=False)


@train_app.command("chords")
@with_run_options
def train_chords_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A folder of songs with chord annotations in POP909's layout (NNN/NNN.mid with NNN/chord_midi.txt), such as a copy of POP909."),
    out: Path = typer.Option(Path("runs/chords"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set d_hidden=64 (repeatable)."),
) -> None:
    """Train the chord tagger (partita accompany --style pop): the chord of every beat of a melody,
    from songs with chord annotations; the songs ending in 9 are held out and scored into the card."""
    from partita.models.chords import ChordTaggerConfig
    from partita.train.chords import train_chords
    from partita.train.common import apply_overrides, command_line

    overrides = apply_overrides(ChordTaggerConfig, {}, None, set_)
    with progress_bar("reading songs", unit="songs") as update:
        card = train_chords(data, out, run_config, overrides=overrides, command=command_line(), progress=update)
    test = card["metrics"].get("test")
    if test:
        console.print(f"held-out songs: {test['songs']} ({test['beats']:,} beats): chord fit {test['tagger_fit']:.3f} "
                      f"(the rule {test['rule_fit']:.3f}), exact chord {test['tagger_exact']:.3f}", markup=False, highlight=False)
    print_trained(card, out / "bundle", f"partita accompany MELODY.mid --chord-model {out / 'bundle'}")
