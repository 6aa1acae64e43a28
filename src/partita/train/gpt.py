"""Training the music transformer (``partita train gpt``) with Lightning.

Data: the corpus's token streams (``partita data tokenize``; a one-line error when missing),
played as contiguous batches (``partita.data.streams``): each row carries one song from segment
to segment, so XL and kNN memories see the song's past; a row's memories are cleared when its
song ends. Validation plays every validation piece once, from fresh memories, and reports
bits per token and bits per note (notes counted in the decoded validation pieces).

Optimisation: AdamW (weight decay on matrices only), linear warmup then cosine decay, gradient
clipping and accumulation; bf16 autocast on a GPU. Any number of GPUs or machines through
Lightning's DDP (each process streams its own rows). A resumed run restores weights, optimizer,
schedule, random state, the position of every row in its song and the memories, so it ends
exactly where an uninterrupted run would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.data.streams import IGNORE, SongData, SongStream
from partita.represent.tokens import token_streams
from partita.errors import PartitaError
from partita.models.gpt import GPT, GPTConfig
from partita.train.common import RunConfig, RunModule, adamw_warmup_cosine, resumed_settings, run, start_run

LN2 = float(np.log(2.0))


# --- the Lightning module ----------------------------------------------------------------------


def _memory_state(xl, knn) -> dict:
    """Memories as plain tensors and lists (safe for ``torch.load(weights_only=True)``)."""
    state: dict = {}
    if xl is not None:
        state["xl"] = {"k": list(xl.k), "v": list(xl.v), "valid": xl.valid, "next_position": xl.next_position}
    if knn is not None:
        state["knn"] = {"keys": list(knn.keys), "values": list(knn.values)}
    return state


#: ``RunConfig`` defaults of the transformer (bf16 autocast on CPUs with bf16 instructions too).
RUN_DEFAULTS = dict(batch_size=16, max_steps=2000, lr=3e-4, weight_decay=0.1, warmup=100, min_lr_ratio=0.1,
                    val_every=200, checkpoint_every=500)


#: The run defaults of a fresh run from each preset, on top of ``RUN_DEFAULTS`` (a run from
#: ``--init`` or a resumed one keeps ``RUN_DEFAULTS`` / its own). The warmup and the cosine are
#: shares of the run (``warmup_fraction``: of --max-steps or --max-time, whichever ends it first),
#: so a 10-minute run on a CPU reaches its peak learning rate and decays to its end; ``small``
#: takes 8 songs a step at 1e-3 (measured on a CPU to beat the 5-gram in 10 minutes: RESULTS.md
#: "Training in a budget"); ``base`` the GPT-2-like 16 x 3e-4 of a GPU run.
PRESET_RUN_DEFAULTS: dict[str, dict] = {
    "tiny": dict(batch_size=16, lr=1e-3, warmup_fraction=0.1),
    "mini": dict(batch_size=8, lr=1e-3, warmup_fraction=0.1),
    "small": dict(batch_size=8, lr=1e-3, warmup_fraction=0.1),
    "base": dict(batch_size=16, lr=3e-4, warmup_fraction=0.05),
}

#: Training tokens from which ``choose_preset`` takes ``base`` on a GPU (~100M parameters want
#: tens of millions of tokens; below that ``small`` overfits less and trains faster), and below
#: which it takes ``tiny`` (a corpus this small is a test or a toy: the small model memorises it).
BASE_FROM_TOKENS = 50_000_000
TINY_BELOW_TOKENS = 20_000

#: A fresh run with a --max-time under this (and no --val-every) validates once, at its end: on a
#: CPU one validation of a corpus such as POP909's (80 songs, ~600k tokens) takes 2-5 minutes,
#: which a 10-minute run cannot spend twice.
SHORT_RUN_SECONDS = 3600.0
#: ... and validates on whole validation songs of at most this many tokens in all (the same songs
#: at every validation; ``validation_pieces``): ~25 batches of 8 x 512, under a minute on a CPU.
SHORT_RUN_VAL_TOKENS = 100_000


def validation_pieces(streams, pieces: list[int], max_tokens: int | None) -> list[int]:
    """Whole pieces of ``pieces`` (in a fixed, seeded order) up to ``max_tokens`` tokens in all,
    at least one; every piece when ``max_tokens`` is None or they all fit. Returned in the
    order of ``pieces``."""
    if not max_tokens or not pieces:
        return list(pieces)
    lengths = np.asarray([int(streams.lengths[p]) for p in pieces])
    if lengths.sum() <= max_tokens:
        return list(pieces)
    order = np.random.default_rng(0).permutation(len(pieces))
    keep, total = [], 0
    for k in order:
        if keep and total + lengths[k] > max_tokens:
            continue
        keep.append(int(k))
        total += int(lengths[k])
    return [pieces[k] for k in sorted(keep)]


def choose_preset(train_tokens: int, *, gpu: bool, max_time: float | None = None) -> tuple[str, str]:
    """The preset of a run that names none, from the corpus's training tokens, the machine and
    the time budget, with the reason in words (the run prints it)."""
    size = f"{train_tokens:,} training tokens"
    if train_tokens < TINY_BELOW_TOKENS:
        return "tiny", f"{size} (under {TINY_BELOW_TOKENS:,}: the small model would memorise them)"
    if gpu and train_tokens >= BASE_FROM_TOKENS:
        return "base", f"{size} and a GPU"
    if gpu:
        return "small", f"{size} (base wants {BASE_FROM_TOKENS:,} or more, even on a GPU)"
    if max_time is not None and max_time < SHORT_RUN_SECONDS:
        return "mini", (f"{size} on a CPU in a budget under {SHORT_RUN_SECONDS / 3600:.0f}h "
                        f"(small makes too few steps in it; base wants a GPU)")
    return "small", f"{size} on a CPU (base, ~100M parameters, wants a GPU)"


def _gpu_run(run_config: RunConfig | None, options: dict) -> bool:
    """Whether the run will train on a GPU (its --accelerator / --devices, and what torch sees)."""
    accelerator = (run_config.accelerator if run_config is not None else options.get("accelerator")) or "auto"
    devices = run_config.devices if run_config is not None else options.get("devices")
    if accelerator == "cpu":
        return False
    return bool(torch.cuda.is_available()) or isinstance(devices, list)


class GPTModule(RunModule):
    """The transformer under a ``run`` (a ``RunConfig``: batch, schedule, seed, ...); ``seq_len``
    tokens per segment (default: the context), ``fim_rate`` of training segments rearranged for
    infilling."""

    monitor = "val/loss"  # picks the best checkpoint
    monitor_mode = "min"
    items = "tokens"
    run_defaults = RUN_DEFAULTS

    def items_in(self, batch) -> int:
        return int(batch["ids"].numel())

    def __init__(self, config: dict, run: RunConfig | dict | None = None, *, seq_len: int | None = None,
                 fim_rate: float = 0.0, val_tokens: int | None = None):
        super().__init__(run)
        self.save_hyperparameters()
        self.model = GPT(GPTConfig.from_dict(config))
        self.seq_len = seq_len or self.model.config.context
        self.data: SongData | None = None
        self.streams = None
        self.val_notes = 0
        self.batches_seen = 0
        self.tokens_seen = 0  # over every process and every resume: the card's tokens_seen
        self._xl = self._knn = None
        self._val_xl = self._val_knn = None
        self._val_sum = self._val_count = None
        self._restored_memory: dict | None = None

    # data ----------------------------------------------------------------------------------

    def attach(self, streams, data: SongData, val_notes: int) -> None:
        self.streams, self.data, self.val_notes = streams, data, val_notes

    def _stream(self, split: str, *, loop: bool) -> SongStream:
        """Training (``loop``) rearranges ``fim_rate`` of its segments for infilling; validation
        plays every piece in order (continuation bits per token)."""
        pieces = self.data.split.get(split, [])
        if split == "valid" and self.hparams.get("val_tokens"):
            pieces = validation_pieces(self.streams, pieces, self.hparams.val_tokens)
        if not pieces:
            raise PartitaError(f"the corpus has no {split} pieces with tokens")
        return SongStream(
            self.streams,
            pieces,
            [self.model.label_token(self.data.label_of[p]) for p in pieces],
            batch_size=self.run_config.batch_size,
            seq_len=self.seq_len,
            pad_id=self.model.label_token(None),
            seed=self.run_config.seed,
            loop=loop,
            shuffle=loop,
            rank=self.global_rank,
            world_size=self.trainer.world_size if self._trainer is not None else 1,
            fim_rate=self.hparams.fim_rate if loop else 0.0,
            fim_tokens=(self.model.fill_token("suffix"), self.model.fill_token("middle")) if self.model.config.fim else None,
        )

    def train_dataloader(self):
        module = self

        class Train(torch.utils.data.IterableDataset):
            def __iter__(self):
                stream = module._stream("train", loop=True)
                stream.skip(module.batches_seen)  # a resumed run continues mid-song
                return stream

        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run's dropout would differ from an uninterrupted one.
        return torch.utils.data.DataLoader(Train(), batch_size=None, generator=torch.Generator())

    def val_batches(self) -> int:
        """Batches of one validation (what the time budget keeps for the final one)."""
        return self._stream("valid", loop=False).batches_once()

    def val_dataloader(self):
        module = self

        class Valid(torch.utils.data.IterableDataset):
            def __iter__(self):
                return module._stream("valid", loop=False)

        return torch.utils.data.DataLoader(Valid(), batch_size=None, generator=torch.Generator())

    # memories ------------------------------------------------------------------------------

    def _memories(self, batch_size: int, val: bool):
        c = self.model.config
        xl, knn = (self._val_xl, self._val_knn) if val else (self._xl, self._knn)
        if c.xl_memory and xl is None:
            xl = self.model.new_xl_memory(batch_size)
        if c.knn_memory and knn is None:
            knn = self.model.new_knn_memory(batch_size)
        if val:
            self._val_xl, self._val_knn = xl, knn
        else:
            self._xl, self._knn = xl, knn
            if self._restored_memory:
                self._load_memory(self._restored_memory)
                self._restored_memory = None
        return xl, knn

    def _load_memory(self, state: dict) -> None:
        device = self.device
        if "xl" in state and self._xl is not None:
            s = state["xl"]
            self._xl.k = [None if t is None else t.to(device) for t in s["k"]]
            self._xl.v = [None if t is None else t.to(device) for t in s["v"]]
            self._xl.valid = None if s["valid"] is None else s["valid"].to(device)
            self._xl.next_position = int(s["next_position"])
        if "knn" in state and self._knn is not None:
            s = state["knn"]
            self._knn.keys = [None if t is None else t.to(device, torch.float32) for t in s["keys"]]
            self._knn.values = [None if t is None else t.to(device, torch.float32) for t in s["values"]]
            self._knn._buffers = [None] * self._knn.batch_size  # the next add lays out new ones

    def _step(self, batch: dict, val: bool):
        xl, knn = self._memories(batch["ids"].shape[0], val)
        if xl is not None:
            xl.reset(batch["reset"])
        if knn is not None:
            knn.reset(batch["reset"])
        kwargs = {}
        if self.model.config.bar_embeddings:
            kwargs = {"bars": batch["bars"], "positions": batch["positions"]}
        return self.model(batch["ids"], batch["targets"], xl=xl, knn=knn, **kwargs)

    # steps ---------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        _, loss = self._step(batch, val=False)
        self.batches_seen += 1
        self.tokens_seen += int(batch["ids"].numel()) * (self.trainer.world_size if self._trainer is not None else 1)
        n_tokens = int((batch["targets"] != IGNORE).sum())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits_per_token", loss / LN2)
        self.log("train/tokens", float(self.tokens_seen), reduce_fx="max")
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        if n_tokens == 0:  # only padding in this batch: nothing to learn, keep graph valid
            return loss * 0.0
        return loss

    def on_validation_epoch_start(self):
        self._val_xl = self._val_knn = None
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        _, loss = self._step(batch, val=True)
        n = (batch["targets"] != IGNORE).sum()
        if n > 0:
            self._val_sum += loss.double() * n
            self._val_count += n

    def on_validation_epoch_end(self):
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        loss = float(total / count.clamp(min=1))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)  # already summed over ranks: averaging equal values
        self.log("val/bits_per_token", loss / LN2, sync_dist=True)  # already summed over ranks: averaging equal values
        if self.val_notes:
            self.log("val/bits_per_note", float(total) / LN2 / self.val_notes, sync_dist=True)  # already summed over ranks: averaging equal values

    # optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, fused=self.device.type == "cuda")

    # checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint):
        state = {"batches": self.batches_seen, "tokens": self.tokens_seen, "rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        state["memory"] = _memory_state(self._xl, self._knn)
        checkpoint["partita"] = state

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("partita", {})
        self.batches_seen = int(state.get("batches", 0))
        self.tokens_seen = int(state.get("tokens", self.batches_seen * self.run_config.batch_size * self.seq_len))
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._restored_memory = state.get("memory") or None


# --- the run -----------------------------------------------------------------------------------


def train_gpt(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    seq_len: int | None = None,
    fim: float | None = None,
    init: str | Path | None = None,
    callbacks: list | None = None,
    command: str | None = None,
    **run_options,
) -> dict:
    """Train a GPT on a prepared, tokenised corpus; returns the card written with the bundle.

    ``run_config`` (or ``RunConfig`` fields as keyword arguments: ``max_steps=``, ``max_time=``,
    ``batch_size=``, ``lr=``, ...) describes the run; the rest describes the model.
    ``fim``: the fraction of training segments arranged for fill-in-the-middle (infilling;
    ``partita.data.streams``); > 0 gives the model its two marker tokens (``fim=True``).
    ``init``: a gpt bundle to start from (fine-tuning): its config is the model's (``preset`` is
    not used), its weights the starting point; FIM marker rows it lacks start as copies of its
    "no label" row. ``overrides`` may only add what ``INIT_ADDS`` lists (bar and position-in-bar
    embeddings: new tables that start at zero, so step 0 computes what the bundle computes).

    With ``resume``, the run goes on with its own settings (``RUN/run.json``): ``preset``,
    ``overrides`` and ``init`` may only repeat them; ``seq_len`` and ``fim`` (and the run options)
    that differ are an error unless ``override``. ``preset`` defaults to ``small``, ``fim`` to 0."""
    import time

    started = run_config.started if run_config is not None and run_config.started is not None else time.monotonic()
    resuming = bool(run_config.resume if run_config is not None else run_options.get("resume"))
    corpus = Corpus(corpus_dir)
    streams = token_streams(corpus)
    data = SongData(corpus, streams)
    defaults = RUN_DEFAULTS
    if not resuming and init is None:
        if preset is None:
            train_tokens = int(sum(int(streams.lengths[p]) for p in data.split.get("train", [])))
            max_time = run_config.max_time if run_config is not None else run_options.get("max_time")
            preset, why = choose_preset(train_tokens, gpu=_gpu_run(run_config, run_options), max_time=max_time)
            print(f"preset {preset} (none given): {why}; --preset tiny|mini|small|base to choose", flush=True)
        defaults = {**RUN_DEFAULTS, **PRESET_RUN_DEFAULTS.get(preset, {})}
        given = run_config if run_config is not None else RunConfig.from_options(**run_options)
        if given.max_time is not None and given.max_time < SHORT_RUN_SECONDS and given.val_every is None:
            # one validation of a corpus costs minutes on a CPU: a short budget spends them once, at the end
            defaults["val_every"] = given.max_steps or defaults["max_steps"]
    config_run, out = start_run(out, run_config, run_options, defaults)
    config_run.started = started
    stored = None
    if config_run.resume:
        given = {"preset": preset, "init": _init_name(out, init), "seq_len": seq_len, "fim": fim}
        stored = resumed_settings(out, given, fixed=("preset", "init"), override=config_run.override)
    if stored is not None:
        preset, seq_len, fim = stored.get("preset"), stored.get("seq_len"), stored.get("fim", 0.0)
        init = None  # the checkpoint holds the weights; the bundle it started from is in the settings
        _check_model_overrides(out, GPTConfig.from_dict(stored["model"]), overrides)
    preset = "small" if preset is None else preset
    fim = 0.0 if fim is None else fim
    tokenizer = streams.tokenizer()
    start = _init_bundle(init, streams, data.labels) if init is not None else None
    if stored is not None:
        config = GPTConfig.from_dict(stored["model"])
    elif start is not None:
        config = GPTConfig.from_dict({**start.model.config.to_dict(), **_init_additions(start.model.config, overrides),
                                      "fim": start.model.config.fim or fim > 0})
    else:
        config = GPTConfig.preset(preset, **{"vocab_size": len(tokenizer), "n_labels": len(data.labels),
                                             **({"fim": True} if fim > 0 else {}), **(overrides or {})})
    if fim > 0 and not config.fim:
        raise PartitaError("--fim needs the model's fill-in-the-middle tokens: do not --set fim=false")
    if not 0.0 <= fim <= 1.0:
        raise PartitaError(f"--fim is a fraction of training segments in [0, 1], got {fim}")
    if config.vocab_size != len(tokenizer):
        raise PartitaError(f"vocab_size {config.vocab_size} does not match the tokenizer's {len(tokenizer)} tokens")
    # a short budget validates on whole songs up to SHORT_RUN_VAL_TOKENS, not every validation song
    short = config_run.max_time is not None and config_run.max_time < SHORT_RUN_SECONDS
    val_tokens = SHORT_RUN_VAL_TOKENS if short else None
    val_pieces = validation_pieces(streams, data.split.get("valid", []), val_tokens)
    val_notes = _count_notes(tokenizer, streams, val_pieces)

    def make_module(r: RunConfig) -> GPTModule:
        module = GPTModule(config.to_dict(), r, seq_len=seq_len, fim_rate=fim, val_tokens=val_tokens)
        if start is not None and not r.resume:
            _load_initial(module.model, start.model)
        module.attach(streams, data, val_notes)
        return module

    def export(module: GPTModule, card: dict) -> None:
        card["tokens_seen"] = int(module.tokens_seen)
        save_bundle(module.model.cpu().float(), out / "bundle", tokenizer=tokenizer, card=card,
                    fp16=config_run.fp16_bundle)

    card = {
        "family": "gpt",
        "corpus": str(corpus.path),
        "source": corpus.config.get("source"),
        "labels": data.labels,
        "command": command or "partita.train.gpt.train_gpt(...)",
        "preset": stored["preset"] if stored is not None else None if start is not None else preset,
        "init": stored.get("init") if stored is not None else None if start is None else str(start.path),
        "fim": fim,
        **({"valid_pieces": f"{len(val_pieces)} of {len(data.split.get('valid', []))} (a run under "
                            f"{SHORT_RUN_SECONDS / 3600:.0f}h validates on at most {val_tokens:,} tokens of whole songs)"}
           if val_tokens else {}),
        "parameters": GPT(config).num_parameters(),
        "notes": "metrics are on the corpus's validation split; see 'partita eval gpt' for test-split numbers",
    }
    settings = {"preset": card["preset"], "init": card["init"], "seq_len": seq_len, "fim": fim, "model": config.to_dict()}
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks, cpu_bf16=True,
               settings=settings)


def _init_name(out: Path, init) -> str | None:
    """``--init`` given to a resumed run, as the run's settings name it when it is the same bundle
    (a shipped name or another spelling of the folder), else as given."""
    from partita.train.common import read_run_file

    if init is None:
        return None
    stored = ((read_run_file(out) or {}).get("family") or {}).get("init")
    if stored is not None and (Path(str(init)).name == Path(stored).name or
                               Path(str(init)).expanduser().resolve() == Path(stored).resolve()):
        return stored
    return str(init)


def _check_model_overrides(out: Path, model: GPTConfig, overrides: dict | None) -> None:
    """``--set`` / ``--config`` fields given to a resumed run must repeat its model's."""
    from partita.train.common import contradiction

    clashes = [(f"--set {k}", v, getattr(model, k, None)) for k, v in (overrides or {}).items()
               if getattr(model, k, None) != v]
    if clashes:
        raise contradiction(out, clashes, fixed=True)


def _init_bundle(path, streams, labels: list[str]):
    """The bundle a run starts from (a bundle folder or a shipped name such as ``gpt-piano``),
    checked against the corpus (same tokens, same labels)."""
    from partita.bundle import load
    from partita.evaluate.conditioned import check_same_tokenizer

    bundle = load(str(path), "gpt")
    check_same_tokenizer(bundle.tokenizer, streams, "--init bundle")
    if list(bundle.card.get("labels") or []) != list(labels):
        raise PartitaError(f"--init {path}: its labels {bundle.card.get('labels')} are not the corpus's {labels}")
    return bundle


#: Config fields ``--set`` may change when a run starts from a bundle (``--init``): the bar and
#: position-in-bar embeddings, added to a model that has none.
INIT_ADDS = ("bar_embeddings", "max_bars", "positions_per_bar")


def _init_additions(source: GPTConfig, overrides: dict | None) -> dict:
    """The fields of ``overrides`` a run from a bundle takes (``INIT_ADDS``); anything else, or
    bar settings for a bundle that already has bar embeddings, is a one-line error."""
    overrides = dict(overrides or {})
    changed = {k: v for k, v in overrides.items() if getattr(source, k, None) != v}
    other = sorted(set(changed) - set(INIT_ADDS))
    if other:
        raise PartitaError(f"--init: the model's config is the bundle's; --set {', '.join(other)} cannot change it "
                           f"(only {', '.join(INIT_ADDS)} can be added to a bundle without bar embeddings)")
    if changed and source.bar_embeddings:
        raise PartitaError(f"--init: the bundle already has bar embeddings; --set {', '.join(sorted(changed))} cannot change them")
    if changed and not overrides.get("bar_embeddings", False):
        raise PartitaError("--init: --set max_bars/positions_per_bar need --set bar_embeddings=true")
    return changed


def _load_initial(model: GPT, source: GPT) -> None:
    """Copy ``source``'s weights into ``model`` (same config but perhaps ``fim`` and bar
    embeddings): the embedding rows ``source`` lacks (FIM markers) start as copies of its
    "no label" row, bar and position-in-bar tables it lacks start at zero (adding nothing)."""
    state = {k: v.float() for k, v in source.state_dict().items()}
    wte = state["wte.weight"]
    rows = model.wte.weight.shape[0]
    if wte.shape[0] < rows:
        state["wte.weight"] = torch.cat([wte, wte[-1:].expand(rows - wte.shape[0], -1)], dim=0)
    for name in ("bar_emb.weight", "pos_emb.weight"):
        if name not in state and name in model.state_dict():
            state[name] = torch.zeros_like(model.state_dict()[name])
    model.load_state_dict(state)


def _count_notes(tokenizer, streams, pieces: list[int]) -> int:
    """Notes in the decoded pieces: the denominator of bits per note."""
    from partita.evaluate.baselines import count_notes

    if not pieces:
        return 0
    return int(np.sum(count_notes(tokenizer, [streams.piece(i) for i in pieces])))
