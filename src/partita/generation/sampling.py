"""Sampling token ids from a ``partita.models.GPT``: ``SamplingConfig``, ``sample()`` and its loop.

The prompt goes through the model once, filling a ``KVCache``; every later step feeds ONE token
and attends to the cached keys and values (TchAIkovsky's sampler re-ran the whole window for
every token). N samples of several prompts decode as one batch; a row that stops leaves it. The
concerns live in their own modules, after Hugging Face's split:

* ``filters``: what a token may be (temperature, top-k/p, min-p; masks of special tokens, EOS
  until the length, instruments, metre) and the per-row random draws;
* ``stops``: EOS, tokens, new bars, new seconds, silences;
* ``windows``: how a prompt is read and how the window slides, one policy per kind of model;
* ``step``: the fast CPU decoding step, built per call (the model holds no decoding state, so
  several generations may share one model) and the thread-count chooser;
* ``timing``: bar and position of each new token for the bar embeddings;
* ``repair``: readable MIDI whatever the model wrote.

Samples do not depend on the number of threads, the batch size or ``n``: the same seed gives
the same tokens (``tests/test_sampling.py``, ``tests/test_generate.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from partita.errors import PartitaError
from partita.generation.filters import (banned_ids, check_filters, choose, filter_logits, parse_programs, parse_time_signatures,
                                        row_generator)
from partita.generation.repair import decode_safe, ids_array, repair_tokens
from partita.generation.step import DecodeStep, ThreadChooser
from partita.generation.stops import (SECONDS_CHECK_EVERY, BarStop, ClockStop, EosStop, SecondsClock, Stops, TokenStop,
                                      seconds_check_gap)
from partita.generation.timing import IncrementalTiming
from partita.generation.windows import window_policy
from partita.nn.linear import cpu_bf16_flag
from partita.represent.token_tables import token_tables
from partita.represent.tokens import check_tokenizer, special_id

__all__ = [
    "BF16_PROMPT_ROWS",
    "DEFAULT_MAX_NEW_TOKENS",
    "FillPrompt",
    "SampledIds",
    "SamplingConfig",
    "prompt_logits",
    "sample",
    # re-exported from the modules of each concern, where they are documented
    "IncrementalTiming",
    "SECONDS_CHECK_EVERY",
    "choose",
    "decode_safe",
    "filter_logits",
    "parse_programs",
    "repair_tokens",
    "row_generator",
    "seconds_check_gap",
]

#: New tokens per sample when no length is asked for.
DEFAULT_MAX_NEW_TOKENS = 512
#: Safety caps on new tokens when the length is asked in bars or seconds.
TOKENS_PER_BAR_CAP = 256
TOKENS_PER_SECOND_CAP = 256
#: A memory model reads at most this many of a prompt's last tokens (its kNN memory could hold
#: 16k: 8 s on a busy 2-core machine, 2.5 s for these).
PROMPT_READ_TOKENS = 8192
#: Prompt windows of fewer tokens are read in fp32 even with ``prompt_bf16`` (the casts cost
#: more than bf16 products gain on a few rows).
BF16_PROMPT_ROWS = 64

ProgressFn = Callable[[int, int], None]


def _option(default: Any, help: str, **meta: Any) -> Any:
    """A ``SamplingConfig`` field whose help text the CLI, the web explorer and the docs show."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class SamplingConfig:
    """Every sampling option, from ``partita generate`` to ``sample`` (one object, one path).

    Each field's help text is in its metadata (``SamplingConfig.help(name)``); the command line
    options and the web explorer's request fields are made from these fields. A bundle may carry
    ``generation.json`` with defaults for its model (``partita.bundle``).

    Length: ``max_new_tokens``, ``bars`` (new bars), ``seconds`` (new music, to the last new
    onset), whichever comes first; when one is asked for, EOS is masked until it is reached
    unless ``allow_early_end``. Without any, at most ``DEFAULT_MAX_NEW_TOKENS``.
    """

    temperature: float = _option(1.0, "Sampling temperature (0 = greedy, always the most likely token).", cli="temperature", short="-t")
    top_k: Optional[int] = _option(None, "Keep only the k most likely tokens at each step.", cli="top-k")
    top_p: Optional[float] = _option(None, "Nucleus sampling: keep the most likely tokens up to this probability mass.", cli="top-p")
    min_p: Optional[float] = _option(None, "Keep tokens at least this fraction as likely as the most likely one.", cli="min-p")
    seed: int = _option(0, "Random seed: the same seed gives the same music.", cli="seed")
    max_new_tokens: Optional[int] = _option(None, "Stop after this many new tokens.", cli="max-tokens")
    bars: Optional[int] = _option(None, "Length in new bars (in the file's own metre).", cli="bars")
    seconds: Optional[float] = _option(None, "Length in seconds of new music (counted to the last new note onset).", cli="seconds")
    max_pause: Optional[float] = _option(
        None, "Cut a sample before a silence (no note sounding) longer than this many seconds; None = never "
        "(a bundle's generation.json may set it from its training data).", cli="max-pause")
    allow_early_end: bool = _option(False, "Let the model end the piece before the length asked.", cli="allow-early-end")
    allow_eos: bool = _option(True, "Let the model end the piece at all.")
    programs: Any = _option("auto", "Instruments the model may write: 'auto' (the prompt's; any piano program "
                            "counts as piano), 'all', or General MIDI numbers like '0,33' (-1 = drums).", cli="programs")
    time_signatures: Any = _option(None, "Time signatures the model may write, like '3/4' (None = any); "
                                   "continuation and infilling hold the model to the file's metre.")
    keep_label: bool = _option(True, "Keep the label token first in a sliding window, as in training.")
    batch_size: Optional[int] = _option(None, "Rows decoded at once (default: all samples of a prompt).", cli="batch-size")
    threads: Optional[int] = _option(None, "Intra-op threads while decoding (default: chosen by timing; tokens are the same).", cli="threads")
    prompt_read: Optional[int] = _option(PROMPT_READ_TOKENS, "Read at most this many of a prompt's last tokens.")
    memory_keys: Optional[int] = _option(None, "Keys a kNN-memory model keeps per sample while decoding (default: "
                                         "the model's knn_max_memory; a bundle's generation.json may set fewer).")
    prompt_bf16: Optional[bool] = _option(None, "Read prompt windows under bf16 autocast (default: on CPUs with bf16 instructions).")

    @classmethod
    def help(cls, name: str) -> str:
        return cls.__dataclass_fields__[name].metadata.get("help", "")

    @classmethod
    def of_bundle(cls, bundle: Any) -> "SamplingConfig":
        """The defaults a bundle's ``generation.json`` sets (validated; unknown names are a
        one-line error naming the file), everything else as ``SamplingConfig()``."""
        defaults = dict(getattr(bundle, "generation", None) or {})
        try:
            return cls().replace(**defaults).checked()
        except PartitaError as e:
            where = getattr(bundle, "path", None)
            raise PartitaError(f"{where}/generation.json: {e}" if where else str(e)) from None

    def replace(self, **changes: Any) -> "SamplingConfig":
        """A copy with ``changes`` (field names; unknown names are a one-line error)."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise PartitaError(f"unknown sampling option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def checked(self) -> "SamplingConfig":
        """Validated copy (whole numbers, ranges, programs and metres as tuples or None); PartitaError else."""
        check_filters(self.temperature, self.top_k, self.top_p, self.min_p)
        c = dataclasses.replace(self)
        for name in ("max_new_tokens", "bars", "batch_size", "threads", "prompt_read", "memory_keys"):
            setattr(c, name, _positive_int(getattr(c, name), name.replace("_", "-")))
        for name in ("seconds", "max_pause"):
            value = getattr(c, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not (math.isfinite(float(value)) and float(value) > 0)):
                raise PartitaError(f"{name.replace('_', '-')} must be a number > 0, got {value!r}")
        c.programs = parse_programs(c.programs)
        c.time_signatures = parse_time_signatures(c.time_signatures)
        return c

    def as_settings(self) -> dict:
        """Every field as JSON values (tuples as lists; ``programs`` None as ``"all"``), for the
        settings a command reports."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, tuple) else value
        if out["programs"] is None:
            out["programs"] = "all"
        return out

    @property
    def length_asked(self) -> bool:
        return self.max_new_tokens is not None or self.bars is not None or self.seconds is not None


@dataclass
class SampledIds:
    """One sample: ``ids`` = the prompt's song tokens, then the sampled ones (label not included;
    EOS last when the model ended the piece)."""

    ids: np.ndarray
    prompt_length: int
    stop: str  # "eos" | "tokens" | "bars" | "seconds" | "pause"
    prompt_index: int = 0
    sample_index: int = 0

    @property
    def new_ids(self) -> np.ndarray:
        return self.ids[self.prompt_length :]


@dataclass
class FillPrompt:
    """A prompt laid out for infilling (``partita.generation.infill``): ``ids`` are the model inputs
    after the label, ``[SUFFIX, suffix, MIDDLE, prefix]`` (the markers are ``GPT.fill_token``
    ids; a long prefix's start comes first, in whole windows for the memories), with their real
    ``bars`` and ``positions``; the new tokens follow ``prefix`` (their bars and positions
    continue it) and a row stops before its first token in bar ``end_bar``
    (where the suffix starts). ``song`` (prefix and suffix) gives the instruments for
    ``programs="auto"``; ``suffix`` is the part of the music after the span that ``ids`` show.
    The sampled ids are ``ids`` then the middle."""

    ids: np.ndarray
    bars: np.ndarray
    positions: np.ndarray
    prefix: np.ndarray
    song: np.ndarray
    end_bar: int
    suffix: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _ids_of(prompt: Any) -> np.ndarray:
    return prompt.ids if isinstance(prompt, FillPrompt) else prompt


@contextlib.contextmanager
def _eval_mode(model: Any):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _as_prompt_list(prompts: Any) -> list[Any]:
    if prompts is None:
        return [None]
    if isinstance(prompts, torch.Tensor):
        return [prompts] if prompts.dim() <= 1 else list(prompts)
    if isinstance(prompts, np.ndarray):
        return [prompts] if prompts.ndim <= 1 else list(prompts)
    prompts = list(prompts)
    if all(isinstance(p, (int, np.integer)) for p in prompts):
        return [prompts]  # one prompt given as a list of ids
    return prompts


def _positive_int(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or int(value) < 1:
        raise PartitaError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _check_model(model: Any, tokenizer: Any) -> None:
    check_tokenizer(tokenizer)
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "new_cache") or not hasattr(cfg, "vocab_size"):
        raise PartitaError(f"sampling needs a partita GPT, got {type(model).__name__}")
    if len(tokenizer) != int(cfg.vocab_size):
        raise PartitaError(
            f"the tokenizer has {len(tokenizer)} ids but the model predicts {cfg.vocab_size}: use the bundle's own tokenizer"
        )
    if int(cfg.context) < 2:
        raise PartitaError(f"a model with a context of {cfg.context} cannot hold a label and a token")


def _clean_prompts(tokenizer: Any, prompts: Any) -> list[np.ndarray]:
    V = len(tokenizer)
    bos = special_id(tokenizer, "BOS")
    strip = set(np.flatnonzero(token_tables(tokenizer).special).tolist()) - {bos}  # EOS, PAD...: not at a prompt's end
    clean: list[np.ndarray] = []
    for p in _as_prompt_list(prompts):
        if isinstance(p, FillPrompt):
            clean.append(p)
            continue
        ids = np.zeros(0, np.int64) if p is None else ids_array(p)
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise PartitaError(
                f"prompt token ids must be tokenizer ids in [0, {V}), got {ids.min()}..{ids.max()} "
                "(the label token is added by the sampler)"
            )
        end = len(ids)
        while end and int(ids[end - 1]) in strip:
            end -= 1
        ids = ids[:end]
        clean.append(ids if len(ids) else np.array([bos], np.int64))
    return clean


@contextlib.contextmanager
def _threads(n: Optional[int]):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sample(
    model: Any,
    tokenizer: Any,
    *,
    prompts: Any = None,
    n: int = 1,
    config: Optional[SamplingConfig] = None,
    label: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    return_details: bool = False,
    **options: Any,
) -> list:
    """``n`` samples per prompt from a GPT; returns one int64 id array per sample, prompt-major
    (all samples of prompt 0, then of prompt 1...), or ``SampledIds`` with ``return_details``.

    ``config``: a ``SamplingConfig``; ``options`` are its fields, changed on top of it
    (``sample(model, tok, temperature=0, bars=8)``).

    ``prompts``: None (start a piece: ``[BOS]``), one id sequence or a list of them (tokenizer ids
    of the song, normally starting with BOS; a trailing EOS is dropped so the model continues).
    The model sees ``[label_token(label), *prompt]`` and continues the prompt from its end; a
    prompt longer than what the model can attend to is read from as far back as its window and
    memories hold, window by window (module doc). Each output holds the whole prompt then the
    new tokens. Prompts of different lengths are decoded in separate batches (one per length,
    split into ``batch_size`` rows at most). ``progress(done, total)`` is called after every
    step with the tokens sampled so far and an upper bound of the total.
    """
    _check_model(model, tokenizer)
    cfg = (config or SamplingConfig()).replace(**options).checked()
    n = _positive_int(n, "n")
    max_new_tokens = cfg.max_new_tokens
    if max_new_tokens is None:
        caps = [DEFAULT_MAX_NEW_TOKENS] if cfg.bars is None and cfg.seconds is None else []
        if cfg.bars is not None:
            caps.append(max(DEFAULT_MAX_NEW_TOKENS, TOKENS_PER_BAR_CAP * cfg.bars))
        if cfg.seconds is not None:
            caps.append(max(DEFAULT_MAX_NEW_TOKENS, int(math.ceil(TOKENS_PER_SECOND_CAP * float(cfg.seconds)))))
        max_new_tokens = max(caps)

    eos = special_id(tokenizer, "EOS")
    table = token_tables(tokenizer)
    clean = _clean_prompts(tokenizer, prompts)
    ban_eos = not (cfg.allow_eos and (cfg.allow_early_end or not cfg.length_asked))
    bans = [banned_ids(table, eos=eos, ban_eos=ban_eos, programs=cfg.programs, time_signatures=cfg.time_signatures,
                       song=ids.song if isinstance(ids, FillPrompt) else ids) for ids in clean]

    runner = _Batch(model, tokenizer, cfg, cap=max_new_tokens, label_id=model.label_token(label), eos=eos,
                     progress=progress, n_rows=len(clean) * n)
    rows = [(pi, si) for pi in range(len(clean)) for si in range(n)]
    groups: dict[int, list[int]] = {}
    for r, (pi, _) in enumerate(rows):
        groups.setdefault(len(clean[pi]), []).append(r)
    results: list[Optional[SampledIds]] = [None] * len(rows)
    with torch.inference_mode(), _eval_mode(model), _threads(None):
        for members in groups.values():
            step = cfg.batch_size or len(members)
            for a in range(0, len(members), step):
                chunk = members[a : a + step]
                banned = torch.from_numpy(np.stack([bans[rows[r][0]] for r in chunk]))
                for r, out in zip(chunk, runner.run([rows[r] for r in chunk], clean, banned)):
                    results[r] = out
    if return_details:
        return results
    return [r.ids for r in results]


def prompt_logits(model: Any, tokenizer: Any, prompt: Any, *, label: Optional[int] = None,
                  chunk: Optional[int] = None, config: Optional[SamplingConfig] = None) -> torch.Tensor:
    """Logits ``[V]`` of the token after ``prompt`` (song ids), read exactly as ``sample`` reads
    a prompt: window by window (``chunk=None``) or ``chunk`` tokens per forward pass (``chunk=1``:
    token by token, as if the prompt had been generated). Both give the same logits."""
    _check_model(model, tokenizer)
    cfg = (config or SamplingConfig()).checked()
    eos = special_id(tokenizer, "EOS")
    clean = _clean_prompts(tokenizer, prompt)[:1]
    runner = _Batch(model, tokenizer, cfg, cap=1, label_id=model.label_token(label), eos=eos,
                     progress=None, n_rows=1)
    runner.chunk = chunk
    with torch.inference_mode(), _eval_mode(model):
        runner.start([(0, 0)], clean)
        return runner.feed_prompt()[0].float()




class _Batch:
    """Decodes batches of rows that share a prompt length (see ``sample``): the sequences, the
    caches and memories, the window policy, the stop rules, and the loop."""

    chunk: Optional[int] = None  # tokens per forward pass when reading a prompt; None: a window
    prefill_threads: Optional[ThreadChooser] = None

    def __init__(self, model: Any, tokenizer: Any, config: SamplingConfig, *, cap, label_id, eos, progress, n_rows):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        mc = model.config
        self.filters = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, min_p=config.min_p)
        self.cap, self.label_id, self.eos = cap, label_id, eos
        weight = next(model.parameters())
        self.device = weight.device
        self.bf16_prompt = config.prompt_bf16 if config.prompt_bf16 is not None else (
            weight.device.type == "cpu" and weight.dtype == torch.float32 and cpu_bf16_flag() is not None)
        self.progress = progress
        self.done, self.total = 0, cap * n_rows
        self.window = window_policy(mc, config.keep_label)(self)
        self.timed = bool(mc.bar_embeddings) or config.bars is not None
        self.step_fn = DecodeStep.of(model)  # this call's own fast step: nothing is set on the model
        self._clocks: dict[int, SecondsClock] = {}

    # ------------------------------------------------------------------ model calls

    def forward(self, ids, bars=None, positions=None, window=None):
        """Logits ``[B, V]`` after ``ids`` (appended to the cache and memories)."""
        kw = {}
        if self.model.config.bar_embeddings:
            kw = {"bars": bars, "positions": positions}
        if self.step_fn is not None and self.step_fn.applies(ids, self.cache, self.xl, window):
            return self.step_fn(ids, self.cache, self.knn, bars, positions)[:, -1]
        if self.bf16_prompt and ids.shape[1] >= BF16_PROMPT_ROWS:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits, _ = self.model(ids, cache=self.cache, xl=self.xl, knn=self.knn, window=window, last_only=True, **kw)
            return logits[:, -1].float()
        logits, _ = self.model(ids, cache=self.cache, xl=self.xl, knn=self.knn, window=window, last_only=True, **kw)
        return logits[:, -1]

    def feed(self, a: int, b: int, window=None):
        """Feed ``seq[:, a:b]`` (cached tokens are ``seq[:, :a]`` or a window of them)."""
        return self.forward(self.seq[:, a:b], self.bars_seq[:, a:b], self.pos_seq[:, a:b], window)

    def feed_window(self, first: int, end: int):
        """Feed ``[label, seq[first:end]]`` (a new window or segment); the label's bar input is
        the bar of ``seq[first]`` (training's convention)."""
        s = self.seq
        ids = torch.cat([s[:, :1], s[:, first:end]], dim=1)
        bars = torch.cat([self.bars_seq[:, first : first + 1], self.bars_seq[:, first:end]], dim=1)
        pos = torch.cat([torch.zeros_like(self.pos_seq[:, :1]), self.pos_seq[:, first:end]], dim=1)
        return self.forward(ids, bars, pos)

    def feed_prompt(self):
        return self.window.read_prompt()

    # ------------------------------------------------------------------ rows

    def _select(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        for memory in (self.cache, self.xl, self.knn):
            if memory is not None:
                memory.select(keep)
        self.seq, self.bars_seq, self.pos_seq = self.seq[idx], self.bars_seq[idx], self.pos_seq[idx]
        self.banned = self.banned[idx]
        if self.tracker is not None:
            self.tracker.select(keep)
        self.stops.select(keep)
        self.gens = [self.gens[j] for j in keep]
        self.meta = [self.meta[j] for j in keep]

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _clock_of(self, pi: int, prompt: np.ndarray) -> SecondsClock:
        if pi not in self._clocks:
            self._clocks[pi] = SecondsClock(self.tokenizer, prompt)
        return self._clocks[pi]

    def _stops(self, rows: list[tuple[int, int]], prompts: list[Any], fill: bool) -> Stops:
        cfg, L = self.config, self.L
        rules: list[Any] = [EosStop(self.eos)]
        limits: list[Optional[int]] = [None] * len(rows)
        if fill:
            limits = [int(prompts[pi].end_bar) for pi, _ in rows]
        elif cfg.bars is not None:
            special = token_tables(self.tokenizer).special
            for b, (pi, _) in enumerate(rows):
                has_music = bool((~special[prompts[pi]]).any())
                limits[b] = int(self.bars_seq[b, L - 1]) + cfg.bars + (1 if has_music else 0)
        if any(limit is not None for limit in limits):
            rules.append(BarStop(limits))
        rules.append(TokenStop(self.cap))
        seconds = None if cfg.seconds is None else float(cfg.seconds)
        if not fill and (seconds is not None or cfg.max_pause is not None):
            clocks = [self._clock_of(pi, prompts[pi]) for pi, _ in rows]
            rules.append(ClockStop(clocks, seconds, None if cfg.max_pause is None else float(cfg.max_pause)))
        return Stops(rules)

    def start(self, rows: list[tuple[int, int]], prompts: list[Any]) -> None:
        """Set up the batch of ``rows``: sequences, timing, generators, stops, caches."""
        model, mc, dev = self.model, self.model.config, self.device
        B = len(rows)
        self.P = P = len(prompts[rows[0][0]])
        self.L0 = self.L = L = 1 + P
        size = L + self.cap
        self.seq = torch.full((B, size), self.eos, dtype=torch.long, device=dev)
        self.seq[:, 0] = self.label_id
        self.seq[:, 1:L] = torch.from_numpy(np.stack([_ids_of(prompts[pi]) for pi, _ in rows])).to(dev)
        fill = isinstance(prompts[rows[0][0]], FillPrompt)
        self.bars_seq = torch.zeros((B, size), dtype=torch.long, device=dev)
        self.pos_seq = torch.zeros((B, size), dtype=torch.long, device=dev)
        self.tracker = None
        if self.timed or fill:
            self.tracker = IncrementalTiming(self.tokenizer)
            timings = self.tracker.start([prompts[pi].prefix if fill else prompts[pi] for pi, _ in rows])
            if fill:  # the layout's own timing; the tracker continues the prefix
                timings = [(prompts[pi].bars, prompts[pi].positions) for pi, _ in rows]
            self.bars_seq[:, 1:L] = torch.from_numpy(np.stack([t[0] for t in timings]).astype(np.int64)).to(dev)
            self.pos_seq[:, 1:L] = torch.from_numpy(np.stack([t[1] for t in timings]).astype(np.int64)).to(dev)
            self.bars_seq[:, 0] = self.bars_seq[:, 1]  # the label: (bar of the next token, 0)
        self.gens = [row_generator(self.config.seed, pi, si, dev) for pi, si in rows]
        self.meta = list(range(B))
        self.n_new = 0
        self.last_tokens = np.zeros(B, np.int64)
        self.last_bars = np.zeros(B, np.int64)
        self.stops = self._stops(rows, prompts, fill)
        self.cache = model.new_cache()
        # RoPE models keep their XL memory in the cache (MemorySegments); learned positions do not
        learned = mc.positions == "learned"
        self.xl = model.new_xl_memory(B) if getattr(mc, "xl_memory", False) and learned else None
        keys = {} if self.config.memory_keys is None else {"max_memory": self.config.memory_keys}
        self.knn = model.new_knn_memory(B, **keys) if getattr(mc, "knn_memory", False) else None
        self.window.reset()

    def run(self, rows: list[tuple[int, int]], prompts: list[Any], banned: torch.Tensor) -> list[SampledIds]:
        dev = self.device
        threads = ThreadChooser(torch.get_num_threads(), self.config.threads)
        self.prefill_threads = ThreadChooser(torch.get_num_threads(), self.config.threads, probe=1, warm=1)
        self.start(rows, prompts)
        self.banned = banned.to(dev)
        logits = self.feed_prompt()
        out: list[Optional[SampledIds]] = [None] * len(rows)
        L0, P = self.L, self.P
        while True:
            tok = choose(logits, self.gens, banned=self.banned, **self.filters)
            self.last_tokens = tok.cpu().numpy()
            self.seq[:, self.L] = tok
            if self.tracker is not None:
                tb, tp = self.tracker.push(self.last_tokens)
                self.last_bars = tb
                self.bars_seq[:, self.L] = torch.from_numpy(tb).to(dev)
                self.pos_seq[:, self.L] = torch.from_numpy(tp).to(dev)
            self.L += 1
            self.n_new += 1
            self.done += len(self.last_tokens)
            keep, stopped = self.stops.check(self)
            for b, end, reason in stopped:
                pi, si = rows[self.meta[b]]
                ids = self.seq[b, 1:end].cpu().numpy().astype(np.int64)
                out[self.meta[b]] = SampledIds(ids=ids, prompt_length=P, stop=reason, prompt_index=pi, sample_index=si)
                self.total -= self.cap - (end - L0)  # the budget it did not use
                self.done -= self.L - end  # sampled tokens it did not keep
            self._report()
            if not keep:
                break
            if len(keep) < len(self.last_tokens):
                self._select(keep)
            threads.begin()
            logits = self.window.step(self.L)
            threads.end()
        return out
