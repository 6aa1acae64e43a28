"""One training run for every family: ``RunConfig`` (what a run is, apart from the model) and
``run()`` (a Lightning Trainer with partita's budgets, checkpoints, best-model choice, interrupt
handling and progress), plus the schedule and config overrides the families share.

Run folder layout (``--out RUN``)::

    RUN/checkpoints/   step-N.ckpt every --checkpoint-every steps; last.ckpt (at the end, on a time
                       limit, on Ctrl-C / SIGTERM) for --resume; best.safetensors + best.json, the
                       weights of the best validation so far
    RUN/logs/          tensorboard/ (tensorboard --logdir RUN/logs) and csv-N/metrics.csv per (resumed) run
    RUN/bundle/        the exported model from the best validation (config.json, model.safetensors,
                       tokenizer.json, card.json); RUN/card.json is a copy of its card
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
import yaml

from partita.errors import PartitaError
from partita.nn.linear import cpu_bf16_flag


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.1, time_fraction: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup to 1 over ``warmup`` steps, then cosine decay to
    ``min_ratio`` at ``total`` steps (and flat after). With a time budget, ``time_fraction`` (the
    share of it spent) moves the decay along when the clock, not the step count, ends the run."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_optimizer(opt, module) -> dict:
    """Lightning's optimizer dict: ``opt`` with ``warmup_cosine`` stepped every optimizer step
    (warmup, max_steps and min_lr_ratio from the module's ``run_config``; the time budget from the
    ``TimeBudget`` that ``run()`` hands the module as ``module.budget``)."""
    r = module.run_config

    def factor(step: int) -> float:
        budget = getattr(module, "budget", None)
        spent = budget.fraction() if budget is not None else 0.0
        return warmup_cosine(step, warmup=r.warmup, total=r.max_steps, min_ratio=r.min_lr_ratio, time_fraction=spent)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def adamw_warmup_cosine(module, *, fused: bool = False) -> dict:
    """AdamW (weight decay on matrices only, betas 0.9/0.95) with warmup + cosine, for ``module.model``."""
    r = module.run_config
    params = [p for p in module.model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": r.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return warmup_cosine_optimizer(torch.optim.AdamW(groups, lr=r.lr, betas=(0.9, 0.95), fused=fused), module)


class RunModule(L.LightningModule):
    """The base of every family's LightningModule: ``run_config`` is the run's ``RunConfig``
    (lr, warmup, max_steps, batch_size, seed, ...: what ``run()`` trains under), completed with
    the family's ``run_defaults``; the family's own options are its constructor's other arguments
    (its hparams, with the run configuration as ``hparams.run``)."""

    run_defaults: dict = {}

    def __init__(self, run: "RunConfig | dict | None" = None):
        super().__init__()
        run = RunConfig(**run) if isinstance(run, dict) else (run or RunConfig())
        self.run_config = run.with_defaults(**self.run_defaults)

    def save_hyperparameters(self, *args, ignore=("run",), frame=None, logger: bool = True) -> None:
        """Lightning's (the caller's constructor arguments), with the run configuration kept as a
        plain dict: checkpoints load with ``weights_only=True``."""
        super().save_hyperparameters(*args, ignore=list(ignore), frame=frame or inspect.currentframe().f_back,
                                     logger=logger)
        self.hparams["run"] = self.run_config.to_dict()


class ResumableModule(RunModule):
    """The LightningModule base of every family but the transformer (which keeps more state):
    checkpoints carry the batch counter and the random state, so --resume goes on with the same
    batches; AdamW with warmup + cosine unless the family says otherwise.

    ``monitor`` and ``monitor_mode`` name the validation metric that picks the best checkpoint
    (and that early stopping watches); ``items`` names what ``items_in(batch)`` counts for the
    progress lines."""

    batches_seen = 0
    monitor = "val/loss"
    monitor_mode = "min"
    items = "examples"

    def items_in(self, batch) -> int:
        """How many ``items`` one training batch holds (progress lines report their rate)."""
        return int(self.run_config.batch_size)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["partita"] = {"batches": self.batches_seen, "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("partita", {})
        self.batches_seen = int(state.get("batches", 0))
        if "rng" in state:
            torch.set_rng_state(state["rng"])

    def configure_optimizers(self):
        return adamw_warmup_cosine(self)


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


def default_precision(cpu_bf16: bool = False) -> str:
    """bf16 autocast on a GPU that supports it; on a CPU only where the family asks for it
    (``cpu_bf16``: measured faster there) and the CPU has bf16 instructions (``cpu_bf16_flag``);
    fp32 elsewhere."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_bf16 and cpu_bf16_flag() else "32-true"




# --- the run configuration ------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything about a training run that is not the model, the same for every family.

    A field left at None takes the family's default (``train_gpt`` and the others pass theirs to
    ``with_defaults``), then ``COMMON_DEFAULTS``. The command line has one option per field
    (``--max-steps``, ``--max-time 2h``, ``--batch-size``, ...) on every ``partita train`` command.
    """

    max_steps: Optional[int] = None  # optimizer steps
    max_time: Optional[float] = None  # seconds of training, summed over resumes ("30m", "2h" on the command line)
    batch_size: Optional[int] = None  # examples (songs, windows, crops) per optimizer micro-batch and process
    lr: Optional[float] = None  # peak learning rate
    warmup: Optional[int] = None  # linear warmup steps before the cosine decay
    min_lr_ratio: Optional[float] = None  # the cosine decays to lr * min_lr_ratio
    weight_decay: Optional[float] = None  # AdamW weight decay on matrices
    grad_clip: Optional[float] = None  # gradient norm clipping (0: off)
    accumulate: Optional[int] = None  # micro-batches per optimizer step
    precision: Optional[str] = None  # Lightning precision; None: bf16-mixed where measured faster, else 32-true
    seed: Optional[int] = None
    val_every: Optional[int] = None  # validate every N optimizer steps (and once at the end)
    checkpoint_every: Optional[int] = None  # keep a step-N.ckpt every N steps
    patience: Optional[int] = None  # early stopping: validations without improvement (None: off)
    devices: Optional[int | str] = None  # GPUs, or CPU processes, per machine; or "auto"
    num_nodes: Optional[int] = None  # machines (torchrun, SLURM)
    strategy: Optional[str] = None  # "auto", "ddp", ...
    resume: bool = False  # continue the run in --out from its last checkpoint
    fp16_bundle: bool = False  # store the exported weights in float16
    progress: str = "auto"  # "bar", "lines" (one line every log_every seconds), "none"; auto: bar on a terminal
    log_every: float = 30.0  # seconds between progress lines

    def __post_init__(self):
        if isinstance(self.progress, bool):  # progress=True / False as the training functions once took
            self.progress = "auto" if self.progress else "none"

    def with_defaults(self, **family) -> "RunConfig":
        """A copy with every None field set from ``family``, then from ``COMMON_DEFAULTS``."""
        unknown = set(family) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"not RunConfig fields: {', '.join(sorted(unknown))}")
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                value = family.get(f.name, COMMON_DEFAULTS.get(f.name))
            values[f.name] = value
        out = RunConfig(**values)
        out.check()
        return out

    def check(self) -> None:
        """One-line errors for values no run can use."""
        positive = ("max_steps", "batch_size", "accumulate", "val_every", "checkpoint_every", "num_nodes")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PartitaError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.max_time is not None and self.max_time <= 0:
            raise PartitaError(f"--max-time must be positive, not {self.max_time}")
        if self.lr is not None and not self.lr > 0:
            raise PartitaError(f"--lr must be positive, not {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise PartitaError(f"--patience must be at least 1, not {self.patience}")
        if self.progress not in ("auto", "bar", "lines", "none"):
            raise PartitaError(f"--progress must be auto, bar, lines or none, not {self.progress!r}")

    @classmethod
    def from_options(cls, **options) -> "RunConfig":
        """A RunConfig from keyword arguments, with a clear error for a name that is not a field."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unexpected argument(s) {', '.join(unknown)}; run options are {', '.join(sorted(names))}")
        return cls(**options)

    def to_dict(self) -> dict:
        return asdict(self)


#: Defaults of the fields a family does not set itself.
COMMON_DEFAULTS = {
    "max_steps": 2000, "batch_size": 16, "lr": 1e-3, "warmup": 100, "min_lr_ratio": 0.1, "weight_decay": 0.01,
    "grad_clip": 1.0, "accumulate": 1, "seed": 0, "val_every": 200, "checkpoint_every": 500, "devices": 1,
    "num_nodes": 1, "strategy": "auto",
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90``, ``90s``, ``30m``, ``2h``, ``1h30m`` or ``1.5h``."""
    import re

    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise PartitaError(f"cannot read the duration {text!r}: use e.g. 90s, 30m, 2h or 1h30m")
    unit = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(float(a) * unit[b] for a, b in parts))


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the bundle was written from the best checkpoint so far.
    ``message`` is the one line the command prints (it exits with code 130)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- callbacks ----------------------------------------------------------------------------------------


class TimeBudget(L.Callback):
    """Counts training seconds (kept in checkpoints, so a resumed run goes on counting) and stops
    the run once ``max_time`` is spent; ``fraction()`` drives the schedule's decay."""

    def __init__(self, max_time: float | None):
        self.max_time = max_time
        self.before = 0.0  # seconds spent by earlier (resumed) invocations
        self.started: float | None = None
        self.stopped_by_time = False

    def elapsed(self) -> float:
        return self.before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def fraction(self) -> float:
        return min(1.0, self.elapsed() / self.max_time) if self.max_time else 0.0

    def on_train_start(self, trainer, pl_module):
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer, *args):
        if self.max_time and self.elapsed() >= self.max_time:
            self.stopped_by_time = True
            trainer.should_stop = True

    def state_dict(self):
        return {"seconds": self.elapsed()}

    def load_state_dict(self, state):
        self.before = float(state.get("seconds", 0.0))


class StopOnSignal(L.Callback):
    """The first Ctrl-C or SIGTERM asks the run to stop after the current step (the bundle is then
    written from the best checkpoint); a second Ctrl-C stops at once (last.ckpt is still written)."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        import signal

        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping after this step and writing the bundle (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, *args):
        if self.signal is not None:
            trainer.should_stop = True

    def on_validation_batch_end(self, trainer, *args):
        if self.signal is not None and trainer.training:
            trainer.should_stop = True


class BestWeights(L.Callback):
    """After every validation (during fit and in ``trainer.validate``), keeps the model's weights
    when ``monitor`` improved: in memory and as RUN/checkpoints/best.safetensors + best.json, so a
    resumed run still knows its best."""

    def __init__(self, folder: Path, monitor: str, mode: str):
        self.folder, self.monitor, self.mode = folder, monitor, mode
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict = {}
        self.last_validated_step: int | None = None
        self.weights: dict | None = None

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.last_validated_step = int(trainer.global_step)
        value = metrics.get(self.monitor)
        if value is None or not self.better(value):
            return
        self.best_value, self.best_step, self.best_metrics = value, int(trainer.global_step), metrics
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()}
        if trainer.is_global_zero:
            from safetensors.torch import save

            from partita.io.files import atomic_write

            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / "best.safetensors", save({k: v.contiguous() for k, v in self.weights.items()}))
            atomic_write(self.folder / "best.json", json.dumps(self.state_dict(), indent=2))

    def state_dict(self):
        return {"monitor": self.monitor, "mode": self.mode, "value": self.best_value, "step": self.best_step,
                "metrics": self.best_metrics, "last_validated_step": self.last_validated_step}

    def load_state_dict(self, state):
        self.best_value, self.best_step = state.get("value"), state.get("step")
        self.best_metrics = dict(state.get("metrics") or {})
        self.last_validated_step = state.get("last_validated_step")
        path = self.folder / "best.safetensors"
        if self.best_step is not None and path.exists():
            from safetensors.torch import load_file

            self.weights = load_file(str(path))


class ProgressLines(L.Callback):
    """One plain line every ``every`` seconds (and at the first and last step) for logs and pipes:
    step, loss, the last validation, items per second and the time left."""

    def __init__(self, every: float, max_steps: int, budget: TimeBudget, best: BestWeights):
        self.every, self.max_steps, self.budget, self.best = every, max_steps, budget, best
        self.last_print = None
        self.items = 0
        self.window_start = None

    def on_train_start(self, trainer, pl_module):
        self.window_start = time.monotonic()
        self.items = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.items += pl_module.items_in(batch)
        now = time.monotonic()
        step = int(trainer.global_step)
        first = self.last_print is None
        if not (first or now - self.last_print >= self.every or step >= self.max_steps or trainer.should_stop):
            return
        rate = self.items / max(now - self.window_start, 1e-9)
        self.window_start, self.items, self.last_print = now, 0, now
        if not trainer.is_global_zero:
            return
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {step:,}/{self.max_steps:,}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if self.best.best_value is not None:
            last = trainer.callback_metrics.get(self.best.monitor)
            parts.append(f"{self.best.monitor} {float(last):.4f} (best {self.best.best_value:.4f} at step {self.best.best_step:,})"
                         if last is not None else f"best {self.best.monitor} {self.best.best_value:.4f}")
        parts.append(f"{rate:,.0f} {pl_module.items}/s")
        elapsed = self.budget.elapsed()
        parts.append(f"elapsed {format_duration(elapsed)}")
        done = step / max(self.max_steps, 1)
        left = [elapsed * (1 - done) / done] if done > 0 else []
        if self.budget.max_time:
            left.append(self.budget.max_time - elapsed)
        if left:
            parts.append(f"ETA {format_duration(min(left))}")
        print("  ".join(parts), flush=True)


class SaveOnException(L.Callback):
    """A crash or a second Ctrl-C mid-training still writes last.ckpt, so --resume can go on."""

    def __init__(self, last: Path):
        self.last = last

    def on_exception(self, trainer, pl_module, exception):
        if trainer.global_step > 0:
            trainer.save_checkpoint(self.last)


# --- the run ----------------------------------------------------------------------------------------


def quiet_lightning() -> None:
    """Silence Lightning's advertising tips, hardware banners and known-harmless warnings."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector",
                 "lightning.pytorch.trainer.connectors.signal_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        r".*does not have many workers.*",
        r".*IterableDataset.*has `__len__` defined.*",
        r".*Your `IterableDataset` has `__len__` defined.*",
        r".*The number of training batches .* is smaller than the logging interval.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*is an invalid version and will not be supported.*",
        r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*LeafSpec.*is deprecated.*",
        r".*torch.jit.*deprecated.*",
        r".*You called `self.log\(.*\)` .* but the value needs to be floating.*",
        r".*Precision bf16-mixed is not supported by the model summary.*",
        r".*The `srun` command is available on your system but is not used.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def command_line() -> str:
    """The command that started this process, for a bundle's card."""
    import shlex

    return "partita " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def check_run(out: Path, resume: bool) -> Path:
    """The run folder's ``last.ckpt``, after checking that ``--resume`` has something to resume and
    that a fresh run does not overwrite an earlier one."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise PartitaError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
    if not resume and (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise PartitaError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    return last


def start_run(out: str | Path, run_config: RunConfig | None, options: dict, defaults: dict) -> tuple[RunConfig, Path]:
    """What every family does first: the run configuration (``run_config``, or ``RunConfig``
    fields given as keyword ``options``) completed with the family's ``defaults``, and the run
    folder checked (nothing to resume, or a run already there) before any data is read."""
    if run_config is not None and options:
        raise TypeError(f"pass run options in run_config or as keywords, not both ({', '.join(sorted(options))})")
    config = (run_config or RunConfig.from_options(**options)).with_defaults(**defaults)
    out = Path(out).expanduser()
    check_run(out, config.resume)
    return config, out


def _progress_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "bar" if sys.stderr.isatty() and sys.stdout.isatty() else "lines"


def run(
    make_module: Callable[[RunConfig], L.LightningModule],
    config: RunConfig,
    out: Path,
    *,
    card: dict,
    export: Callable[[L.LightningModule, dict], None],
    callbacks: list | None = None,
    cpu_bf16: bool = False,
) -> dict:
    """Train ``make_module(config)`` under ``config`` into the run folder ``out``; returns the card.

    - stops at ``max_steps``, at ``max_time`` (counted over resumes), on early stopping, or on the
      first Ctrl-C / SIGTERM (after the current step);
    - validates every ``val_every`` steps and once more at the end (not after an interrupt) and
      keeps the weights of the best validation by ``module.monitor``;
    - writes last.ckpt (``--resume`` goes on from it), loads the best weights into the module and
      calls ``export(module, card)`` on the first process, with the card completed by the steps,
      the best step, the validation metrics there, why the run stopped and the run configuration;
    - after Ctrl-C / SIGTERM raises ``TrainingInterrupted`` once the bundle is written.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    out = Path(out).expanduser()
    last = check_run(out, config.resume)
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = make_module(config)
    monitor, mode = getattr(module, "monitor", "val/loss"), getattr(module, "monitor_mode", "min")
    budget = TimeBudget(config.max_time)
    best = BestWeights(out / "checkpoints", monitor, mode)
    stop = StopOnSignal()
    progress = _progress_mode(config.progress)
    own = [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="step-{step}", every_n_train_steps=config.checkpoint_every,
                        save_top_k=-1, save_last=False, auto_insert_metric_name=False),
        budget, best, stop, SaveOnException(last),
    ]
    if config.patience:
        own.append(EarlyStopping(monitor=monitor, patience=config.patience, mode=mode))
    if progress == "lines":
        own.append(ProgressLines(config.log_every, config.max_steps, budget, best))
    module.budget = budget
    trainer = L.Trainer(
        default_root_dir=out,
        max_steps=config.max_steps,
        accelerator="auto",
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision or default_precision(cpu_bf16=cpu_bf16),
        gradient_clip_val=config.grad_clip or None,
        accumulate_grad_batches=config.accumulate,
        val_check_interval=config.val_every * config.accumulate,
        check_val_every_n_epoch=None,
        limit_val_batches=None,
        num_sanity_val_steps=0,
        # A resumed run writes a new CSV file next to the earlier ones (CSVLogger would erase them).
        logger=[
            TensorBoardLogger(out, name="logs", version="tensorboard"),
            CSVLogger(out, name="logs", version=f"csv-{len(list((out / 'logs').glob('csv-*')))}"),
        ],
        callbacks=own + list(callbacks or []),
        log_every_n_steps=min(10, config.val_every),
        enable_progress_bar=progress == "bar",
        enable_model_summary=False,
        use_distributed_sampler=False,  # the families' samplers shard themselves by rank
    )
    hard_stop = False
    stop.install()
    try:
        trainer.fit(module, ckpt_path=last if config.resume else None, weights_only=True)
    except SystemExit:  # Lightning turns a KeyboardInterrupt into sys.exit(1) after on_exception
        hard_stop = True
    except BaseException as e:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(e, SIGTERMException):
            raise
        stop.signal = stop.signal or "SIGTERM"
    finally:
        stop.restore()
    interrupted = hard_stop or stop.signal is not None or trainer.interrupted
    if not hard_stop:
        if not interrupted and best.last_validated_step != trainer.global_step and trainer.global_step > 0:
            trainer.validate(module, verbose=False, weights_only=True)  # the final weights get their chance to be the best
        if trainer.global_step > 0:
            trainer.save_checkpoint(last)
    steps = int(trainer.global_step)
    if best.weights is not None:
        module.model.load_state_dict(best.weights)
    if interrupted:
        stopped = "interrupted"
    elif budget.stopped_by_time:
        stopped = "max_time"
    elif steps < config.max_steps:
        stopped = "early_stopping"
    else:
        stopped = "max_steps"
    metrics = best.best_metrics or {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    card = {
        **card,
        "steps": steps,
        "best_step": best.best_step,
        "selected_by": f"{'lowest' if mode == 'min' else 'highest'} {monitor}" if best.best_step is not None else "last step (never validated)",
        "stopped": stopped,
        "train_seconds": round(budget.elapsed(), 1),
        "run": config.to_dict(),
        "metrics": {"valid": metrics, **card.get("metrics", {})},
    }
    card["metrics"]["valid"] = metrics
    if trainer.is_global_zero and steps > 0:
        export(module, card)
        (out / "card.json").write_text(json.dumps(card, indent=2))
    if interrupted:
        where = (f"the best checkpoint (step {best.best_step:,}, {monitor} {best.best_value:.4f})"
                 if best.best_step is not None else f"the last step ({steps:,}; not validated yet)")
        message = (f"interrupted at step {steps:,}: bundle written from {where} to {out / 'bundle'}; "
                   f"--resume continues the run" if steps > 0 else "interrupted before the first step: nothing written")
        raise TrainingInterrupted(message)
    return card
