"""``partita train``: train partita's models on a prepared corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console

app = typer.Typer(help="Train models on a prepared corpus.", no_args_is_help=True)


@app.command("gpt")
def gpt_cmd(
    data: Path = typer.Option(..., "--data", help="A prepared corpus (partita data prepare)."),
    out: Path = typer.Option(Path("runs/gpt"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    preset: str = typer.Option("small", "--preset", help="tiny, small (CPU) or base (~100M, GPU)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of GPTConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set n_layer=8 (repeatable)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Songs streamed side by side per process."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per segment (default: the context)."),
    max_steps: int = typer.Option(2000, "--max-steps", help="Optimizer steps."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak learning rate."),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    warmup: int = typer.Option(100, "--warmup", help="Linear warmup steps before the cosine decay."),
    accumulate: int = typer.Option(1, "--accumulate", help="Gradient accumulation (micro-batches per step)."),
    grad_clip: float = typer.Option(1.0, "--grad-clip"),
    val_every: int = typer.Option(200, "--val-every", help="Validate every N steps."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Checkpoint every N steps."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping: validations without improvement."),
    devices: str = typer.Option("1", "--devices", help="Devices per machine (GPUs, or CPU processes), or 'auto'."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines (with torchrun or SLURM)."),
    strategy: str = typer.Option("auto", "--strategy", help="auto, ddp, ..."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Default: bf16-mixed on a GPU and on a CPU with bf16 instructions (AMX or AVX-512 BF16), else 32-true."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    fp16: bool = typer.Option(False, "--fp16-bundle", help="Store the exported weights in float16."),
) -> None:
    """Train the music transformer; writes checkpoints, logs and a bundle into --out."""
    from partita.models.gpt import GPTConfig
    from partita.train.common import apply_overrides
    from partita.train.gpt import command_line, train_gpt

    overrides = apply_overrides(GPTConfig, {}, config, set_)
    card = train_gpt(
        data,
        out,
        preset=preset,
        overrides=overrides,
        batch_size=batch_size,
        seq_len=seq_len,
        max_steps=max_steps,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        accumulate=accumulate,
        grad_clip=grad_clip,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        patience=patience,
        devices=int(devices) if devices.isdigit() else devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        seed=seed,
        resume=resume,
        command=command_line(),
        fp16_bundle=fp16,
    )
    valid = card["metrics"]["valid"]
    console.print(
        f"trained {card['parameters']:,} parameters for {card['steps']} steps; "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(valid.items()))
    )
    console.print(f"bundle: {out / 'bundle'}  (partita generate --model {out / 'bundle'})")
