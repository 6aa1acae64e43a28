"""Infilling: regenerate a span of bars of a piece, given the music before and after it.

::

    import partita.generation
    results = partita.generation.infill("gpt-piano", "piece.mid", bars=(9, 12), n=2, seed=0)
    results[0].score  # the whole piece, bars 9-12 regenerated, every other note as it was

The model must have been trained with the fill-in-the-middle arrangement (``partita train gpt
--fim``; ``partita.data.streams``): it reads ``[label, SUFFIX, suffix, MIDDLE, prefix]``, every
token with its real bar and position in bar, and writes the middle as the prefix's continuation;
``sample`` (the one sampling path, ``SamplingConfig``'s options) stops it before its first token
in the bar where the suffix starts. The prompt is laid out as in training: the start of a long
prefix is read window by window into the memories (as much as they hold), the last window holds
the markers, the suffix (at most ``SUFFIX_TOKENS`` of it) and the end of the prefix, and leaves
room for the middle.

Bars are the file's own, counted in its time signatures (``partita.io.timing.bar_starts``; 4/4
before the first); ``seconds=(a, b)`` selects the bars that the time range touches (whole bars
are regenerated: the model writes bars). The model reads the file as ``partita.edit.prompt_view``
says, regenerates the bars of its own view that cover the span, and is held to the file's metre
(``SamplingConfig.time_signatures``). The output is the user's score with the notes that start
in the span removed and the new notes that start in it added (``partita.edit.splice``: same
beats, the tracks by ``TRACK_RULE``): no new note starts outside the span, every note that starts
outside it and every meta event is kept exactly, and ``notes_removed``/``notes_added`` count the
span's notes only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import symusic
from symusic import Score

from partita.errors import PartitaError
from partita.generation.sampling import FillPrompt, SamplingConfig, decode_safe, sample

__all__ = ["Infilled", "SUFFIX_TOKENS", "fill_layout", "infill", "parse_span", "suffix_bits"]

#: At most this many suffix tokens are shown to the model (about 4-8 bars of piano music).
SUFFIX_TOKENS = 160


@dataclass
class Infilled:
    """One infilled piece: ``score`` (the whole piece), the span and what was written in it."""

    score: Score
    bars: tuple[int, int]  # the regenerated bars, 1-based, inclusive
    ticks: tuple[int, int]  # their time range in the file's ticks, [start, end)
    middle: np.ndarray  # the sampled middle's token ids
    notes_removed: int
    notes_added: int
    stop: str
    index: int = 0
    candidates: int = 1  # sampled middles this one was chosen from (by suffix_bits)
    suffix_bits: Optional[float] = None  # bits/token of the music after the span after this middle (candidates > 1)


def parse_span(text: Any, what: str) -> tuple[float, float]:
    """``"9-12"`` (or a pair) -> ``(9, 12)``; a one-line error for anything else."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        a, b = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*[-:]\s*([0-9]+(?:\.[0-9]*)?)\s*", str(text))
        if not m:
            raise PartitaError(f"--{what} takes a range like 9-12, not {text!r}")
        a, b = m.groups()
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        raise PartitaError(f"--{what} takes a range like 9-12, not {text!r}") from None
    if what == "bars":
        if a != int(a) or b != int(b) or a < 1:
            raise PartitaError(f"--bars takes whole bar numbers from 1, like 9-12, not {text!r}")
    elif a < 0:
        raise PartitaError(f"--seconds takes times from 0, like 10-20, not {text!r}")
    if b < a or (what == "seconds" and b == a):
        raise PartitaError(f"--{what} {text!r}: the range ends before it starts")
    return a, b


def fill_layout(model: Any, tokenizer: Any, ids: np.ndarray, first_bar: int, end_bar: int,
                *, suffix_tokens: int = SUFFIX_TOKENS) -> tuple[FillPrompt, np.ndarray]:
    """The ``FillPrompt`` that fills bars ``[first_bar, end_bar)`` (0-based) of the song ``ids``
    (``[BOS, ..., EOS]``), and the original middle's ids. The prefix is cut so that the last
    training-sized window starts with the end of the prefix (module doc)."""
    from partita.represent.tokens import token_timing

    ids = np.asarray(ids, np.int64)
    bars, positions = token_timing(tokenizer, ids)
    music = ~_special(tokenizer)[ids]
    a = int(np.searchsorted(bars, first_bar, side="left"))
    c = int(np.searchsorted(bars, end_bar, side="left"))
    a = max(a, 1)  # BOS stays in the prefix
    if c >= len(ids) or not music[c:].any():
        raise PartitaError(f"nothing after bar {end_bar}: infilling needs music after the span (use partita generate to continue a piece)")
    if not music[:a].any():
        raise PartitaError(f"nothing before bar {first_bar + 1}: infilling needs music before the span")
    end = len(ids) - (1 if ids[-1] == _eos(tokenizer) else 0)
    suf, mid = model.fill_token("suffix"), model.fill_token("middle")
    C = int(model.config.context)
    # the last window holds the markers, the suffix, at least 16 prefix tokens and room for the
    # middle: a small context shows less of the suffix
    middle_room = min(c - a, C // 2)
    s_end = min(end, c + int(suffix_tokens), c + max(1, (C - 1) - 2 - 16 - middle_room))
    room = max(16, (C - 1) - 2 - (s_end - c) - middle_room)  # prefix tokens in the last window
    last = start = 0  # the last window's prefix starts at `last`, the layout at `start`
    if a > room:  # earlier prefix windows go whole into the memories, as many as they hold
        last = a - room
        start = max(last % (C - 1), last - _memory_windows(model.config) * (C - 1))
    layout = np.concatenate([ids[start:last], [suf], ids[c:s_end], [mid], ids[last:a]]).astype(np.int64)
    lb = np.concatenate([bars[start:last], [bars[c]], bars[c:s_end], [bars[last]], bars[last:a]]).astype(np.int64)
    lp = np.concatenate([positions[start:last], [0], positions[c:s_end], [0], positions[last:a]]).astype(np.int64)
    prompt = FillPrompt(ids=layout, bars=lb, positions=lp, prefix=ids[:a], song=np.concatenate([ids[:a], ids[c:end]]),
                        end_bar=int(end_bar), suffix=ids[c:s_end])
    return prompt, ids[a:c]


def _memory_windows(config: Any) -> int:
    """Whole prefix windows worth reading before the last one: what the memories hold (the kNN
    memory's keys, or every layer's XL memory), so that the sampler reads the layout from its
    start and the last window begins with SUFFIX, as in training."""
    C1 = int(config.context) - 1
    if getattr(config, "knn_memory", False):
        return int(config.knn_max_memory) // C1
    if getattr(config, "xl_memory", False):
        return int(config.n_layer) * int(config.xl_length or config.context) // C1
    return 0


def _special(tokenizer: Any) -> np.ndarray:
    from partita.represent.token_tables import token_tables

    return token_tables(tokenizer).special


def _eos(tokenizer: Any) -> int:
    from partita.represent.tokens import special_id

    return special_id(tokenizer, "EOS")


def _span_ticks(score: Score, bars: Any, seconds: Any) -> tuple[int, int, int, int]:
    """``(first, end, t0, t1)``: the 0-based bars ``[first, end)`` of the file (in its own metre,
    ``partita.io.timing.bar_starts``) from ``bars=(9, 12)`` (1-based, inclusive) or the bars the
    time range ``seconds`` touches, and their ticks ``[t0, t1)``."""
    from partita.io.timing import bar_of, bar_starts, ticks_at

    if (bars is None) == (seconds is None):
        raise PartitaError("give the span to regenerate as --bars A-B or --seconds A-B (one of them)")
    if bars is not None:
        a, b = parse_span(bars, "bars")
        first, end = int(a) - 1, int(b)
    else:
        a, b = parse_span(seconds, "seconds")
        t0, t1 = (int(x) for x in ticks_at(score, [a, b]))
        starts = bar_starts(score, t1)
        first, end = int(bar_of(starts, t0)), int(bar_of(starts, max(t1 - 1, t0))) + 1
    starts = bar_starts(score, 0, bars=end)
    return first, end, int(starts[first]), int(starts[end])


def infill(
    model: Any = None,
    midi: Any = None,
    *,
    bars: Any = None,
    seconds: Any = None,
    n: int = 1,
    candidates: int = 1,
    config: Optional[SamplingConfig] = None,
    tokenizer: Any = None,
    composer: Any = None,
    device: Any = None,
    progress: Any = None,
    **options: Any,
) -> list[Infilled]:
    """``n`` versions of ``midi`` (a path, bytes or ``symusic.Score``) with a span regenerated.

    ``bars=(9, 12)`` or ``"9-12"``: bars 9 to 12 (1-based, inclusive); ``seconds=(10, 20)``: the
    bars that time range touches. ``model``: a bundle folder, a ``Bundle``, a shipped name or a
    GPT with ``tokenizer=``; None: ``gpt-piano``. Sampling options are ``SamplingConfig`` fields
    (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``seed``, ``programs``, ``threads``...);
    the length is the span's. ``candidates=k``: each version is the best of ``k`` sampled
    middles, the one after which the model finds the music that follows the span most likely
    (``suffix_bits``): the choice uses the suffix even where the fill-in-the-middle training has
    not taught the model to (version ``i`` with ``k=1`` is candidate 0 of its group). A model
    trained without fill-in-the-middle tokens is a one-line error.
    """
    from partita.edit import new_notes, prompt_view, splice, to_ticks
    from partita.generation import resolve_label, resolve_model
    from partita.io.midi import last_note_off, load
    from partita.generation.filters import held_metres
    from partita.io.timing import bar_count, bar_of, bar_starts, metres
    from partita.represent.token_tables import token_tables
    from partita.represent.tokens import encode

    if midi is None:
        raise PartitaError("infill needs a MIDI file (or a symusic Score) to fill")
    if model is None:
        from partita.pretrained import GPT_PIANO, bundle_path

        model = str(bundle_path(GPT_PIANO))
    model, tokenizer, labels, defaults = resolve_model(model, tokenizer=tokenizer, device=device)
    if not getattr(model.config, "fim", False):
        raise PartitaError("this model was not trained for infilling (no fill-in-the-middle tokens): "
                           "use gpt-piano or a model trained with 'partita train gpt --fim 0.5'")
    label = resolve_label(composer, labels, int(getattr(model.config, "n_labels", 0)))
    if isinstance(midi, (str, os.PathLike, bytes, bytearray)):
        score = load(midi)
    elif isinstance(midi, (symusic.core.ScoreTick, symusic.core.ScoreQuarter, symusic.core.ScoreSecond)):
        score = midi if isinstance(midi, symusic.core.ScoreTick) else midi.to("tick")
    else:
        raise PartitaError(f"infill fills a MIDI file or a symusic Score, not {type(midi).__name__}")
    first, end, t0, t1 = _span_ticks(score, bars, seconds)
    if last_note_off(score) <= t0:
        raise PartitaError(f"bars {first + 1}-{end}: the file has {bar_count(score)} bars")
    view = prompt_view(score)
    ids = encode(tokenizer, view, bos_eos=True)
    ref, _ = decode_safe(tokenizer, ids)  # the piece as the tokenizer sees it: its bars
    rt = int(ref.ticks_per_quarter)
    m0, m1 = (int(x) for x in to_ticks([t0, t1], int(score.ticks_per_quarter), rt))
    ref_starts = bar_starts(ref, m1)
    # the model's bars covering the file's span (the same bars when the tokenizer keeps the metre)
    m_first, m_end = int(bar_of(ref_starts, m0)), int(bar_of(ref_starts, max(m1 - 1, m0))) + 1
    prompt, _ = fill_layout(model, tokenizer, ids, m_first, m_end)

    k = int(candidates)
    if k < 1:
        raise PartitaError(f"candidates must be >= 1, got {candidates}")
    cfg = (config or defaults).replace(**options)
    cfg = cfg.replace(bars=m_end - m_first, seconds=None, prompt_read=None, allow_early_end=False)
    if cfg.time_signatures is None:
        # the file's metre as the tokenizer writes it, where the model can write its bars
        cfg = cfg.replace(time_signatures=held_metres(token_tables(tokenizer), metres(ref)))
    raw = sample(model, tokenizer, prompts=[prompt], n=n * k, config=cfg, label=label, progress=progress,
                 return_details=True)
    bits: list[Optional[float]] = [None] * len(raw)
    if k > 1:
        bits = [suffix_bits(model, tokenizer, prompt.prefix, r.new_ids, prompt.suffix, label=label) for r in raw]
        best = [min(range(g * k, (g + 1) * k), key=lambda j: bits[j]) for g in range(n)]
        raw, bits = [raw[j] for j in best], [bits[j] for j in best]

    kept, removed = _without_span(score, t0, t1)
    out = []
    for i, r in enumerate(raw):
        middle = r.new_ids
        added = new_notes(tokenizer, np.concatenate([prompt.prefix, middle]), len(prompt.prefix))
        spliced = splice(kept, added, start=t0, end=t1)  # nothing starts outside the span
        out.append(Infilled(score=spliced.score, bars=(first + 1, end), ticks=(t0, t1), middle=middle,
                            notes_removed=removed, notes_added=spliced.added, stop=r.stop,
                            index=i, candidates=k, suffix_bits=bits[i]))
    return out


def suffix_bits(model: Any, tokenizer: Any, prefix: np.ndarray, middle: np.ndarray, suffix: np.ndarray,
                *, label: Optional[int] = None) -> float:
    """Bits per token of ``suffix`` after ``prefix`` + ``middle``, read as one plain continuation
    window (the model's context; no memories): how well a candidate middle leads into the music
    after the span. Lower is better."""
    import torch
    import torch.nn.functional as F

    from partita.represent.tokens import token_timing

    suffix = np.asarray(suffix, np.int64)
    if len(suffix) == 0:
        return 0.0
    C = int(model.config.context)
    before = np.concatenate([np.asarray(prefix, np.int64), np.asarray(middle, np.int64)])
    keep = max(1, C - 1 - len(suffix))
    song = np.concatenate([before, suffix])
    start = max(0, len(before) - keep)
    window = song[start : start + C - 1]
    n_suffix = len(window) - (len(before) - start)
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.concatenate([[model.label_token(label)], window]), device=device)[None]
    kw = {}
    if model.config.bar_embeddings:
        bars, positions = token_timing(tokenizer, song)
        b = np.concatenate([bars[start : start + 1], bars[start : start + len(window)]])
        p = np.concatenate([[0], positions[start : start + len(window)]])
        kw = {"bars": torch.as_tensor(b, device=device)[None], "positions": torch.as_tensor(p, device=device)[None]}
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits, _ = model(ids, **kw)
    finally:
        model.train(was)
    logp = F.log_softmax(logits[0, -n_suffix - 1 : -1].float(), dim=-1)
    target = ids[0, -n_suffix:]
    return float(-logp.gather(1, target[:, None]).mean() / np.log(2))


def _without_span(score: Score, t0: int, t1: int) -> tuple[Score, int]:
    """A copy of ``score`` without the notes that start in ``[t0, t1)``, and how many they were."""
    out = score.copy()
    removed = 0
    for track in out.tracks:
        notes = track.notes.numpy()
        keep = (notes["time"] < t0) | (notes["time"] >= t1)
        removed += int((~keep).sum())
        track.notes = symusic.Note.from_numpy(**{k: v[keep] for k, v in notes.items()})
    return out, removed
