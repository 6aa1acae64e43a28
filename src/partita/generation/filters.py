"""What a sampled token may be: the filters of the next-token distribution and the masks.

``choose`` turns the logits of the last position into one id per row, in this order (each filter
works on the distribution the previous one left, renormalized, and always keeps the most likely
token):

1. ids that must never be generated are removed (``banned``: special tokens, EOS until the length
   asked is reached, notes of other instruments, time signatures of another metre);
2. ``temperature``: logits are divided by it; ``temperature=0`` means greedy (argmax);
3. ``top_k``: keep the ``k`` most likely ids (ties with the k-th are kept);
4. ``top_p`` (nucleus): keep the smallest set of most likely ids whose probability reaches
   ``top_p`` (the id that crosses it is kept);
5. ``min_p``: keep the ids whose probability is at least ``min_p`` times the top one's;
6. draw from what is left with the row's own ``torch.Generator`` (``row_generator``: seeded from
   ``(seed, prompt, sample)``, so sample ``j`` of a prompt does not depend on ``n``, the batch
   size or which rows finished early).

``banned_ids`` builds the mask of step 1 for one prompt.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from partita.errors import PartitaError
from partita.represent.token_tables import TokenTables

__all__ = ["PIANO_PROGRAMS", "banned_ids", "check_filters", "choose", "filter_logits", "parse_programs",
           "parse_time_signatures", "row_generator", "bar_metres", "held_metres"]

#: General MIDI's piano family (Acoustic Grand ... Clavinet): one instrument to a model.
PIANO_PROGRAMS = tuple(range(8))


def check_filters(temperature: float, top_k: Optional[int], top_p: Optional[float], min_p: Optional[float]) -> None:
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
    check_filters(temperature, top_k, top_p, min_p)
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
    check_filters(temperature, top_k, top_p, min_p)
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


def parse_time_signatures(value: Any) -> Optional[tuple[tuple[int, int], ...]]:
    """None (any metre) or a tuple of ``(numerator, denominator)`` from pairs or text like
    ``"3/4"`` / ``"6/8,9/8"``; PartitaError for anything else."""
    if value is None:
        return None
    items = [v.strip() for v in value.replace(" ", ",").split(",") if v.strip()] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            num, den = (int(x) for x in item.split("/")) if isinstance(item, str) else (int(item[0]), int(item[1]))
        except (TypeError, ValueError, IndexError):
            raise PartitaError(f"a time signature is written like 3/4, not {item!r}") from None
        if num < 1 or den < 1 or den & (den - 1):
            raise PartitaError(f"a time signature needs a numerator >= 1 and a power-of-two denominator, not {num}/{den}")
        out.append((num, den))
    if not out:
        raise PartitaError("time signatures: give at least one, like 4/4 (or none for any)")
    return tuple(sorted(set(out)))


def banned_ids(tables: TokenTables, *, eos: int, ban_eos: bool, programs: Any, song: np.ndarray,
               time_signatures: Optional[Sequence[tuple[int, int]]] = None) -> np.ndarray:
    """Bool ``[V]``: the ids a sample continuing ``song`` (its ids) may never take.

    Special tokens (EOS too when ``ban_eos``); ids writing a note of a program not allowed
    (``programs``: "auto" = the programs of ``song``'s notes, where any piano program 0-7 allows
    every other, since a model writes one piano; None = any; or a tuple); ids writing a time
    signature not in ``time_signatures`` (None = any).
    """
    ban = tables.special.copy()
    ban[eos] = bool(ban_eos)
    allowed = programs
    if allowed == "auto":
        found = tables.programs.programs_in(song)
        if found & set(PIANO_PROGRAMS):
            found |= set(PIANO_PROGRAMS)
        allowed = tuple(sorted(found)) or None
    ban |= tables.programs.banned(allowed)
    if time_signatures is not None:
        wanted = {tuple(ts) for ts in time_signatures}
        base_bad = np.array([t[1] > 0 and (int(t[0]), int(t[1])) not in wanted for t in tables.ts], bool)
        if base_bad.any():
            owner = np.repeat(np.arange(len(tables.lengths)), tables.lengths)
            ban[np.unique(owner[base_bad[tables.flat]])] = True
    return ban


def bar_metres(tables: TokenTables) -> Optional[frozenset]:
    """The metres a tokenizer's BPE merged with a bar line (``Bar+TimeSig_n/d`` in one id): the
    metres of most bars of the data it was trained on. None when no id merges the two (nothing
    to tell from the vocabulary)."""

    def build() -> Optional[frozenset]:
        found = set()
        for i in np.flatnonzero(tables.lengths >= 2):
            base = tables.flat[tables.starts[i] : tables.starts[i] + tables.lengths[i]]
            for a, b in zip(base[:-1], base[1:]):
                if tables.is_bar[a] and tables.ts[b][1] > 0:
                    found.add((int(tables.ts[b][0]), int(tables.ts[b][1])))
        return frozenset(found) or None

    return tables.memo("bar_metres", build)


def held_metres(tables: TokenTables, file_metres: Sequence[tuple[int, int]]) -> Optional[tuple[tuple[int, int], ...]]:
    """The metres to hold a model to when it edits a file of ``file_metres``: those, when the
    model writes bars of each (``bar_metres``; or the vocabulary cannot tell), else None (any).

    A model that met a metre too seldom to merge its bar line cannot end a bar of it: its merged
    ``Bar+TimeSig_4/4`` ids are masked, and it stacks notes at the bar's last positions. Held to
    2/4 after 16 bars of a POP909 song, gpt-piano (bars of 4/4 only) wrote 673 and 637 notes in
    11.7 s (to the token cap); free, 127 and 128 in 11 s. Free after 30 s of Bach fugues it
    wrote 107-184 notes in 10 s in 2/4 (the score: 157), 157-279 in 3/4 (137), 93-129 in 6/8
    (180). Its new notes keep their beats in the file either way (``partita.edit``), and an
    infilled span never spills.
    """
    known = bar_metres(tables)
    wanted = tuple(sorted({(int(a), int(b)) for a, b in file_metres}))
    if known is None or set(wanted) <= known:
        return wanted
    return None
