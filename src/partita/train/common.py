"""What every training run shares: the schedule, config overrides, and a Lightning Trainer set up
with partita's logging, checkpoint and interrupt conventions.

Run folder layout (``--out RUN``)::

    RUN/checkpoints/   step-N.ckpt every --checkpoint-every steps, last.ckpt (also written on Ctrl-C)
    RUN/logs/          tensorboard/ (tensorboard --logdir RUN/logs) and csv-N/metrics.csv per (resumed) run
    RUN/bundle/        the exported model (config.json, model.safetensors, tokenizer.json, card.json)
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml

from partita.errors import PartitaError


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warmup to 1 over ``warmup`` steps, then cosine decay to
    ``min_ratio`` at ``total`` steps (and flat after)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_optimizer(opt, hp) -> dict:
    """Lightning's optimizer dict: ``opt`` with ``warmup_cosine`` stepped every optimizer step
    (``hp``: the module's hparams with warmup, max_steps and min_lr_ratio)."""
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, warmup=hp.warmup, total=hp.max_steps, min_ratio=hp.min_lr_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def adamw_warmup_cosine(params, hp, *, fused: bool = False) -> dict:
    """AdamW (weight decay ``hp.weight_decay`` on matrices only, betas 0.9/0.95) with warmup + cosine."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return warmup_cosine_optimizer(torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.95), fused=fused), hp)


class ResumableModule(L.LightningModule):
    """The LightningModule base of every family but the transformer (which keeps more state):
    checkpoints carry the batch counter and the random state, so --resume goes on with the same
    batches; AdamW with warmup + cosine unless the family says otherwise."""

    batches_seen = 0

    def on_save_checkpoint(self, checkpoint):
        checkpoint["partita"] = {"batches": self.batches_seen, "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("partita", {})
        self.batches_seen = int(state.get("batches", 0))
        if "rng" in state:
            torch.set_rng_state(state["rng"])

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model.parameters(), self.hparams)


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML reads it: 3 -> int, 0.1 -> float, true -> bool, else a string."""
    return yaml.safe_load(text)


def apply_overrides(config_cls, base: dict, config_file: Path | None, sets: list[str]) -> dict:
    """``base`` updated by a YAML file and then by ``key=value`` pairs; unknown keys are errors."""
    out = dict(base)
    names = {f.name for f in fields(config_cls)}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise PartitaError(f"{config_file}: cannot read the config ({type(e).__name__})") from None
        if not isinstance(loaded, dict):
            raise PartitaError(f"{config_file}: a config file must be a mapping of field: value")
        out.update(loaded)
    for item in sets:
        if "=" not in item:
            raise PartitaError(f"--set takes key=value, not {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    unknown = sorted(set(out) - names)
    if unknown:
        raise PartitaError(f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return out


def check_run(out: Path, resume: bool) -> Path:
    """The run folder's ``last.ckpt``, after checking that ``--resume`` has something to resume and
    that a fresh run does not overwrite an earlier one."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise PartitaError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
    if not resume and (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise PartitaError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    return last


def fit(module, trainer, last: Path, resume: bool) -> None:
    """``trainer.fit`` with partita's Ctrl-C convention: last.ckpt is written (``make_trainer``'s
    callback) and KeyboardInterrupt reaches the caller, which the CLI reports in one line."""
    import signal

    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, ckpt_path=last if resume else None, weights_only=True)
    except SystemExit as e:  # Lightning turns Ctrl-C into sys.exit(1) after saving last.ckpt
        raise KeyboardInterrupt from e
    finally:
        signal.signal(signal.SIGINT, sigint)
    if trainer.interrupted:
        raise KeyboardInterrupt


#: Linux cpuinfo flags of bf16 matrix or dot-product instructions: Intel AMX (Sapphire Rapids
#: and later), AVX-512 BF16 (Cooper Lake, AMD Zen 4 and later). bf16 autocast trains the GPT about
#: 2x faster than fp32 on both (benchmarks/RESULTS.md); without them bf16 is emulated and slower.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flag() -> Optional[str]:
    """The first of ``BF16_CPU_FLAGS`` this CPU has, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def default_precision(cpu_bf16: bool = False) -> str:
    """bf16 autocast on a GPU that supports it; on a CPU only where the family asks for it
    (``cpu_bf16``: measured faster there) and the CPU has bf16 instructions (``cpu_bf16_flag``);
    fp32 elsewhere."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_bf16 and cpu_bf16_flag() else "32-true"


def make_trainer(
    out: Path,
    *,
    max_steps: int,
    val_every: int,
    checkpoint_every: int,
    patience: int | None,
    accumulate: int = 1,
    grad_clip: float = 1.0,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    progress: bool = True,
    log_every: int = 10,
):
    """A Lightning Trainer with TensorBoard + CSV logs, periodic and last checkpoints, a checkpoint
    on Ctrl-C, optional early stopping on ``val/loss``, and ``default_precision()`` unless told."""
    from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    class SaveOnInterrupt(Callback):
        """Ctrl-C (or any exception) mid-training: write last.ckpt so --resume can go on."""

        def on_exception(self, trainer, pl_module, exception):
            if isinstance(exception, KeyboardInterrupt) and trainer.global_step > 0:
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")

    if precision is None:
        precision = default_precision()
    callbacks = [
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="step-{step}",
            every_n_train_steps=checkpoint_every,
            save_top_k=-1,
            save_last=True,
            auto_insert_metric_name=False,
        ),
        SaveOnInterrupt(),
    ]
    if patience:
        callbacks.append(EarlyStopping(monitor="val/loss", patience=patience, mode="min"))
    return L.Trainer(
        default_root_dir=out,
        max_steps=max_steps,
        accelerator="auto",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        gradient_clip_val=grad_clip,
        accumulate_grad_batches=accumulate,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=None,
        num_sanity_val_steps=0,
        # A resumed run writes a new CSV file next to the earlier ones (CSVLogger would erase them).
        logger=[
            TensorBoardLogger(out, name="logs", version="tensorboard"),
            CSVLogger(out, name="logs", version=f"csv-{len(list((out / 'logs').glob('csv-*')))}"),
        ],
        callbacks=callbacks,
        log_every_n_steps=log_every,
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the song streams shard themselves by rank
    )
