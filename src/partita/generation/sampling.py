"""Sampling token ids from a ``partita.models.GPT``: KV cache, sliding window, filters, stops.

How this beats TchAIkovsky's sampler
------------------------------------
TchAIkovsky (and many music-transformer scripts) sample by running the *whole* window through the
model for every new token: a token costs a full forward pass over up to ``context`` positions,
``O(context)`` layers-times-tokens of work, and a piece of ``N`` tokens costs ``O(N * context)``
token-forwards. Here:

* the prompt goes through the model once, filling a ``KVCache``; every later step feeds ONE token
  and attends to the cached keys/values: ``O(1)`` token-forwards per token (plus an ``O(context)``
  attention read, which the full recompute pays too), so within the context window generation is
  ``context`` times less work per token, with the same logits (``tests/test_generate.py`` checks
  cached decoding against full recomputation token for token);
* past the context, RoPE models slide the window by cropping the cache (keys keep their absolute
  rotation, so nothing is recomputed: ``partita.nn.attention``); the cost per token stays that of
  one token, however long the piece;
* N samples (and several prompts) are decoded as one batch; a row that finished (EOS, length) is
  removed from the batch, so the rest do not pay for it;
* bar and position-in-bar inputs of the bar embeddings are tracked incrementally
  (``IncrementalTiming``, equal to ``token_timing`` on the whole sequence) instead of re-reading the
  sequence at every step.

Sampling a token
----------------
``choose`` turns the logits of the last position into one id per row, in this order (each filter
works on the distribution the previous one left, renormalized, and always keeps the most likely
token):

1. ids that must never be generated are removed (PAD, BOS and any other special token but EOS);
2. ``temperature``: logits are divided by it; ``temperature=0`` means greedy (argmax) and the
   filters below do not matter;
3. ``top_k``: keep the ``k`` most likely ids (ties with the k-th are kept);
4. ``top_p`` (nucleus): keep the smallest set of most likely ids whose probability reaches
   ``top_p`` (the id that crosses it is kept);
5. ``min_p``: keep the ids whose probability is at least ``min_p`` times the top one's;
6. draw from what is left with the row's own ``torch.Generator``.

Every row (prompt ``i``, sample ``j``) has its own generator seeded from ``(seed, i, j)``
(``row_generator``): the same seed gives the same samples, and sample ``j`` of a prompt does not
depend on ``n``, on the batch size or on which other rows finished early.

Windows and label tokens
------------------------
Every training window starts with the label token (``[label, t_o, t_o+1, ...]``), so the model has
only ever seen windows that begin with one. What happens once a piece outgrows the context ``C``:

* ``"sink"`` (RoPE, no memory; the default): the window is ``[label, last C-1 tokens]`` exactly
  as in training (a model that always saw a label first may lean on it as an attention sink, and
  it keeps the composer conditioning alive in long pieces). The label's keys/values are re-placed
  just before the window at every slide: a label is the first token of its window, so its states
  depend only on the label and on its bar input (the bar of the window's first token, as in
  training); they are computed once, for every bar value in one batched forward, and rotated to
  their new position. The oldest token leaves the cache, nothing else is recomputed.
* ``"window"`` (RoPE, ``keep_label=False``): plain sliding window, ``crop_cache(cache, C - 1)``
  before each token: the label leaves with the first tokens. This is exactly
  ``model(ids, window=C)`` over the whole sequence.
* ``"memory"`` (XL and/or kNN memory): decoding follows training's contiguous segments. The
  song is cut into segments ``[label, C-1 tokens]``; a token sees its segment so far and the
  memories, which hold the segments before it (XL: their last ``xl_length`` positions; kNN:
  every key of the kNN layer, un-rotated). When a segment is full it becomes memory and the
  next one starts with the label again. With RoPE the XL memory stays in the KV cache as its
  oldest part (so a step is one attention call over memory and segment, without copies);
  learned positions keep separate ``XLMemory``/``KNNMemory`` objects (``GPT.crop_cache``).
  A prompt is read the same way, one forward pass per segment: the logits after it equal
  those of feeding it token by token and those of training's segments
  (``tests/test_generate.py``).
* ``"learned"`` (learned absolute positions): positions are not translation invariant, so the
  cache cannot slide. When the window is full the model recomputes ``[label, last K-1 tokens]``
  from scratch (``K = C - C//4``: one forward of ``K`` tokens every ``C//4`` tokens, instead of
  one per token) and continues incrementally; with memories, the tokens leaving the window go
  into them first.

Long prompts
------------
A prompt is continued from its end. It is read as far back as the model can use: the last
``C - 1`` tokens for plain models (one window, ``[label, last C-1 tokens]`` as in training),
``n_layer * (C - 1)`` for ``"window"`` (what sliding windows reach through the layers, exactly),
and for memory models the last ``knn_max_memory + C - 1`` tokens with a kNN memory, else
``n_layer * xl_length + C - 1`` (Transformer-XL's reach), one forward pass per window: a
10-minute piano piece takes about a second on 2 cores (``benchmarks/gpt.py``).

Length and stops
----------------
A row stops at EOS (kept at the end of its ids), after ``max_new_tokens`` sampled tokens, and,
when asked (``SamplingConfig``):

* ``bars=N``: before the first token of the (N+1)-th new bar (that token is not kept). New bars are
  counted with ``token_timing``'s bar index: a prompt with music ends in bar ``b``, whose rest may
  still be filled, and bars ``b+1 .. b+N`` are the new ones; without a prompt bars ``0 .. N-1``.
* ``seconds=S``: the sample is decoded at checks (``SecondsClock``: the prompt's last bars and
  the new tokens, tempo changes included), the next one half way to where the seconds per token
  so far say ``S`` is reached, 1 to 4 times ``SECONDS_CHECK_EVERY`` tokens later (every 16
  tokens decoded a long sample over and over; a rate read off the first notes can be far off, so
  a check is never further away); once the piece lasts ``S`` seconds longer than its
  prompt (both measured to their last note-off) the ids are cut at the shortest prefix that
  does (a binary search over the tokens since the previous check).

Without ``max_new_tokens`` a sample gets at most ``DEFAULT_MAX_NEW_TOKENS`` new tokens, or, with
``bars``/``seconds``, ``max(512, 256 * bars)`` / ``max(512, 256 * seconds)`` as a safety cap.
When a length is asked for (``max_new_tokens``, ``bars`` or ``seconds``), EOS is masked until
the sample reaches it, so a model that would end the piece early still gives the length asked
(``allow_early_end=True`` lets it end). Ids that write notes of other instruments than the
prompt's are masked too (``programs``).

Threads
-------
Samples do not depend on the number of threads (``partita.nn.linear`` lays weights out by size
only). ``threads=None`` times decoding steps with 1 thread and with all of them, keeps the
faster and checks again every 256 steps: on a busy machine one thread is much faster.

Readable output whatever the model says
---------------------------------------
``repair_tokens`` walks the base tokens (BPE merges expanded) with miditok's own table of which
token type may follow which (``tokenizer.tokens_types_graph``): a token that cannot follow is
dropped; a time or note-start token that cannot follow an unfinished note (``Pitch`` without its
``Velocity``/``Duration``) drops that unfinished note instead, so the timeline survives; a
``Position`` (``Tempo``, ``TimeSig``) right after another replaces it; a note left unfinished at the
end is dropped. Time order is not repaired: a ``Position`` that goes back in its bar decodes to a
note earlier in that bar. A valid encoding comes out unchanged. ``decode_safe`` decodes
the repaired tokens, and if miditok or the MIDI round trip still fails, keeps the longest prefix
that works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from miditok import TokSequence
from symusic import Score, Tempo, TimeSignature

from partita.errors import PartitaError
from partita.nn.attention import apply_rotary
from partita.nn.linear import cpu_bf16_flag
from partita.represent.tokens import TokenizerError, _expansion, special_id, token_timing

__all__ = [
    "BF16_PROMPT_ROWS",
    "DEFAULT_MAX_NEW_TOKENS",
    "FillPrompt",
    "SECONDS_CHECK_EVERY",
    "IncrementalTiming",
    "SampledIds",
    "SamplingConfig",
    "choose",
    "decode_safe",
    "filter_logits",
    "parse_programs",
    "prompt_logits",
    "repair_tokens",
    "row_generator",
    "sample",
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
#: With ``seconds=``, the samples are decoded and measured 1 to 4 times this many tokens apart
#: (``seconds_check_gap``).
SECONDS_CHECK_EVERY = 16
#: Prompt windows of fewer tokens are read in fp32 even with ``prompt_bf16`` (the casts cost
#: more than bf16 products gain on a few rows).
BF16_PROMPT_ROWS = 64

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- filters and draws


def _check_filters(temperature: float, top_k: Optional[int], top_p: Optional[float], min_p: Optional[float]) -> None:
    if temperature is None or not math.isfinite(float(temperature)) or temperature < 0:
        raise PartitaError(f"temperature must be a number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and int(top_k) < 1:
        raise PartitaError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise PartitaError(f"top-p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= float(min_p) <= 1.0:
        raise PartitaError(f"min-p must be in [0, 1], got {min_p}")


def filter_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
) -> torch.Tensor:
    """``logits [..., V] / temperature`` (float32) with the ids the filters remove set to ``-inf``.

    Order: temperature, top-k, top-p, min-p (module doc); each keeps at least the most likely id.
    ``temperature`` must be > 0 here (greedy is ``choose``'s business).
    """
    _check_filters(temperature, top_k, top_p, min_p)
    if temperature == 0:
        raise PartitaError("filter_logits needs temperature > 0 (temperature 0 is greedy decoding)")
    x = logits.float()
    if temperature != 1.0:
        x = x / float(temperature)
    neg = float("-inf")
    if top_k is not None and int(top_k) < x.shape[-1]:
        kth = torch.topk(x, int(top_k), dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, neg)
    if top_p is not None and float(top_p) < 1.0:
        probs = torch.softmax(x, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the ids more likely than this one
        drop_sorted = before >= float(top_p)
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, neg)
    if min_p is not None and float(min_p) > 0.0:
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < float(min_p) * probs.amax(dim=-1, keepdim=True), neg)
    return x


def row_generator(seed: int, prompt_index: int = 0, sample_index: int = 0, device: Any = "cpu") -> torch.Generator:
    """The random generator of sample ``sample_index`` of prompt ``prompt_index`` under ``seed``."""
    entropy = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, int(prompt_index), int(sample_index)]
    state = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    return torch.Generator(device=torch.device(device)).manual_seed(state)


def choose(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    banned: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One id per row of ``logits [B, V]``: filter (module doc) and draw with row ``b``'s generator.

    ``banned``: bool ``[V]`` or ``[B, V]`` (per row), ids never chosen. ``temperature=0``: argmax,
    no generator used.
    """
    _check_filters(temperature, top_k, top_p, min_p)
    x = logits.float()
    x = torch.nan_to_num(x, nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    if banned is not None:
        banned = banned.to(x.device).expand_as(x)
        x = x.masked_fill(banned, float("-inf"))
    dead = ~torch.isfinite(x).any(dim=-1)  # a broken model (NaN everywhere): draw uniformly
    if bool(dead.any()):
        fill = torch.zeros_like(x)
        if banned is not None:
            fill = fill.masked_fill(banned, float("-inf"))
        x[dead] = fill[dead]
    if temperature == 0:
        return x.argmax(dim=-1)
    probs = torch.softmax(filter_logits(x, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p), dim=-1)
    if len(generators) != probs.shape[0]:
        raise ValueError(f"{len(generators)} generators for {probs.shape[0]} rows")
    # Inverse CDF with one uniform per row from that row's generator: a third of torch.multinomial's
    # time per row, and one batched search. right=True: the first id whose cumulative mass exceeds
    # the draw, so an id of probability 0 is never chosen.
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).to(probs.device)
    cdf = probs.cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)


# --------------------------------------------------------------------------- incremental timing


class _PositionTable:
    """Per id of a Bar/Position tokenizer: what its base tokens do to (bars seen, position)."""

    def __init__(self, table: Any):
        n = len(table.lengths)
        self.first_bar = np.zeros(n, bool)  # the first base token is a Bar
        self.first_pos = np.full(n, -1, np.int64)  # ... a Position (its value)
        self.n_bars = np.zeros(n, np.int64)  # Bar base tokens in the id
        self.last = np.full(n, -1, np.int64)  # value after the id: 0 (Bar), Position value, -1 (none)
        for i in range(n):
            base = table.flat[table.starts[i] : table.starts[i] + table.lengths[i]]
            if len(base) == 0:
                continue
            self.first_bar[i] = table.is_bar[base[0]]
            self.first_pos[i] = table.position[base[0]]
            self.n_bars[i] = int(table.is_bar[base].sum())
            for b in base[::-1]:
                if table.is_bar[b]:
                    self.last[i] = 0
                    break
                if table.position[b] >= 0:
                    self.last[i] = table.position[b]
                    break


class IncrementalTiming:
    """``token_timing`` one token at a time for a batch of rows: ``push(ids)`` gives the bar index
    and position in bar of each row's next token, equal to ``token_timing`` on the whole sequence.

    ``start(prompts)`` reads the prompts (one per row) and returns their ``token_timing``. The
    state is O(1) per row: (bars seen, last position) for Bar/Position tokenizers (REMI),
    (tick, metre) for time-shift ones (TSD, MIDILike, Structured). A token made of no base token
    (never sampled: such ids count as special) takes the running values.
    """

    def __init__(self, tokenizer: Any):
        token_timing(tokenizer, np.zeros(0, np.int64))  # validates the tokenizer (no Rest tokens...)
        self.tokenizer = tokenizer
        self.table = table = _expansion(tokenizer)
        if table.has_position:
            self.kind = "position"
            pos = getattr(table, "_partita_incremental", None)
            if pos is None:
                pos = table._partita_incremental = _PositionTable(table)
            self.pos_table = pos
        elif table.has_shift:
            self.kind = "shift"
            self.tpq = int(tokenizer.time_division)
            self.res = int(tokenizer.config.max_num_pos_per_beat)
            self.tpb_per_ts = dict(tokenizer._tpb_per_ts)
            self.default_shift = table.shift[next(iter(table.shift))]
        else:
            raise TokenizerError(f"{type(tokenizer).__name__} has neither Position nor TimeShift tokens")
        self.state: Any = None

    def _base(self, i: int) -> np.ndarray:
        t = self.table
        return t.flat[t.starts[i] : t.starts[i] + t.lengths[i]]

    def start(self, prompts: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        timings = [token_timing(self.tokenizer, p) for p in prompts]
        if self.kind == "position":
            t = self.table
            nb = np.zeros(len(prompts), np.int64)
            cp = np.zeros(len(prompts), np.int64)
            for r, p in enumerate(prompts):
                if len(p) == 0:
                    continue
                base, _ = t.expand(np.asarray(p, np.int64))
                is_bar = t.is_bar[base]
                nb[r] = int(is_bar.sum())
                marks = np.flatnonzero(is_bar | (t.position[base] >= 0))
                if len(marks):
                    m = marks[-1]
                    cp[r] = 0 if is_bar[m] else t.position[base[m]]
            self.state = [nb, cp]
        else:
            self.state = []
            for p in prompts:
                st = [0, 0, 0, 4, 4]  # tick, tick of the last metre change, bars before it, num, den
                for i in np.asarray(p, np.int64):
                    for b in self._base(int(i)):
                        self._shift_base(st, int(b))
                self.state.append(st)
        return timings

    def _shift_base(self, st: list, b: int) -> tuple[int, int]:
        """Bar and position of base token ``b`` (time-shift tokenizers); advances ``st``."""
        tick, ts_tick, bar_at_ts, num, den = st
        tpq = self.tpq
        ts = self.table.ts[b]
        if ts[1] > 0:  # a TimeSig token: a new metre from here (token_timing's segments)
            bar_at_ts += -(-(tick - ts_tick) // (num * tpq * 4 // den))
            ts_tick = tick
            num, den = int(ts[0]), int(ts[1])
        tpb = self.tpb_per_ts.get(den, tpq)
        ticks_per_bar = max(num * tpq * 4 // den, 1)
        ticks_per_pos = max(tpb // self.res, 1)
        rel = tick - ts_tick
        bar, pos = bar_at_ts + rel // ticks_per_bar, (rel % ticks_per_bar) // ticks_per_pos
        tick += int(self.table.shift.get(tpb, self.default_shift)[b])
        st[:] = [tick, ts_tick, bar_at_ts, num, den]
        return bar, pos

    def push(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Bar and position of each row's next token ``ids [B]``; advances every row."""
        ids = np.asarray(ids, np.int64).ravel()
        if self.kind == "position":
            nb, cp = self.state
            t = self.pos_table
            fb = t.first_bar[ids]
            bars = np.maximum(nb + fb - 1, 0)
            pos = np.where(fb, 0, np.where(t.first_pos[ids] >= 0, t.first_pos[ids], cp))
            last = t.last[ids]
            self.state = [nb + t.n_bars[ids], np.where(last >= 0, last, cp)]
            return bars, pos
        bars = np.zeros(len(ids), np.int64)
        pos = np.zeros(len(ids), np.int64)
        for r, i in enumerate(ids):
            st = self.state[r]
            base = self._base(int(i))
            if len(base) == 0:
                bars[r], pos[r] = self._shift_peek(st)
                continue
            for k, b in enumerate(base):
                bp = self._shift_base(st, int(b))
                if k == 0:
                    bars[r], pos[r] = bp
        return bars, pos

    def _shift_peek(self, st: list) -> tuple[int, int]:
        tick, ts_tick, bar_at_ts, num, den = st
        tpb = self.tpb_per_ts.get(den, self.tpq)
        ticks_per_bar = max(num * self.tpq * 4 // den, 1)
        rel = tick - ts_tick
        return bar_at_ts + rel // ticks_per_bar, (rel % ticks_per_bar) // max(tpb // self.res, 1)

    def select(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order)."""
        rows = list(rows)
        if self.kind == "position":
            self.state = [s[rows] for s in self.state]
        else:
            self.state = [self.state[r] for r in rows]


# --------------------------------------------------------------------------- repair and decoding


class _Grammar:
    """Which base token types may follow which (miditok's ``tokens_types_graph``), and which types
    leave a note unfinished."""

    _NOTE_PARTS = {"Program", "Pitch", "PitchDrum", "NoteOn", "DrumOn", "Velocity", "PitchIntervalTime",
                   "PitchIntervalChord"}
    _HEADS = {"Program", "Pitch", "PitchDrum", "NoteOn", "DrumOn", "PitchIntervalTime", "PitchIntervalChord"}
    _TIME = {"Bar", "Position", "TimeShift", "Rest", "TimeSig", "Tempo"}
    REPLACE = {"Position", "Tempo", "TimeSig"}  # a second one in a row replaces the first

    def __init__(self, tokenizer: Any, table: Any):
        special = {t.split("_")[0] for t in tokenizer.special_tokens}
        graph = {k: {t.split("_")[0] for t in v} - special
                 for k, v in tokenizer.tokens_types_graph.items() if k not in special}
        self.graph = graph
        # a note part after which only note parts may come: the note is not finished
        self.dangling = {t for t, nxt in graph.items() if t in self._NOTE_PARTS and not (nxt & self._TIME)}
        preds: dict[str, set] = {}
        for t, nxt in graph.items():
            for u in nxt:
                preds.setdefault(u, set()).add(t)
        # types that only continue an unfinished note (Velocity, Duration): never first
        self.continuation = {t for t, p in preds.items() if p and p <= self.dangling and t not in self._HEADS}
        inv = {i: s for s, i in tokenizer.vocab.items()}
        self.strings = [inv.get(i, "") for i in range(len(table.base_special))]
        self.types = [s.split("_")[0] for s in self.strings]

    def fits(self, prev: Optional[str], typ: str) -> bool:
        if prev is None:
            return typ not in self.continuation
        return typ in self.graph.get(prev, ())


def _grammar(tokenizer: Any) -> tuple[Any, _Grammar]:
    table = _expansion(tokenizer)
    g = getattr(table, "_partita_grammar", None)
    if g is None:
        g = table._partita_grammar = _Grammar(tokenizer, table)
    return table, g


def _ids_array(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids).astype(np.int64).ravel()


def repair_tokens(tokenizer: Any, ids: Any) -> list[str]:
    """The base tokens of ``ids`` (merges expanded, special tokens removed) with what cannot follow
    dropped (module doc): a sequence miditok decodes as intended. A valid encoding is unchanged."""
    ids = _ids_array(ids)
    table, g = _grammar(tokenizer)
    if ids.size and (ids.min() < 0 or ids.max() >= len(table.lengths)):
        raise TokenizerError(f"token ids must be in [0, {len(table.lengths)}), got {ids.min()}..{ids.max()}")
    base, _ = table.expand(ids)
    kept: list[int] = []
    types: list[str] = []
    for b in base.tolist():
        if table.base_special[b]:
            continue
        typ = g.types[b]
        if typ not in g.graph:
            continue
        if g.fits(types[-1] if types else None, typ):
            kept.append(b)
            types.append(typ)
            continue
        if typ in g.continuation:  # a stray Velocity/Duration: drop it
            continue
        # A note start or a time token after an unfinished note: drop the unfinished note. A
        # Position (Tempo, TimeSig) right after another one replaces it: the first was empty.
        j = len(types)
        while True:
            prev = types[j - 1] if j > 0 else None
            if g.fits(prev, typ) or (prev == typ and typ in g.REPLACE):
                j -= 0 if g.fits(prev, typ) else 1
                del kept[j:], types[j:]
                kept.append(b)
                types.append(typ)
                break
            if prev is None or prev not in g.dangling:
                break  # cannot follow anything kept: drop it
            j -= 1
    while types and types[-1] in g.dangling:  # an unfinished note at the end
        kept.pop()
        types.pop()
    return [g.strings[b] for b in kept]


def _decode_tokens(tokenizer: Any, tokens: list[str]) -> Score:
    score = tokenizer.decode(TokSequence(tokens=list(tokens))) if tokens else Score(tokenizer.time_division)
    if len(score.tempos) == 0:
        score.tempos.append(Tempo(0, float(tokenizer.default_tempo)))
    if len(score.time_signatures) == 0:
        score.time_signatures.append(TimeSignature(0, 4, 4))
    return score


def _readable(tokenizer: Any, tokens: list[str]) -> Optional[Score]:
    """The decoded score if it decodes and survives a MIDI round trip, else None."""
    from partita.io.midi import load

    try:
        score = _decode_tokens(tokenizer, tokens)
        load(score.dumps_midi(), allow_empty=True)
        return score
    except Exception:
        return None


def decode_safe(tokenizer: Any, ids: Any, *, check: bool = True) -> tuple[Score, int]:
    """``(score, dropped)``: ``ids`` decoded after ``repair_tokens``; ``dropped`` counts the base
    tokens (not special) the repair removed. Never raises for ids in the vocabulary; a sample with
    no note decodes to a score with ``note_num() == 0``.

    ``check=True`` also writes and re-reads the score as MIDI; if decoding or that round trip
    fails the longest prefix that works is kept.
    """
    ids = _ids_array(ids)
    tokens = repair_tokens(tokenizer, ids)
    table = _expansion(tokenizer)
    base, _ = table.expand(ids)
    dropped = int((~table.base_special[base]).sum()) - len(tokens)
    if not check:
        try:
            return _decode_tokens(tokenizer, tokens), dropped
        except Exception:
            pass
    score = _readable(tokenizer, tokens)
    if score is None:  # should not happen with miditok's tolerant decoders; keep what works
        lo, hi = 0, len(tokens)  # tokens[:lo] works (empty always does), tokens[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _readable(tokenizer, tokens[:mid]) is not None:
                lo = mid
            else:
                hi = mid
        score = _readable(tokenizer, tokens[:lo]) or _decode_tokens(tokenizer, [])
        dropped += len(tokens) - lo
    return score, dropped


#: Bars of a prompt's end that ``SecondsClock`` decodes with the new tokens (at least one note).
CLOCK_BARS = 4


class SecondsClock:
    """How many seconds of music a row has, decoding only the prompt's last bars and the new tokens.

    Decoding the whole sequence at every length check made a 30 s request after an hour-long file
    spend most of its time in miditok (41 decodes of 104,000 tokens). For Bar/Position tokenizers
    (REMI) the clock decodes from ``anchor``, the start of a bar at least ``CLOCK_BARS`` bars (and
    one note) before the prompt's end, with the metre and tempo in force there put back at its
    start; time in that frame is the whole piece's time shifted by the anchor's, so
    ``end(ids) - prompt_end`` is what a full decode gives (``tests/test_sampling.py``). Other
    tokenizers decode from the start (``anchor`` 0, no state to restore).
    """

    def __init__(self, tokenizer: Any, prompt: np.ndarray):
        self.tokenizer = tokenizer
        prompt = _ids_array(prompt)
        self.anchor, self.state = 0, []
        table, g = _grammar(tokenizer)
        if table.has_position and table.lengths[prompt].sum():
            self.anchor, self.state = self._find_anchor(table, g, prompt)
        self.prompt_end = self.end(prompt[self.anchor :])

    @staticmethod
    def _find_anchor(table: Any, g: Any, prompt: np.ndarray) -> tuple[int, list[str]]:
        base, first = table.expand(prompt)
        types = np.asarray(g.types)
        bar_ids = np.flatnonzero((table.lengths[prompt] > 0) & table.is_bar[base[np.minimum(first, len(base) - 1)]])
        is_note = np.isin(types, ("Pitch", "PitchDrum", "NoteOn"))[base]
        notes_after = np.cumsum(is_note[::-1])[::-1]  # notes from each base token to the end
        anchor = 0
        for j in range(len(bar_ids) - CLOCK_BARS, -1, -1):
            if notes_after[first[bar_ids[j]]] > 0:
                anchor = int(bar_ids[j])
                break
        if anchor == 0:
            return 0, []
        before = base[: first[anchor]]
        state = []
        for kind in ("TimeSig", "Tempo"):  # the last of each before the anchor
            hits = np.flatnonzero(types[before] == kind)
            state.append(g.strings[before[hits[-1]]] if len(hits) else None)
        return anchor, state

    def _restore(self, tokens: list[str]) -> list[str]:
        """``tokens`` (from a Bar) with the metre and tempo in force at the anchor put back."""
        if not self.state or not tokens:
            return tokens
        timesig, tempo = self.state
        out = list(tokens)
        at = 1
        if len(out) > 1 and out[1].startswith("TimeSig_"):
            at = 2
        elif timesig:
            out.insert(1, timesig)
            at = 2
        first_pos = next((i for i in range(at, len(out)) if out[i].startswith("Position_")), None)
        own_tempo_at_0 = (first_pos is not None and out[first_pos] == "Position_0" and first_pos + 1 < len(out)
                          and out[first_pos + 1].startswith("Tempo_"))
        if tempo and not own_tempo_at_0:
            out[at:at] = ["Position_0", tempo]
        return out

    def end(self, ids: np.ndarray) -> float:
        """Seconds from the anchor to the last note-off of ``ids`` (the row's ids from the anchor on)."""
        tokens = self._restore(repair_tokens(self.tokenizer, ids))
        try:
            score = _decode_tokens(self.tokenizer, tokens)
        except Exception:  # miditok's decoders are tolerant; never let a length check end a run
            score, _ = decode_safe(self.tokenizer, ids, check=False)
        return float(score.to("second").end()) if score.note_num() else 0.0


def seconds_check_gap(n_new: int, made: Sequence[float], seconds: float) -> int:
    """Tokens until the next length check of rows that made ``made`` seconds (each short of
    ``seconds``) in ``n_new`` tokens: half of what the rate of the row nearest its length says it
    still needs, between ``SECONDS_CHECK_EVERY`` and 4 times that (a rate read off a row's first
    notes can be far off; a row with no new music yet is checked again soon)."""
    need = [0.5 * (seconds - new) * n_new / new for new in made if new > 0]
    if len(need) < len(made) or not need:
        return SECONDS_CHECK_EVERY
    return int(min(max(SECONDS_CHECK_EVERY, min(need)), 4 * SECONDS_CHECK_EVERY))


# --------------------------------------------------------------------------- the sampler


@dataclass
class SamplingConfig:
    """Every sampling option, from ``partita generate`` to ``sample`` (one object, one path).

    Filters: ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``min_p``; ``seed``.
    Length: ``max_new_tokens``, ``bars`` (new bars), ``seconds`` (beyond the prompt), whichever
    comes first; when one is asked for, EOS is masked until it is reached, so the sample has that
    length, unless ``allow_early_end`` (then the model may end the piece sooner). Without any,
    at most ``DEFAULT_MAX_NEW_TOKENS`` and the model may end it. ``allow_eos=False`` never
    samples EOS at all.
    Instruments: ``programs`` = "auto" (the programs of the prompt's notes; any when the prompt
    has none), "all", or General MIDI program numbers (-1 = drums): ids that write a note of
    another program are masked.
    Decoding: ``keep_label`` (module doc, windows), ``batch_size`` (rows decoded at once),
    ``threads`` (None = choose: the faster of 1 and all intra-op threads, measured while
    decoding; the tokens are the same whatever the count); ``prompt_read``: at most this many
    of a prompt's last tokens are read (None: as many as the window and memories hold);
    ``prompt_bf16``: read prompt windows of at least ``BF16_PROMPT_ROWS`` tokens under bf16
    autocast, as the models were trained (None = on a CPU with bf16 instructions, an fp32 model
    on it; 1.6x faster there, the first token after a whole piano file in about 60% of the
    time); decoding steps stay in fp32.
    """

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    seed: int = 0
    max_new_tokens: Optional[int] = None
    bars: Optional[int] = None
    seconds: Optional[float] = None
    allow_early_end: bool = False
    allow_eos: bool = True
    programs: Any = "auto"
    keep_label: bool = True
    batch_size: Optional[int] = None
    threads: Optional[int] = None
    prompt_read: Optional[int] = PROMPT_READ_TOKENS
    prompt_bf16: Optional[bool] = None

    def replace(self, **changes: Any) -> "SamplingConfig":
        """A copy with ``changes`` (field names; unknown names are a one-line error)."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise PartitaError(f"unknown sampling option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def checked(self) -> "SamplingConfig":
        """Validated copy (whole numbers, ranges, programs as a tuple or None); PartitaError else."""
        _check_filters(self.temperature, self.top_k, self.top_p, self.min_p)
        c = dataclasses.replace(self)
        for name in ("max_new_tokens", "bars", "batch_size", "threads", "prompt_read"):
            setattr(c, name, _positive_int(getattr(c, name), name.replace("_", "-")))
        if c.seconds is not None and not (math.isfinite(float(c.seconds)) and float(c.seconds) > 0):
            raise PartitaError(f"seconds must be > 0, got {c.seconds}")
        c.programs = parse_programs(c.programs)
        return c

    @property
    def length_asked(self) -> bool:
        return self.max_new_tokens is not None or self.bars is not None or self.seconds is not None


def parse_programs(programs: Any) -> Any:
    """"auto", None (= "all": any program) or a tuple of programs from a sequence of numbers or
    text like ``"0,1"`` / ``"piano,drums"``; PartitaError for anything else."""
    if programs is None or (isinstance(programs, str) and programs.strip().lower() in ("all", "any")):
        return None
    if isinstance(programs, str):
        text = programs.strip().lower()
        if text == "auto":
            return "auto"
        items: list[Any] = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    else:
        items = list(programs)
    out = []
    for p in items:
        if isinstance(p, str):
            named = {"piano": 0, "drums": -1}
            if p in named:
                out.append(named[p])
                continue
            try:
                p = int(p)
            except ValueError:
                raise PartitaError(f"programs are General MIDI numbers 0-127, -1 or 'drums', 'piano', 'all' or 'auto', not {p!r}") from None
        if isinstance(p, bool) or int(p) != p or not -1 <= int(p) <= 127:
            raise PartitaError(f"a program is a General MIDI number 0-127 (or -1 for drums), not {p}")
        out.append(int(p))
    if not out:
        raise PartitaError("programs: give at least one program number (or 'all')")
    return tuple(sorted(set(out)))


class _ProgramTable:
    """Per id: the programs its base tokens write (``Program_X``), for masking instruments."""

    def __init__(self, tokenizer: Any):
        self.table = table = _expansion(tokenizer)
        _, g = _grammar(tokenizer)
        base_prog = np.full(len(table.base_special), -2, np.int64)  # -2: not a Program token
        for b, s in enumerate(g.strings):
            if s.startswith("Program_"):
                base_prog[b] = int(s.split("_", 1)[1])
        self.base_program = base_prog
        n = len(table.lengths)
        hits: dict[int, list[int]] = {}
        for i in range(n):
            for b in table.flat[table.starts[i] : table.starts[i] + table.lengths[i]]:
                if base_prog[b] != -2:
                    hits.setdefault(int(base_prog[b]), []).append(i)
        self.ids_of = {p: np.unique(np.array(v, np.int64)) for p, v in hits.items()}  # program -> ids
        self.n = n

    def programs_in(self, ids: np.ndarray) -> set:
        """The programs of the notes in ``ids``."""
        base, _ = self.table.expand(np.asarray(ids, np.int64))
        found = self.base_program[base]
        return set(found[found != -2].tolist())

    def banned(self, allowed: Optional[Sequence[int]]) -> np.ndarray:
        """Bool ``[V]``: ids that write a note of a program not in ``allowed`` (None: nothing)."""
        out = np.zeros(self.n, bool)
        if allowed is None or not self.ids_of:
            return out
        for p, ids in self.ids_of.items():
            if p not in allowed:
                out[ids] = True
        return out  # (an id that writes an allowed program and another one is banned)


def _program_table(tokenizer: Any) -> _ProgramTable:
    table = _expansion(tokenizer)
    pt = getattr(table, "_partita_programs", None)
    if pt is None:
        pt = table._partita_programs = _ProgramTable(tokenizer)
    return pt


@dataclass
class SampledIds:
    """One sample: ``ids`` = the prompt's song tokens, then the sampled ones (label not included;
    EOS last when the model ended the piece)."""

    ids: np.ndarray
    prompt_length: int
    stop: str  # "eos" | "tokens" | "bars" | "seconds"
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
    if int(value) != value or int(value) < 1:
        raise PartitaError(f"{name} must be a whole number >= 1, got {value}")
    return int(value)


def _check_model(model: Any, tokenizer: Any) -> None:
    from partita.represent.tokens import _check_tokenizer

    _check_tokenizer(tokenizer)
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
    strip = set(np.flatnonzero(_expansion(tokenizer).special).tolist()) - {bos}  # EOS, PAD...: not at a prompt's end
    clean: list[np.ndarray] = []
    for p in _as_prompt_list(prompts):
        if isinstance(p, FillPrompt):
            clean.append(p)
            continue
        ids = np.zeros(0, np.int64) if p is None else _ids_array(p)
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
    table = _expansion(tokenizer)
    clean = _clean_prompts(tokenizer, prompts)
    base_ban = table.special.copy()
    base_ban[eos] = not (cfg.allow_eos and (cfg.allow_early_end or not cfg.length_asked))
    programs = _program_table(tokenizer)
    bans: list[np.ndarray] = []
    for ids in clean:
        allowed = cfg.programs
        if allowed == "auto":
            allowed = tuple(sorted(programs.programs_in(ids.song if isinstance(ids, FillPrompt) else ids))) or None
        bans.append(base_ban | programs.banned(allowed))

    runner = _Runner(model, tokenizer, cfg, cap=max_new_tokens, label_id=model.label_token(label), eos=eos,
                     progress=progress, n_rows=len(clean) * n)
    rows = [(pi, si) for pi in range(len(clean)) for si in range(n)]
    groups: dict[int, list[int]] = {}
    for r, (pi, _) in enumerate(rows):
        groups.setdefault(len(clean[pi]), []).append(r)
    results: list[Optional[SampledIds]] = [None] * len(rows)
    with torch.inference_mode(), _eval_mode(model), model.decode_layout(), _threads(None):
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
    runner = _Runner(model, tokenizer, cfg, cap=1, label_id=model.label_token(label), eos=eos,
                     progress=None, n_rows=1)
    runner.chunk = chunk
    with torch.inference_mode(), _eval_mode(model), model.decode_layout():
        runner.start([(0, 0)], clean)
        return runner.feed_prompt()[0].float()


class _ThreadChooser:
    """Picks the intra-op thread count of decoding steps (or prompt windows): 1 or ``n``, by
    timing them. It starts on one thread; after ``WARM`` steps it tries ``n`` threads for up to
    ``PROBE`` steps, giving up at the first one slower than ``1.25x`` the current count's median;
    the winner stays until the next try, ``EVERY`` steps later, twice as late after each failed
    try (a failed try on a busy machine is expensive: a one-token step split over busy cores
    waits for the slowest, PyTorch's OpenMP threads spin at a barrier, and 2 threads ran 10-50x
    slower than 1 on a loaded 2-core machine). Tokens do not depend on the count
    (``partita.nn.linear``: a fixed layout)."""

    WARM = 4
    PROBE = 4
    EVERY = 256

    def __init__(self, n: int, fixed: Optional[int], probe: int = PROBE, warm: int = WARM):
        self.PROBE, self.WARM = probe, warm
        self.auto = fixed is None and n > 1
        self.n = n
        self.best = 1 if self.auto else (fixed or n)
        self.next_try, self.every = warm, self.EVERY
        self.step = 0
        self.recent: list[float] = []  # step times with ``best``
        self.trial: list[float] = []  # step times of the current try (None: not trying)
        self.trying = False
        self._t = 0.0

    @staticmethod
    def _median(x: list[float]) -> float:
        return sorted(x)[len(x) // 2]

    def begin(self) -> None:
        if self.auto and not self.trying and self.step >= self.next_try and self.recent:
            self.trying, self.trial = True, []
        k = (self.n if self.best == 1 else 1) if self.trying else self.best
        if torch.get_num_threads() != k:
            torch.set_num_threads(k)
        self._t = time.perf_counter()

    def end(self) -> None:
        dt = time.perf_counter() - self._t
        self.step += 1
        if not self.auto:
            return
        if not self.trying:
            self.recent = (self.recent + [dt])[-5:]
            return
        self.trial.append(dt)
        base = self._median(self.recent)
        if dt > 1.25 * base:  # the other count loses: keep ours, try again later
            self.trying = False
            self.every *= 2
            self.next_try = self.step + self.every
        elif len(self.trial) >= self.PROBE:
            self.trying = False
            if self._median(self.trial) < base:
                self.best = self.n if self.best == 1 else 1
                self.recent = self.trial[-5:]
            self.every = self.EVERY
            self.next_try = self.step + self.every


class _Runner:
    """Decodes batches of rows that share a prompt length (see ``sample``)."""

    chunk: Optional[int] = None  # tokens per forward pass when reading a prompt; None: a window
    prefill_threads: Optional["_ThreadChooser"] = None

    def __init__(self, model: Any, tokenizer: Any, cfg: SamplingConfig, *, cap, label_id, eos, progress, n_rows):
        self.model, self.tokenizer, self.sc = model, tokenizer, cfg
        self.cfg = mc = model.config
        self.filters = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p)
        self.seed, self.cap, self.bars = cfg.seed, cap, cfg.bars
        self.seconds = None if cfg.seconds is None else float(cfg.seconds)
        self.label_id, self.eos = label_id, eos
        weight = next(model.parameters())
        self.device = weight.device
        self.bf16_prompt = cfg.prompt_bf16 if cfg.prompt_bf16 is not None else (
            weight.device.type == "cpu" and weight.dtype == torch.float32 and cpu_bf16_flag() is not None)
        self.progress = progress
        self.done, self.total = 0, cap * n_rows
        self.memories = bool(getattr(mc, "xl_memory", False) or getattr(mc, "knn_memory", False))
        if self.memories:
            self.mode = "memory"
        elif mc.positions == "learned":
            self.mode = "learned"
        else:
            self.mode = "sink" if cfg.keep_label else "window"
        self.timed = bool(mc.bar_embeddings) or cfg.bars is not None
        self.C = int(mc.context)
        self.xl_len = int(mc.xl_length or mc.context) if getattr(mc, "xl_memory", False) else 0
        self._label_kv: Optional[list] = None
        self._clocks: dict[int, SecondsClock] = {}

    # ------------------------------------------------------------------ model calls

    def _forward(self, ids, bars=None, positions=None, window=None):
        kw = {}
        if self.cfg.bar_embeddings:
            kw = {"bars": bars, "positions": positions}
        if self.bf16_prompt and ids.shape[1] >= BF16_PROMPT_ROWS:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits, _ = self.model(ids, cache=self.cache, xl=self.xl, knn=self.knn, window=window, last_only=True, **kw)
            return logits[:, -1].float()
        logits, _ = self.model(ids, cache=self.cache, xl=self.xl, knn=self.knn, window=window, last_only=True, **kw)
        return logits[:, -1]

    def _feed(self, a: int, b: int, window=None):
        """Feed ``seq[:, a:b]`` (cached tokens are ``seq[:, :a]`` or a window of them)."""
        return self._forward(self.seq[:, a:b], self.bars_seq[:, a:b], self.pos_seq[:, a:b], window)

    def _feed_window(self, first: int, end: int):
        """Feed ``[label, seq[first:end]]`` (a new window or segment); the label's bar input is
        the bar of ``seq[first]`` (training's convention)."""
        s = self.seq
        ids = torch.cat([s[:, :1], s[:, first:end]], dim=1)
        bars = torch.cat([self.bars_seq[:, first : first + 1], self.bars_seq[:, first:end]], dim=1)
        pos = torch.cat([torch.zeros_like(self.pos_seq[:, :1]), self.pos_seq[:, first:end]], dim=1)
        return self._forward(ids, bars, pos)

    def _label_states(self) -> list:
        """Per layer ``(k, v)`` of the label token at position 0, ``[M, H, 1, Dh]``, one row per bar
        input value (M = max_bars with bar embeddings, else 1). Position 0 leaves keys unrotated."""
        if self._label_kv is None:
            M = int(self.cfg.max_bars) if self.cfg.bar_embeddings else 1
            ids = torch.full((M, 1), self.label_id, dtype=torch.long, device=self.device)
            tmp = self.model.new_cache()
            kw = {}
            if self.cfg.bar_embeddings:
                kw = {"bars": torch.arange(M, device=self.device)[:, None],
                      "positions": torch.zeros(M, 1, dtype=torch.long, device=self.device)}
            self.model(ids, cache=tmp, last_only=True, **kw)
            self._label_kv = [(tmp.k[i], tmp.v[i]) for i in range(tmp.n_layer)]
        return self._label_kv

    def _slide_sink(self) -> None:
        """Make room for one token: drop the label and the oldest tokens, put the label back
        right before the window (rotated to its new position, states for its new bar input)."""
        cache = self.cache
        drop = len(cache) - (self.C - 1)  # tokens to drop (1 once the window is full)
        self.ws += drop
        pos = self.ws - 1
        rows = torch.zeros(self.seq.shape[0], dtype=torch.long, device=self.device)
        if self.cfg.bar_embeddings:
            rows = self.bars_seq[:, self.ws] % int(self.cfg.max_bars)
        cache.crop(len(cache) - 1 - drop)  # the label and the oldest tokens leave
        cos = sin = None
        for i, (lk, lv) in enumerate(self._label_states()):
            k, v = lk[rows], lv[rows]
            if cos is None:
                cos, sin = self.model.rotary.span(pos, 1, device=self.device, dtype=k.dtype)
            cache.prepend(i, apply_rotary(k, cos, sin), v)
        cache.offset = pos

    def _learned_keep(self) -> int:
        return max(2, self.C - max(1, self.C // 4))

    def _recompute(self, length: int):
        """Learned positions, window full: recompute ``[label, last K-1 tokens]`` (the newest,
        ``seq[length-1]``, included) from scratch."""
        K = self._learned_keep()
        first = length - (K - 1)
        self.cache.reset(self.cache.offset)
        self.ws = first
        return self._feed_window(first, length)

    # ------------------------------------------------------------------ segments (memory models)

    def _close_segment(self) -> None:
        """The current segment (``C`` inputs, label first) is complete: it becomes memory, as a
        training segment does. RoPE: the cache keeps the last ``xl_length`` positions (the XL
        memory lives in the cache, ``GPT`` attends to it with the window in one call) and the
        segment's keys of the kNN layer go into the kNN memory, un-rotated. Learned positions:
        ``crop_cache`` moves the segment into separate XL/kNN memories."""
        model, cache = self.model, self.cache
        if self.xl is not None:  # learned positions
            model.crop_cache(cache, 0, xl=self.xl, knn=self.knn)
        else:
            n = len(cache)
            if self.knn is not None:
                i, layer = n - self.seg, model.knn_layer
                model._add_to_knn(self.knn, cache.k[layer][:, :, i:], cache.v[layer][:, :, i:], cache.offset + i)
            cache.crop(self.xl_len)
        self.seg = 0

    def _feed_segments(self, a: int, b: int):
        """Feed song tokens ``seq[:, a:b]`` as training's contiguous segments: ``[label, C-1
        tokens]`` each, a full segment becoming memory before the next one starts. One forward
        pass per ``chunk`` tokens (default: as many as the segment has room for); the logits do
        not depend on the chunking."""
        logits = None
        threads = self.prefill_threads if b - a > 1 else None
        while a < b:
            if threads is not None:
                threads.begin()
            if self.seg >= self.C:
                self._close_segment()
            room = self.C - self.seg - (1 if self.seg == 0 else 0)
            k = min(b - a, room, self.chunk or room)
            if self.seg == 0:
                logits = self._feed_window(a, a + k)
                self.seg = 1 + k
            else:
                logits = self._feed(a, a + k)
                self.seg += k
            a += k
            if threads is not None:
                threads.end()
        return logits

    # ------------------------------------------------------------------ prompt and steps

    def _step_feed(self, length: int):
        """Feed the newest token ``seq[:, length-1]``, sliding the window first if it is full."""
        C, cache = self.C, self.cache
        if self.mode == "memory":
            return self._feed_segments(length - 1, length)
        if self.mode == "learned":
            if len(cache) >= C:
                return self._recompute(length)
        elif len(cache) >= C:
            if self.mode == "sink":
                self._slide_sink()
            else:
                self.model.crop_cache(cache, C - 1)
        return self._feed(length - 1, length)

    def _prompt_start(self, L: int) -> int:
        """First index of ``seq`` (1 = the prompt's first token) the prompt is read from: what
        the window and the memories can hold of its end."""
        C, mc = self.C, self.cfg
        if self.mode == "memory":
            held = C - 1 + self.xl_len
            if getattr(mc, "knn_memory", False):
                held = max(held, int(mc.knn_max_memory) + C - 1)
            elif self.xl_len:
                held = int(mc.n_layer) * self.xl_len + C - 1
            if self.sc.prompt_read is not None:
                held = min(held, max(self.sc.prompt_read, C - 1))
            return max(1, L - held)
        if self.mode == "window":  # sliding windows: a token sees n_layer * (C - 1) tokens back
            return max(1, L - 1 - int(mc.n_layer) * (C - 1))
        return max(1, L - (C - 1))

    def feed_prompt(self):
        L, C = self.L, self.C
        first = self._prompt_start(L)
        self.cache.offset = first - 1  # the label's position: what is left out is skipped, not shifted
        if self.mode == "memory":
            self.seg = 0
            return self._feed_segments(first, L)
        self.ws = first
        if self.mode in ("sink", "learned"):
            return self._feed_window(first, L)
        # "window": windowed attention over the prompt, C tokens at a time (= forward(window=C))
        step = self.chunk or C
        logits = self._feed_window(first, min(first + step - 1, L))
        for a in range(first + step - 1, L, step):
            self.model.crop_cache(self.cache, C - 1)
            logits = self._feed(a, min(a + step, L), window=C)
        return logits

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
        for name in ("gens", "meta", "bar_limit", "clocks"):
            setattr(self, name, [getattr(self, name)[j] for j in keep])

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _clock_of(self, pi: int, prompt: np.ndarray) -> SecondsClock:
        if pi not in self._clocks:
            self._clocks[pi] = SecondsClock(self.tokenizer, prompt)
        return self._clocks[pi]

    def _seconds_cut(self, b: int, lo: int, hi: int) -> tuple[Optional[int], float]:
        """``(m, new)``: the shortest length ``m`` in ``[lo, hi]`` (of ``seq[b]``, label included)
        whose piece lasts ``seconds`` more than its prompt, or None when even ``hi`` does not;
        ``new``: the seconds that length ``hi`` adds to the prompt."""
        clock = self.clocks[b]
        row = self.seq[b].cpu().numpy()[1 + clock.anchor :]
        target = clock.prompt_end + self.seconds
        new = clock.end(row[: hi - 1 - clock.anchor]) - clock.prompt_end
        if new < self.seconds:
            return None, new

        def long_enough(m: int) -> bool:
            return clock.end(row[: m - 1 - clock.anchor]) >= target

        while lo < hi:
            mid = (lo + hi) // 2
            if long_enough(mid):
                hi = mid
            else:
                lo = mid + 1
        return hi, new

    def start(self, rows: list[tuple[int, int]], prompts: list[np.ndarray]) -> None:
        """Set up the batch of ``rows``: sequences, timing, generators, stops, caches."""
        model, cfg, dev = self.model, self.cfg, self.device
        B = len(rows)
        self.P = P = len(prompts[rows[0][0]])
        self.L = L = 1 + P
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
        self.gens = [row_generator(self.seed, pi, si, dev) for pi, si in rows]
        self.meta = list(range(B))
        self.bar_limit = [None] * B
        if fill:
            self.bar_limit = [int(prompts[pi].end_bar) for pi, _ in rows]
        elif self.bars is not None:
            special = _expansion(self.tokenizer).special
            for b, (pi, _) in enumerate(rows):
                has_music = bool((~special[prompts[pi]]).any())
                self.bar_limit[b] = int(self.bars_seq[b, L - 1]) + self.bars + (1 if has_music else 0)
        self.clocks = [None] * B
        if self.seconds is not None and not fill:
            self.clocks = [self._clock_of(pi, prompts[pi]) for pi, _ in rows]
        self.cache = model.new_cache()
        # RoPE models keep their XL memory in the cache (_close_segment); learned positions do not
        learned = cfg.positions == "learned"
        self.xl = model.new_xl_memory(B) if getattr(cfg, "xl_memory", False) and learned else None
        self.knn = model.new_knn_memory(B) if getattr(cfg, "knn_memory", False) else None

    def _stop(self, b: int, tok: int, bar: Optional[int], n_new: int) -> Optional[tuple[int, str]]:
        """``(end, reason)`` when row ``b`` stops after its newest token (length ``self.L``)."""
        if tok == self.eos:
            return self.L, "eos"
        if self.bar_limit[b] is not None and bar >= self.bar_limit[b]:
            return self.L - 1, "bars"  # this token starts a bar too many: not kept
        if n_new >= self.cap:
            return self.L, "tokens"
        return None

    def run(self, rows: list[tuple[int, int]], prompts: list[np.ndarray], banned: torch.Tensor) -> list[SampledIds]:
        dev = self.device
        threads = _ThreadChooser(torch.get_num_threads(), self.sc.threads)
        self.prefill_threads = _ThreadChooser(torch.get_num_threads(), self.sc.threads, probe=1, warm=1)
        self.start(rows, prompts)
        self.banned = banned.to(dev)
        logits = self.feed_prompt()
        out: list[Optional[SampledIds]] = [None] * len(rows)
        L0, P = self.L, self.P

        def finish(b: int, end: int, stop: str) -> None:
            pi, si = rows[self.meta[b]]
            ids = self.seq[b, 1:end].cpu().numpy().astype(np.int64)
            out[self.meta[b]] = SampledIds(ids=ids, prompt_length=P, stop=stop, prompt_index=pi, sample_index=si)
            self.total -= self.cap - (end - L0)  # the budget it did not use
            self.done -= self.L - end  # sampled tokens it did not keep

        n_new = 0
        last_check, next_check = self.L, SECONDS_CHECK_EVERY
        tb = None
        while True:
            tok = choose(logits, self.gens, banned=self.banned, **self.filters)
            tok_np = tok.cpu().numpy()
            self.seq[:, self.L] = tok
            if self.tracker is not None:
                tb, tp = self.tracker.push(tok_np)
                self.bars_seq[:, self.L] = torch.from_numpy(tb).to(dev)
                self.pos_seq[:, self.L] = torch.from_numpy(tp).to(dev)
            self.L += 1
            n_new += 1
            self.done += len(tok_np)
            keep = []
            for b in range(len(tok_np)):
                stop = self._stop(b, int(tok_np[b]), None if tb is None else int(tb[b]), n_new)
                if stop is None:
                    keep.append(b)
                else:
                    finish(b, *stop)
            if self.seconds is not None and keep and n_new >= next_check:
                still, made = [], []
                for b in keep:
                    cut, new = self._seconds_cut(b, last_check + 1, self.L)
                    if cut is None:
                        still.append(b)
                        made.append(new)
                    else:
                        finish(b, cut, "seconds")
                keep = still
                last_check = self.L
                next_check = n_new + seconds_check_gap(n_new, made, self.seconds)
            self._report()
            if not keep:
                break
            if len(keep) < len(tok_np):
                self._select(keep)
            threads.begin()
            logits = self._step_feed(self.L)
            threads.end()
        return out
