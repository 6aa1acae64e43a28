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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
import yaml

from partita.errors import PartitaError
from partita.nn.linear import cpu_bf16_flag


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.1, time_fraction: float = 0.0,
                  warmup_fraction: float | None = None) -> float:
    """Learning-rate multiplier: linear warmup to 1 over ``warmup`` steps, then cosine decay to
    ``min_ratio`` at ``total`` steps (and flat after). With a time budget, ``time_fraction`` (the
    share of it spent) moves the decay along when the clock, not the step count, ends the run.

    With ``warmup_fraction`` the warmup is that share of the run instead of a step count: the run's
    progress is the larger of the share of ``total`` steps done and ``time_fraction`` (whichever
    ends the run first), warmup up to ``warmup_fraction`` of it, the cosine over the rest."""
    if warmup_fraction is not None:
        done = max((step + 1) / max(1, total), time_fraction)
        if done < warmup_fraction:
            return done / warmup_fraction
        progress = min(1.0, (done - warmup_fraction) / max(1e-9, 1.0 - warmup_fraction))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
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
        return warmup_cosine(step, warmup=r.warmup, total=r.max_steps, min_ratio=r.min_lr_ratio, time_fraction=spent,
                             warmup_fraction=r.warmup_fraction)

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
    max_time: Optional[float] = None  # wall seconds of the whole run (data, validation, export), summed over resumes
    batch_size: Optional[int] = None  # examples (songs, windows, crops) per optimizer micro-batch and process
    lr: Optional[float] = None  # peak learning rate
    warmup: Optional[int] = None  # linear warmup steps before the cosine decay
    warmup_fraction: Optional[float] = None  # warmup as a share of the run (steps or time, whichever ends first); replaces warmup
    min_lr_ratio: Optional[float] = None  # the cosine decays to lr * min_lr_ratio
    weight_decay: Optional[float] = None  # AdamW weight decay on matrices
    grad_clip: Optional[float] = None  # gradient norm clipping (0: off)
    accumulate: Optional[int] = None  # micro-batches per optimizer step
    precision: Optional[str] = None  # Lightning precision; None: bf16-mixed where measured faster, else 32-true
    seed: Optional[int] = None
    val_every: Optional[int] = None  # validate every N optimizer steps (and once at the end)
    checkpoint_every: Optional[int] = None  # keep a step-N.ckpt every N steps
    patience: Optional[int] = None  # early stopping: validations without improvement (None: off)
    accelerator: Optional[str] = None  # "cpu", "gpu" or "auto" (a GPU when one is visible)
    devices: Optional[int | str | list] = None  # a count per machine (GPUs, or CPU processes), GPU indices [0, 1], or "auto"
    num_nodes: Optional[int] = None  # machines (torchrun, SLURM)
    strategy: Optional[str] = None  # "auto", "ddp", ...
    resume: bool = False  # continue the run in --out from its last checkpoint, with its settings
    override: bool = False  # with resume: settings given again replace the run's own instead of being an error
    validate_on_stop: bool = False  # on Ctrl-C / SIGTERM: finish (or run) a validation before writing the bundle
    fp16_bundle: bool = False  # store the exported weights in float16
    progress: str = "auto"  # "bar", "lines" (one line every log_every seconds), "none"; auto: bar on a terminal
    log_every: float = 30.0  # seconds between progress lines
    #: when the run began (``time.monotonic()``, set by ``start_run``): the budget counts from there
    started: Optional[float] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.progress, bool):  # progress=True / False as the training functions once took
            self.progress = "auto" if self.progress else "none"
        if isinstance(self.devices, tuple):
            self.devices = list(self.devices)

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
        if self.warmup is not None and self.warmup_fraction is None:
            values["warmup_fraction"] = None  # --warmup N given: steps, not the family's default share
        out = RunConfig(**values)
        out.check()
        return out

    def given(self) -> dict:
        """The fields set (not None, not False): what a user asked for."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "started" and getattr(self, f.name) not in (None, False)}

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
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise PartitaError(f"--warmup-fraction must be at least 0 and below 1, not {self.warmup_fraction}")
        if self.patience is not None and self.patience < 1:
            raise PartitaError(f"--patience must be at least 1, not {self.patience}")
        if self.progress not in ("auto", "bar", "lines", "none"):
            raise PartitaError(f"--progress must be auto, bar, lines or none, not {self.progress!r}")
        if self.accelerator not in (None, "auto", "cpu", "gpu", "cuda"):
            raise PartitaError(f"--accelerator must be cpu, gpu or auto, not {self.accelerator!r}")
        if isinstance(self.devices, list) and self.accelerator == "cpu":
            raise PartitaError(f"--devices {','.join(map(str, self.devices))} names GPUs; on the CPU --devices is a "
                               f"number of processes (e.g. --devices 2)")
        if self.override and not self.resume:
            raise PartitaError("--override changes the settings of a run being resumed: use it with --resume")

    @classmethod
    def from_options(cls, **options) -> "RunConfig":
        """A RunConfig from keyword arguments, with a clear error for a name that is not a field."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unexpected argument(s) {', '.join(unknown)}; run options are {', '.join(sorted(names))}")
        return cls(**options)

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["started"]
        return out


#: Defaults of the fields a family does not set itself.
COMMON_DEFAULTS = {
    "max_steps": 2000, "batch_size": 16, "lr": 1e-3, "warmup": 100, "min_lr_ratio": 0.1, "weight_decay": 0.01,
    "grad_clip": 1.0, "accumulate": 1, "seed": 0, "val_every": 200, "checkpoint_every": 500, "accelerator": "auto",
    "devices": 1, "num_nodes": 1, "strategy": "auto",
}

#: RunConfig fields a resumed run takes as given without calling them a contradiction: where and
#: how it runs, not what it trains (the others come back from the run unless --override).
FREE_ON_RESUME = ("accelerator", "devices", "num_nodes", "strategy", "resume", "override", "validate_on_stop",
                  "fp16_bundle", "progress", "log_every")


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
    """The run's wall clock against ``max_time``: counted from ``started`` (when the run began,
    data loading included) and over resumes (the seconds of earlier invocations come back from the
    checkpoint). Training stops once the time left holds no more than the final validation (the
    last one's duration, or an estimate before the first) and a little for the bundle, so the
    whole run, that validation included, ends on time. ``fraction()`` drives the schedule's decay
    over the time training gets."""

    #: seconds kept for the last checkpoint and the bundle after the final validation
    EXPORT_SECONDS = 1.0
    #: a validation batch against a training step (forward only against forward and backward):
    #: 0.36 and 0.42 measured for the transformer on POP909 and the bundled corpus on a CPU
    VAL_BATCH_PER_STEP = 0.45

    def __init__(self, max_time: float | None, started: float | None = None, stop: "StopOnSignal | None" = None):
        self.max_time, self.stop = max_time, stop
        self.before = 0.0  # seconds spent by earlier (resumed) invocations
        self.started = started if started is not None else time.monotonic()
        self.stopped_by_time = False
        self.validation_seconds: float | None = None  # the last complete validation's duration
        self.step_seconds: float | None = None  # a recent training step's duration
        self._val_start = self._step_start = None

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started

    def reserve(self, trainer=None) -> float:
        """Seconds to keep for the final validation and the bundle."""
        if not self.max_time:
            return 0.0
        val = self.validation_seconds
        if val is None:  # never validated: forward passes over the validation batches, if their number is known
            n = sum(trainer.num_val_batches) if trainer is not None and trainer.num_val_batches else float("inf")
            if not math.isfinite(n):  # not counted yet, or a loader without a length (Lightning counts inf)
                n = _val_batches(trainer)
            val = (n * self.step_seconds * self.VAL_BATCH_PER_STEP if self.step_seconds and math.isfinite(n)
                   else 0.05 * self.max_time)
        return 1.1 * val + self.EXPORT_SECONDS

    def fraction(self) -> float:
        if not self.max_time:
            return 0.0
        return min(1.0, self.elapsed() / max(self.max_time - self.reserve(), 1e-9))

    def on_train_batch_start(self, trainer, *args):
        self._step_start = time.monotonic()

    def on_train_batch_end(self, trainer, *args):
        if self._step_start is not None:
            self.step_seconds = time.monotonic() - self._step_start
        if self.max_time and self.elapsed() + self.reserve(trainer) >= self.max_time:
            self.stopped_by_time = True
            trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module):
        self._val_start = None if trainer.sanity_checking else time.monotonic()

    def on_validation_end(self, trainer, pl_module):
        if self._val_start is not None and not (self.stop is not None and self.stop.validation_cut):
            self.validation_seconds = time.monotonic() - self._val_start
        self._val_start = None

    def state_dict(self):
        return {"seconds": self.elapsed(), "validation_seconds": self.validation_seconds}

    def load_state_dict(self, state):
        self.before = float(state.get("seconds", 0.0))
        self.validation_seconds = state.get("validation_seconds")


def _val_batches(trainer) -> float:
    """Batches of the module's validation loader before Lightning has counted them (it does at
    the first validation; a run without a sanity check has no count until then); inf unknown."""
    try:
        module = trainer.lightning_module
        if hasattr(module, "val_batches"):  # a loader without a length that knows its size
            return float(module.val_batches())
        return float(len(module.val_dataloader()))
    except Exception:  # no module, no loader, or a loader without a length
        return float("inf")


class StopOnSignal(L.Callback):
    """The first Ctrl-C or SIGTERM asks the run to stop after the current step, and cuts short a
    validation under way (its partial figures choose nothing) unless ``validate_on_stop``; the
    bundle is then written from the best checkpoint so far. A second Ctrl-C stops at once
    (last.ckpt is still written)."""

    def __init__(self, validate_on_stop: bool = False):
        self.validate_on_stop = validate_on_stop
        self.signal: str | None = None
        self.validation_cut = False  # the current (or last) validation was cut short
        self._previous: dict = {}

    def _handler(self, signum, frame):
        import signal

        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        what = "validating first" if self.validate_on_stop else "a validation under way is cut short"
        print(f"{self.signal}: stopping after this step and writing the bundle ({what}; Ctrl-C again to stop at once)",
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

    def on_validation_start(self, trainer, pl_module):
        self.validation_cut = False

    def on_validation_batch_end(self, trainer, *args):
        if self.signal is None or trainer.sanity_checking:
            return
        trainer.should_stop = True
        if not self.validate_on_stop:
            # Lightning's evaluation loop ends on StopIteration from a batch's hooks: the
            # validation stops here and the epoch-end hooks still run (on partial figures,
            # which BestWeights and TimeBudget then ignore).
            self.validation_cut = True
            raise StopIteration


class BestWeights(L.Callback):
    """After every validation (during fit and in ``trainer.validate``), keeps the model's weights
    when ``monitor`` improved: in memory and as RUN/checkpoints/best.safetensors + best.json, so a
    resumed run still knows its best. A validation that ``stop`` cut short chooses nothing."""

    def __init__(self, folder: Path, monitor: str, mode: str, stop: "StopOnSignal | None" = None):
        self.folder, self.monitor, self.mode, self.stop = folder, monitor, mode, stop
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
        if trainer.sanity_checking or (self.stop is not None and self.stop.validation_cut):
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
    step, loss, the last validation, items per second and the time left; during a validation, its
    batches so far every ``every`` seconds and one line when it ends."""

    def __init__(self, every: float, max_steps: int, budget: TimeBudget, best: BestWeights,
                 stop: StopOnSignal | None = None):
        self.every, self.max_steps, self.budget, self.best, self.stop = every, max_steps, budget, best, stop
        self.last_print = None
        self.items = 0
        self.window_start = None
        self.val_start = self.val_print = None

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_start = self.val_print = time.monotonic()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        now = time.monotonic()
        if self.val_start is None or now - self.val_print < self.every or not trainer.is_global_zero:
            return
        self.val_print = now
        total = sum(trainer.num_val_batches) if trainer.num_val_batches else float("inf")
        of = f"/{int(total):,}" if math.isfinite(total) else ""
        print(f"validating step {int(trainer.global_step):,}: batch {batch_idx + 1:,}{of}  "
              f"{format_duration(now - self.val_start)} so far  elapsed {format_duration(self.budget.elapsed())}", flush=True)

    def on_validation_end(self, trainer, pl_module):
        if self.val_start is None or not trainer.is_global_zero:
            return
        took = format_duration(time.monotonic() - self.val_start)
        self.val_start = None
        if self.stop is not None and self.stop.validation_cut:
            print(f"validation of step {int(trainer.global_step):,} cut short by {self.stop.signal} after {took}", flush=True)
            return
        value = trainer.callback_metrics.get(self.best.monitor)
        shown = f"{self.best.monitor} {float(value):.4f}" if value is not None else "done"
        print(f"validated step {int(trainer.global_step):,}: {shown} in {took}", flush=True)

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


#: The run's settings in its folder: ``{"run": RunConfig fields, "family": the family's settings,
#: "state": {"steps", "seconds", "stopped"} when an invocation ended}``; --resume reads them.
RUN_FILE = "run.json"


def read_run_file(out: Path) -> dict | None:
    """The settings a run folder's earlier invocation wrote (None for a run without them)."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PartitaError(f"{path}: cannot read the run's settings ({type(e).__name__}); resume needs them") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("run"), dict):
        raise PartitaError(f"{path}: not a partita run file")
    return stored


def write_run_file(out: Path, config: RunConfig, settings: dict | None, state: dict | None = None) -> None:
    from partita.io.files import atomic_write

    atomic_write(Path(out) / RUN_FILE, json.dumps({"run": config.to_dict(), "family": settings or {}, "state": state},
                                                  indent=2, default=str))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if value is None:
        return "not set"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def contradiction(out: Path, clashes: list[tuple[str, Any, Any]], *, fixed: bool = False) -> PartitaError:
    """The one-line error for settings given to ``--resume`` that differ from the run's own:
    ``clashes`` holds (flag, given, the run's)."""
    said = "; ".join(f"{flag} {_shown(given)} (the run's: {_shown(theirs)})" for flag, given, theirs in clashes)
    if fixed:
        return PartitaError(f"{out}: {said}: a resumed run keeps its model; leave the option out, or train a new run "
                            f"into another --out (or from this run's bundle with --init)")
    return PartitaError(f"{out}: {said} contradicts the run being resumed; leave it out (--resume restores the run's "
                        f"settings) or add --override to change it")


def resumed_config(out: Path, config: RunConfig, stored: dict) -> RunConfig:
    """The stored run's configuration with the fields ``config`` gives: those of
    ``FREE_ON_RESUME`` always, the others only with ``--override`` (else a one-line error that
    names them). A run that already ended by its steps or its time needs a larger budget."""
    saved = {k: v for k, v in stored["run"].items() if k in {f.name for f in fields(RunConfig)}}
    given = config.given()
    clashes = [(_flag(k), v, saved.get(k)) for k, v in given.items()
               if k not in FREE_ON_RESUME and k in saved and not _same(v, saved[k])]
    if clashes and not config.override:
        raise contradiction(out, clashes)
    values = {**saved, **{k: v for k, v in given.items() if k in FREE_ON_RESUME or config.override}}
    for name in ("progress", "log_every", "resume", "override", "validate_on_stop", "fp16_bundle"):
        values[name] = getattr(config, name)
    merged = RunConfig(**values)
    state = stored.get("state") or {}
    steps, seconds = int(state.get("steps") or 0), float(state.get("seconds") or 0.0)
    if state.get("stopped") == "max_steps" and merged.max_steps is not None and merged.max_steps <= steps:
        raise PartitaError(f"{out}: the run already ended at its --max-steps {merged.max_steps:,}; "
                           f"add --max-steps N --override (N > {steps:,}) to train it further")
    if state.get("stopped") == "max_time" and merged.max_time is not None and merged.max_time <= seconds + 1:
        raise PartitaError(f"{out}: the run already spent its --max-time {format_duration(merged.max_time)}; "
                           f"add --max-time T --override (T > {format_duration(seconds)}: the run's time so far) "
                           f"to train it further")
    return merged


def resumed_settings(out: Path, given: dict, *, fixed: tuple[str, ...] = (), override: bool = False,
                     flags: dict | None = None) -> dict | None:
    """A family's settings when a run is resumed: the stored ones (``read_run_file``), with the
    ``given`` ones that are not None: one of ``fixed`` (what shapes the model) that differs is an
    error even with ``override``, any other that differs is an error unless ``override`` (and then
    replaces the stored). ``flags`` names the option of a setting (default: ``--name``). None when
    the run folder holds no settings (a run written before they were kept)."""
    stored = read_run_file(out)
    if stored is None:
        return None
    family = dict(stored.get("family") or {})
    flags = flags or {}
    differs = [k for k, v in given.items() if v is not None and k in family and not _same(v, family[k])]
    name = lambda k: flags.get(k, _flag(k))  # noqa: E731
    hard = [(name(k), given[k], family[k]) for k in differs if k in fixed]
    if hard:
        raise contradiction(out, hard, fixed=True)
    if differs and not override:
        raise contradiction(out, [(name(k), given[k], family[k]) for k in differs])
    family.update({k: given[k] for k in differs})
    return family


def resumed_model(out: Path, config: RunConfig, preset: str | None, overrides: dict | None,
                  default: str = "small") -> tuple[str, dict | None]:
    """The preset and the model config (a dict) a resumed run keeps, from its settings: a given
    ``preset`` or ``--set`` field that differs is a one-line error. A fresh run (or one without
    settings) gets ``(preset or default, None)``: the family builds its model from the preset."""
    stored = resumed_settings(out, {"preset": preset}, fixed=("preset",)) if config.resume else None
    if stored is None or "model" not in stored:
        return preset or default, None
    model = stored["model"]
    clashes = [(f"--set {k}", v, model.get(k)) for k, v in (overrides or {}).items() if not _same(v, model.get(k))]
    if clashes:
        raise contradiction(out, clashes, fixed=True)
    return stored.get("preset") or default, model


def start_run(out: str | Path, run_config: RunConfig | None, options: dict, defaults: dict) -> tuple[RunConfig, Path]:
    """What every family does first: the run configuration (``run_config``, or ``RunConfig``
    fields given as keyword ``options``) completed with the family's ``defaults`` (with
    ``resume``: the run's own, see ``resumed_config``), and the run folder checked (nothing to
    resume, or a run already there) before any data is read. The run's clock starts here."""
    started = time.monotonic()
    if run_config is not None and options:
        raise TypeError(f"pass run options in run_config or as keywords, not both ({', '.join(sorted(options))})")
    config = run_config or RunConfig.from_options(**options)
    if config.started is not None:  # the command's clock (process_started), or a family's that read data first
        started = min(started, config.started)
    config.check()
    out = Path(out).expanduser()
    check_run(out, config.resume)
    stored = read_run_file(out) if config.resume else None
    if stored is not None:
        config = resumed_config(out, config, stored)
    config = config.with_defaults(**defaults)
    config.started = started
    return config, out


def process_started() -> float:
    """``time.monotonic()`` at the moment this process started (Linux: from /proc), so that a
    command's time budget counts its start-up and imports too; now where that cannot be read."""
    import os

    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.monotonic() - min(max(0.0, uptime - start), 600.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def _progress_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "bar" if sys.stderr.isatty() and sys.stdout.isatty() else "lines"


def trained_on(trainer) -> str:
    """What a run trains on, in words: "1 GPU (cuda:0 NVIDIA H100)", "2 CPU processes", ..."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    world, nodes = trainer.world_size, trainer.num_nodes
    machines = f" on {nodes} machines" if nodes > 1 else ""
    if isinstance(trainer.accelerator, CUDAAccelerator):
        names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in trainer.device_ids)
        return f"{world} GPU{'s' if world > 1 else ''} ({names}){machines}"
    threads = torch.get_num_threads()
    if world > 1:
        return f"{world} CPU processes ({threads} threads each){machines}"
    return f"the CPU ({threads} thread{'s' if threads > 1 else ''})"


def _accelerator_and_devices(config: RunConfig) -> tuple[str, Any]:
    """``accelerator`` and ``devices`` as Lightning takes them, with a one-line error for a GPU
    that is not there."""
    accelerator = {"cuda": "gpu"}.get(config.accelerator, config.accelerator or "auto")
    devices = config.devices
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator == "gpu" and not gpus:
        raise PartitaError("--accelerator gpu: no GPU is visible to torch here (torch.cuda.is_available() is False); "
                           "use --accelerator cpu or auto")
    if isinstance(devices, list):
        if not gpus:
            raise PartitaError(f"--devices {_shown(devices)} names GPUs, and no GPU is visible here; "
                               f"on the CPU --devices is a number of processes")
        missing = [d for d in devices if not 0 <= d < gpus]
        if missing:
            raise PartitaError(f"--devices {_shown(devices)}: no GPU {_shown(missing)} here (GPUs 0..{gpus - 1})")
        accelerator = "gpu"
    return accelerator, devices


class SayWhere(L.Callback):
    """The run's first line: what trains, on what, how and until when."""

    def __init__(self, card: dict, config: RunConfig, budget: TimeBudget):
        self.card, self.config, self.budget = card, config, budget
        self.where = ""

    def on_train_start(self, trainer, pl_module):
        self.where = trained_on(trainer)
        if not trainer.is_global_zero or self.config.progress == "none":
            return
        c = self.config
        until = [f"step {c.max_steps:,}"] + ([f"{format_duration(c.max_time)} in all"] if c.max_time else [])
        resumed = (f", resumed at step {int(trainer.global_step):,} ({format_duration(self.budget.before)} spent)"
                   if c.resume else "")
        params = self.card.get("parameters")
        print(f"training {self.card.get('family', 'a model')}" + (f" ({params:,} parameters)" if params else "")
              + f" on {self.where}, precision {trainer.precision}, batch {c.batch_size} x {trainer.world_size} "
              f"process{'es' if trainer.world_size > 1 else ''} x {c.accumulate} accumulated, until "
              + " or ".join(until) + resumed, flush=True)


def run(
    make_module: Callable[[RunConfig], L.LightningModule],
    config: RunConfig,
    out: Path,
    *,
    card: dict,
    export: Callable[[L.LightningModule, dict], None],
    callbacks: list | None = None,
    cpu_bf16: bool = False,
    settings: dict | None = None,
) -> dict:
    """Train ``make_module(config)`` under ``config`` into the run folder ``out``; returns the card.

    - stops at ``max_steps``, on early stopping, on the first Ctrl-C / SIGTERM (after the current
      step, cutting a validation under way short unless ``validate_on_stop``), or in time for the
      final validation and the bundle to end within ``max_time`` (the whole run's wall time,
      counted over resumes);
    - validates every ``val_every`` steps and once more at the end (after an interrupt only with
      ``validate_on_stop``) and keeps the weights of the best validation by ``module.monitor``;
    - writes last.ckpt and RUN/run.json (``config`` and the family's ``settings``: ``--resume``
      goes on from them), loads the best weights into the module and calls
      ``export(module, card)`` on the first process, with the card completed by the steps, the
      best step, the validation metrics there, why the run stopped, the seconds it took, what it
      trained on and the run configuration;
    - after Ctrl-C / SIGTERM raises ``TrainingInterrupted`` once the bundle is written.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    out = Path(out).expanduser()
    last = check_run(out, config.resume)
    accelerator, devices = _accelerator_and_devices(config)
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = make_module(config)
    monitor, mode = getattr(module, "monitor", "val/loss"), getattr(module, "monitor_mode", "min")
    stop = StopOnSignal(config.validate_on_stop)
    budget = TimeBudget(config.max_time, config.started, stop)
    best = BestWeights(out / "checkpoints", monitor, mode, stop)
    progress = _progress_mode(config.progress)
    where = SayWhere(card, config, budget)
    own = [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="step-{step}", every_n_train_steps=config.checkpoint_every,
                        save_top_k=-1, save_last=False, auto_insert_metric_name=False),
        budget, best, stop, SaveOnException(last), where,
    ]
    if config.patience:
        own.append(EarlyStopping(monitor=monitor, patience=config.patience, mode=mode))
    if progress == "lines":
        own.append(ProgressLines(config.log_every, config.max_steps, budget, best, stop))
    module.budget = budget
    trainer = L.Trainer(
        default_root_dir=out,
        max_steps=config.max_steps,
        accelerator=accelerator,
        devices=devices,
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
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_run_file(out, config, settings)
    hard_stop = False
    stop.install()
    try:
        try:
            trainer.fit(module, ckpt_path=last if config.resume else None, weights_only=True)
        except SystemExit:  # Lightning turns a KeyboardInterrupt into sys.exit(1) after on_exception
            hard_stop = True
        except BaseException as e:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if not isinstance(e, SIGTERMException):
                raise
            stop.signal = stop.signal or "SIGTERM"
        interrupted = hard_stop or stop.signal is not None or trainer.interrupted
        if not hard_stop:
            validate = config.validate_on_stop if interrupted else True
            if validate and best.last_validated_step != trainer.global_step and trainer.global_step > 0:
                trainer.validate(module, verbose=False, weights_only=True)  # the final weights get their chance to be the best
            if trainer.global_step > 0:
                trainer.save_checkpoint(last)
    except SystemExit:  # a second Ctrl-C during the final validation
        hard_stop = interrupted = True
    finally:
        stop.restore()
    interrupted = interrupted or stop.signal is not None
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
    if stop.validation_cut and not best.best_metrics:
        metrics = {}  # the figures of a validation cut short describe no model
    card = {
        **card,
        "steps": steps,
        "best_step": best.best_step,
        "selected_by": f"{'lowest' if mode == 'min' else 'highest'} {monitor}" if best.best_step is not None else "last step (never validated)",
        "stopped": stopped,
        "train_seconds": round(budget.elapsed(), 1),
        "trained_on": where.where,
        "run": config.to_dict(),
        "metrics": {"valid": metrics, **card.get("metrics", {})},
    }
    card["metrics"]["valid"] = metrics
    if trainer.is_global_zero and steps > 0:
        export(module, card)
        (out / "card.json").write_text(json.dumps(card, indent=2))
    if trainer.is_global_zero:
        write_run_file(out, config, settings, {"steps": steps, "seconds": round(budget.elapsed(), 1), "stopped": stopped})
    if interrupted:
        where = (f"the best checkpoint (step {best.best_step:,}, {monitor} {best.best_value:.4f})"
                 if best.best_step is not None else f"the last step ({steps:,}; not validated yet)")
        message = (f"interrupted at step {steps:,}: bundle written from {where} to {out / 'bundle'}; "
                   f"--resume continues the run" if steps > 0 else "interrupted before the first step: nothing written")
        raise TrainingInterrupted(message)
    return card
