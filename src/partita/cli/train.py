"""``partita train``: train partita's models on a prepared corpus.

Every ``partita train FAMILY`` command takes the same run options (``with_run_options``: one
``RunConfig`` field each: steps, time budget, batch, learning rate, precision, devices, ...) next
to the options of its family.
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, err_console

app = typer.Typer(help="Train models on a prepared corpus.", no_args_is_help=True)

_KW = inspect.Parameter.KEYWORD_ONLY

#: The run options every training command takes: (name, type, typer.Option). None: the family's default.
RUN_OPTIONS = [
    ("max_steps", Optional[int], typer.Option(None, "--max-steps", help="Optimizer steps (default: the family's).")),
    ("max_time", Optional[str], typer.Option(None, "--max-time", help="Wall-time budget of the whole run, e.g. 90s, 30m, 2h, 1h30m: data loading, validation and the bundle included, counted over --resume; training stops in time for the final validation.")),
    ("batch_size", Optional[int], typer.Option(None, "--batch-size", "-b", help="Examples per micro-batch and process (songs, windows, crops).")),
    ("lr", Optional[float], typer.Option(None, "--lr", help="Peak learning rate.")),
    ("warmup", Optional[int], typer.Option(None, "--warmup", help="Linear warmup steps before the cosine decay.")),
    ("warmup_fraction", Optional[float], typer.Option(None, "--warmup-fraction", help="Warmup as a share of the run instead of --warmup steps, e.g. 0.05: of --max-steps or --max-time, whichever ends the run first; the cosine decays over the rest.")),
    ("min_lr_ratio", Optional[float], typer.Option(None, "--min-lr-ratio", help="The cosine decays to lr x this.")),
    ("weight_decay", Optional[float], typer.Option(None, "--weight-decay", help="AdamW weight decay (matrices only).")),
    ("grad_clip", Optional[float], typer.Option(None, "--grad-clip", help="Gradient norm clipping (0: off; default 1).")),
    ("accumulate", Optional[int], typer.Option(None, "--accumulate", help="Gradient accumulation: micro-batches per step.")),
    ("precision", Optional[str], typer.Option(None, "--precision", help="Lightning precision (32-true, bf16-mixed, ...); default: bf16-mixed where measured faster.")),
    ("seed", Optional[int], typer.Option(None, "--seed", help="Random seed (default 0).")),
    ("val_every", Optional[int], typer.Option(None, "--val-every", help="Validate every N steps (and once at the end).")),
    ("checkpoint_every", Optional[int], typer.Option(None, "--checkpoint-every", help="Keep a checkpoint every N steps.")),
    ("patience", Optional[int], typer.Option(None, "--patience", help="Early stopping: validations without improvement.")),
    ("accelerator", Optional[str], typer.Option(None, "--accelerator", help="cpu, gpu or auto (default: a GPU when one is visible).")),
    ("devices", Optional[str], typer.Option(None, "--devices", help="How many devices per machine (GPUs, or CPU processes), GPU indices such as 0,1 (or 1, with a comma: GPU 1 alone), or 'auto'.")),
    ("num_nodes", Optional[int], typer.Option(None, "--num-nodes", help="Machines (with torchrun or SLURM).")),
    ("strategy", Optional[str], typer.Option(None, "--strategy", help="auto, ddp, ...")),
    ("resume", bool, typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, with every setting of the run (model, batch, optimiser, schedule, budget left).")),
    ("override", bool, typer.Option(False, "--override", help="With --resume: options given again replace the run's own (without it, one that differs is an error).")),
    ("validate_on_stop", bool, typer.Option(False, "--validate-on-stop", help="On Ctrl-C / SIGTERM, validate before writing the bundle (default: stop within a step, cutting a validation short).")),
    ("fp16_bundle", bool, typer.Option(False, "--fp16-bundle", help="Store the exported weights in float16.")),
    ("progress", str, typer.Option("auto", "--progress", help="bar, lines (one line every --log-every seconds) or none; auto: a bar on a terminal, lines otherwise.")),
    ("log_every", float, typer.Option(30.0, "--log-every", help="Seconds between progress lines.")),
]


def run_config_from_options(options: dict):
    """A ``RunConfig`` from the command line's run options (durations and device counts parsed)."""
    from partita.train.common import RunConfig, parse_duration, process_started

    values = dict(options)
    if Path(sys.argv[0]).name in ("partita", "__main__.py"):  # the command itself, not a test calling it in-process
        values["started"] = process_started()  # the budget counts the command's start-up and imports
    if values.get("max_time") is not None:
        values["max_time"] = parse_duration(values["max_time"])
    values["devices"] = parse_devices(values.get("devices"))
    config = RunConfig(**values)
    config.check()
    return config


def parse_devices(text: str | None):
    """``--devices`` as Lightning takes it: ``2`` (a count), ``0,1`` or ``1,`` (GPU indices), ``auto``, ``-1`` (all)."""
    from partita.errors import PartitaError

    if text is None:
        return None
    s = str(text).strip()
    if s == "auto":
        return s
    try:
        if "," in s:
            ids = [int(x) for x in s.split(",") if x.strip()]
            if not ids or min(ids) < 0:
                raise ValueError
            return ids
        return int(s)
    except ValueError:
        raise PartitaError(f"--devices takes a count (2), GPU indices (0,1) or auto, not {text!r}") from None


def with_run_options(command):
    """Give a training command every run option; it receives them as ``run_config`` (a RunConfig)."""
    hints = typing.get_type_hints(command)
    own = [p.replace(annotation=hints.get(p.name, p.annotation))
           for p in inspect.signature(command).parameters.values() if p.name != "run_config"]
    common = [inspect.Parameter(name, _KW, default=option, annotation=kind) for name, kind, option in RUN_OPTIONS]
    names = [name for name, _, _ in RUN_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs):
        from partita.train.common import TrainingInterrupted

        run_config = run_config_from_options({name: kwargs.pop(name) for name in names})
        try:
            return command(run_config=run_config, **kwargs)
        except TrainingInterrupted as e:  # the bundle is written: say where, exit 130 (SIGINT's code)
            err_console.print(e.message, markup=False, highlight=False)
            sys.exit(130)

    wrapper.__signature__ = inspect.Signature(own + common)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + common}
    return wrapper


def print_trained(card: dict, bundle: Path, next_step: str) -> None:
    """The closing lines of every training command: what was trained, which step the bundle holds."""
    valid = card["metrics"].get("valid", {})
    best = f"best step {card['best_step']:,} ({card['selected_by']})" if card.get("best_step") is not None else "last step"
    from partita.train.common import format_duration

    where = f" on {card['trained_on']}" if card.get("trained_on") else ""
    took = f" in {format_duration(card['train_seconds'])}" if card.get("train_seconds") is not None else ""
    console.print(
        f"trained {card['parameters']:,} parameters for {card['steps']:,} steps{where}{took} "
        f"(stopped: {card['stopped'].replace('_', ' ')}); "
        f"bundle from the {best}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(valid.items())),
        markup=False, highlight=False,
    )
    console.print(f"bundle: {bundle}  ({next_step})")


@app.command("gpt")
@with_run_options
def gpt_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A prepared, tokenised corpus (partita data prepare, partita data tokenize)."),
    out: Path = typer.Option(Path("runs/gpt"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny, mini (a CPU run of minutes), small (CPU) or base (~100M, GPU); default: chosen from the corpus, the machine and --max-time (said on the first line); a resumed run keeps its own."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of GPTConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set n_layer=8 (repeatable)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per segment (default: the context)."),
    fim: Optional[float] = typer.Option(None, "--fim", help="Fraction of training segments arranged for fill-in-the-middle "
                                        "(infilling, partita infill; default 0); 0.5 is a good start. Validation stays continuation."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this gpt bundle's weights and config "
                                        "(fine-tuning; same tokenizer and labels as --data). --preset is not used; --set may only add "
                                        "bar embeddings (bar_embeddings=true, max_bars, positions_per_bar), which start at zero."),
    accompany: Optional[str] = typer.Option(None, "--accompany", help="GIVEN:WRITTEN track names, like MELODY:PIANO: train to write "
                                            "the second track under the first (partita accompany); --data is then a folder of MIDI files."),
) -> None:
    """Train the music transformer; writes checkpoints, logs and a bundle into --out."""
    from partita.models.gpt import GPTConfig
    from partita.train.common import apply_overrides, command_line
    from partita.train.gpt import train_gpt

    overrides = apply_overrides(GPTConfig, {}, config, set_)
    if accompany is not None:
        from partita.train.accompany import train_accompany

        card = train_accompany(data, out, run_config, tracks=accompany, init=init, preset=preset, overrides=overrides,
                               seq_len=seq_len, command=command_line())
        print_trained(card, out / "bundle", f"partita accompany MELODY.mid --model {out / 'bundle'}")
        return
    card = train_gpt(data, out, run_config, preset=preset, overrides=overrides, seq_len=seq_len, fim=fim, init=init,
                     command=command_line())
    print_trained(card, out / "bundle", f"partita generate --model {out / 'bundle'}")
