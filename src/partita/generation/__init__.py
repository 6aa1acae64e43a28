"""Generate music with a trained GPT: from nothing, a MIDI prompt, a structure or a composer label.

::

    import partita
    scores = partita.generate("my-model", prompt="song.mid", prompt_bars=4, n=4, bars=16, seed=0)
    scores = partita.generate("my-model", chords="C G Am F", composer="bach", temperature=0.9)

``generate`` returns ``symusic.Score`` objects (in ticks); ``generate_samples`` returns ``Sample``
records with the ids, the stop reason and counts as well (what ``partita generate`` prints).

Prompts (at most one source of music, optionally a composer):

* nothing: the model starts a piece (``[label, BOS]``);
* ``prompt=``: a MIDI file (path or bytes), a ``symusic.Score``, or token ids of the model's
  tokenizer (used as they are; normally starting with BOS);
* ``chords=`` / ``scale=`` / ``motif=``: text read by ``partita.io.prompts.parse_prompt``;
* ``prompt_bars`` / ``prompt_seconds`` / ``prompt_tokens``: keep only the first bars (in the
  file's own metre, ``partita.io.timing.bar_starts``), seconds (through its tempo map) or tokens
  of the prompt; notes that start before the cut keep their whole duration;
* ``composer=``: a label name of the bundle's card (``card["labels"]``), matched ignoring case
  (or a label index).

A music prompt is read as ``partita.edit.prompt_view`` says (sustain pedal applied as in
training, nothing past its last note), encoded with the bundle's tokenizer, framed with BOS and
without its EOS, so the model continues it after its last note. The output of a music prompt is
the user's own score (cut where the prompt was cut) with the new notes added by
``partita.edit.splice``: every original note, track and meta event as it was, in ticks; the
new notes at the beats the model wrote them on, in the prompt's tracks (``partita.edit.TRACK_RULE``).
A token-id prompt or no prompt gives the decoded tokens.

Outputs are decoded with ``decode_safe`` (``partita.generation.sampling``): whatever the model
sampled, the result is a score that writes to a MIDI file partita reads back. A sample in which
the model wrote no new note: ``Sample.ok`` is False, ``Sample.new_notes`` is 0, and
``partita generate`` reports it (stderr, its table and JSON) instead of writing a file.

``partita.generation`` is both this package and its ``generate`` function: calling the module calls
the function.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import symusic
from symusic import Score

from partita.errors import PartitaError
from partita.generation.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    IncrementalTiming,
    SampledIds,
    SamplingConfig,
    choose,
    decode_safe,
    filter_logits,
    repair_tokens,
    row_generator,
    sample,
)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "IncrementalTiming",
    "Sample",
    "SampledIds",
    "SamplingConfig",
    "build_prompt",
    "choose",
    "decode_safe",
    "filter_logits",
    "generate",
    "generate_samples",
    "infill",
    "repair_tokens",
    "resolve_label",
    "ResolvedModel",
    "resolve_model",
    "row_generator",
    "sample",
]

_SCORE_TYPES = (symusic.core.ScoreTick, symusic.core.ScoreQuarter, symusic.core.ScoreSecond)


@dataclass
class Sample:
    """One generated piece: the ``score`` and how it came about."""

    score: Score
    ids: np.ndarray  # song tokens as sampled: prompt, then the new ones (EOS last if the model ended it)
    prompt_length: int  # how many of ``ids`` are the prompt
    stop: str  # "eos" | "tokens" | "bars" | "seconds"
    notes: int
    seconds: float  # length of the score to its last note-off
    bars: int  # bars of the whole piece in its own metre (partita.io.timing), 0 without notes
    dropped: int  # base tokens the repair removed before decoding
    index: int = 0
    meta: dict = field(default_factory=dict)
    new_notes: int = 0  # notes the model wrote (the prompt's not counted)
    new_seconds: float = 0.0  # seconds from the prompt's end to the last new note-off (0 without new notes)
    prompt_end: float = 0.0  # where the prompt ends in ``score``, seconds (0 without a prompt)

    @property
    def new_tokens(self) -> int:
        return int(len(self.ids) - self.prompt_length)

    @property
    def ok(self) -> bool:
        """True when the model wrote at least one new note (a continuation that adds nothing is
        not a result: ``partita generate`` says so instead of writing the prompt back)."""
        return self.new_notes > 0


# --------------------------------------------------------------------------- model, labels


def _auto_device(device: Any) -> Any:
    if device is not None and str(device) != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ResolvedModel(NamedTuple):
    """A GPT ready to sample: the model, its tokenizer, its label names and its sampling
    defaults (the bundle's ``generation.json`` over ``SamplingConfig()``)."""

    model: Any
    tokenizer: Any
    labels: list[str]
    defaults: SamplingConfig


def resolve_model(
    model: Any, *, tokenizer: Any = None, labels: Optional[Sequence[str]] = None, device: Any = None,
    prompt: Any = None,
) -> ResolvedModel:
    """``(model, tokenizer, labels, defaults)`` from a bundle folder, a shipped name, a
    ``Bundle``, a model, or None (the shipped model for ``prompt``: ``gpt-piano`` for a piano
    MIDI file, else ``gpt-small``).

    A folder is loaded with ``load_bundle`` on ``device`` (default: CUDA when available); the
    labels come from its card (``card["labels"]``), the sampling defaults from its
    ``generation.json``. A bare model needs ``tokenizer=`` (and ``labels=`` for ``composer``
    names) and has ``SamplingConfig()``'s defaults; with an explicit ``device`` it is moved there.
    """
    from partita.bundle import Bundle, load

    if model is None or isinstance(model, (str, os.PathLike)):  # None: the shipped model for this prompt
        from partita.pretrained import default_gpt

        model = load(model, "gpt", default=None if model is not None else str(default_gpt(prompt)),
                     device=_auto_device(device))
        device = None
    defaults = SamplingConfig()
    if isinstance(model, Bundle):
        bundle = model
        defaults = SamplingConfig.of_bundle(bundle)
        model = bundle.model
        tokenizer = tokenizer if tokenizer is not None else bundle.tokenizer
        if labels is None:
            labels = bundle.card.get("labels") if isinstance(bundle.card, dict) else None
        where = f"{bundle.path}: " if bundle.path is not None else ""
        if tokenizer is None:
            raise PartitaError(f"{where}the bundle has no tokenizer.json: generation needs the model's tokenizer")
    if getattr(model, "family", None) != "gpt" and not hasattr(model, "new_cache"):
        raise PartitaError(f"generation needs a GPT model (family 'gpt'), got {type(model).__name__}")
    if tokenizer is None:
        raise PartitaError("pass tokenizer= with a bare model (a bundle brings its own)")
    if device is not None and str(device) != "auto":
        model = model.to(device)
    labels = [str(x) for x in (labels or [])]
    return ResolvedModel(model, tokenizer, labels, defaults)


def resolve_label(composer: Any, labels: Sequence[str], n_labels: int) -> Optional[int]:
    """The label index of ``composer``: a name of ``labels`` (case and surrounding spaces ignored)
    or an index; None for no composer. Unknown names raise a one-line ``PartitaError``."""
    if composer is None:
        return None
    if n_labels <= 0:
        raise PartitaError(f"this model is not conditioned on composers or labels: drop --composer {composer}")
    if isinstance(composer, (int, np.integer)) and not isinstance(composer, bool):
        if not 0 <= int(composer) < n_labels:
            raise PartitaError(f"label {composer} out of range: this model knows {n_labels} labels")
        return int(composer)
    if not labels:
        raise PartitaError(
            f"the model's card lists no label names, so {composer!r} cannot be matched: pass a label index instead"
        )
    if len(labels) != n_labels:
        raise PartitaError(f"the card lists {len(labels)} labels but the model has {n_labels}: the bundle is inconsistent")
    key = str(composer).strip().casefold()
    for i, name in enumerate(labels):
        if name.strip().casefold() == key:
            return i
    raise PartitaError(f"unknown composer {str(composer)!r}: this model knows {', '.join(labels)}")


# --------------------------------------------------------------------------- prompts


def _is_ids(prompt: Any) -> bool:
    if hasattr(prompt, "detach") and hasattr(prompt, "dim"):  # a torch tensor
        return True
    if isinstance(prompt, np.ndarray):
        return True
    return isinstance(prompt, (list, tuple)) and all(isinstance(x, (int, np.integer)) for x in prompt)


@dataclass
class _Prompt:
    """A prompt as generation uses it: the model's ``ids``, and for music (a file, a score, a
    chord/scale/motif text) the user's ``score`` cut where the prompt ends (the output's base),
    the model's ``view`` of it and the tick ``end`` where new music starts (``partita.edit``)."""

    ids: np.ndarray
    score: Optional[Score] = None
    view: Optional[Score] = None
    end: int = 0


def build_prompt(
    tokenizer: Any,
    prompt: Any = None,
    *,
    chords: Optional[str] = None,
    scale: Optional[str] = None,
    motif: Optional[str] = None,
    prompt_bars: Optional[int] = None,
    prompt_seconds: Optional[float] = None,
    prompt_tokens: Optional[int] = None,
) -> np.ndarray:
    """The prompt's song token ids (``[BOS, ...]`` without EOS) for ``sample`` (module doc)."""
    return _read_prompt(tokenizer, prompt, chords=chords, scale=scale, motif=motif, prompt_bars=prompt_bars,
                        prompt_seconds=prompt_seconds, prompt_tokens=prompt_tokens).ids


def _read_prompt(
    tokenizer: Any,
    prompt: Any = None,
    *,
    chords: Optional[str] = None,
    scale: Optional[str] = None,
    motif: Optional[str] = None,
    prompt_bars: Optional[int] = None,
    prompt_seconds: Optional[float] = None,
    prompt_tokens: Optional[int] = None,
) -> _Prompt:
    from partita.edit import cut, last_onset, prompt_view, to_ticks
    from partita.io.midi import load
    from partita.io.prompts import parse_prompt
    from partita.io.timing import bar_starts, ticks_at
    from partita.represent.tokens import decode, encode, special_id, token_timing

    given = [name for name, v in (("prompt", prompt), ("chords", chords), ("scale", scale), ("motif", motif))
             if v is not None]
    if len(given) > 1:
        raise PartitaError(f"give one prompt at most, not {' and '.join(given)}")
    crops = [name for name, v in (("prompt_bars", prompt_bars), ("prompt_seconds", prompt_seconds),
                                  ("prompt_tokens", prompt_tokens)) if v is not None]
    if len(crops) > 1:
        raise PartitaError(f"crop the prompt one way only, not {' and '.join(crops)}")
    bos = special_id(tokenizer, "BOS")
    if not given:
        if crops:
            raise PartitaError(f"{crops[0]} crops a prompt, but no prompt was given")
        return _Prompt(np.array([bos], np.int64))
    for name, value in (("prompt_bars", prompt_bars), ("prompt_tokens", prompt_tokens)):
        if value is not None and (int(value) != value or int(value) < 1):
            raise PartitaError(f"{name} must be a whole number >= 1, got {value}")
    if prompt_seconds is not None and not float(prompt_seconds) > 0:
        raise PartitaError(f"prompt_seconds must be > 0, got {prompt_seconds}")

    what = "the prompt"
    if chords is not None:
        score = parse_prompt("chords", chords)
    elif scale is not None:
        score = parse_prompt("scale", scale)
    elif motif is not None:
        score = parse_prompt("motif", motif)
    elif _is_ids(prompt):
        ids = np.asarray(prompt.detach().cpu().numpy() if hasattr(prompt, "detach") else prompt).astype(np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= len(tokenizer)):
            raise PartitaError(f"prompt ids must be in [0, {len(tokenizer)}), got {ids.min()}..{ids.max()}")
        if prompt_seconds is not None:
            raise PartitaError("prompt_seconds needs a MIDI or Score prompt; crop token prompts with prompt_tokens or prompt_bars")
        if prompt_bars is not None and ids.size:
            ids = ids[token_timing(tokenizer, ids)[0] < int(prompt_bars)]
        if prompt_tokens is not None:
            start = 1 if ids.size and ids[0] == bos else 0
            ids = ids[: start + int(prompt_tokens)]
        return _Prompt(ids)
    elif isinstance(prompt, _SCORE_TYPES):
        score = prompt if isinstance(prompt, symusic.core.ScoreTick) else prompt.to("tick")
    elif isinstance(prompt, (str, os.PathLike, bytes, bytearray)):
        if isinstance(prompt, (str, os.PathLike)):
            what = str(prompt)
        score = load(prompt)
    else:
        raise PartitaError(f"a prompt is a MIDI file, a symusic Score or token ids, not {type(prompt).__name__}")

    at = None  # where the user's file is cut (its own ticks): the end of its first seconds or bars
    if prompt_seconds is not None:
        at = max(int(ticks_at(score, float(prompt_seconds))), 1)
    elif prompt_bars is not None:
        at = int(bar_starts(score, 0, bars=int(prompt_bars))[int(prompt_bars)])
    view = prompt_view(score, at)
    if view.note_num() == 0:
        raise PartitaError(f"{what}: no notes to continue" + (" in that many seconds" if prompt_seconds else "")
                           + (" in that many bars" if prompt_bars else ""))
    ids = encode(tokenizer, view, bos_eos=True)[:-1]  # drop EOS: the model continues the piece
    if prompt_tokens is not None and len(ids) > 1 + int(prompt_tokens):
        ids = ids[: 1 + int(prompt_tokens)]
        kept = decode(tokenizer, ids)  # the file is cut just after the last note the kept tokens hold
        if kept.note_num() == 0:
            raise PartitaError(f"{what}: the first {prompt_tokens} tokens hold no note to continue")
        at = int(to_ticks(last_onset(kept) + 1, int(kept.ticks_per_quarter), int(score.ticks_per_quarter)))
        view = prompt_view(score, at)
    special = _special_mask(tokenizer)
    if not (~special[ids]).any():
        raise PartitaError(f"{what}: nothing in it that the model's tokenizer can represent (notes out of range?)")
    base = cut(score, at)
    end = last_onset(base) if at is None else at
    return _Prompt(ids, base, view, int(end))


def _special_mask(tokenizer: Any) -> np.ndarray:
    from partita.represent.token_tables import token_tables

    return token_tables(tokenizer).special


# --------------------------------------------------------------------------- generation


def generate_samples(
    model: Any = None,
    prompt: Any = None,
    *,
    n: int = 1,
    config: Optional[SamplingConfig] = None,
    tokenizer: Any = None,
    labels: Optional[Sequence[str]] = None,
    composer: Any = None,
    chords: Optional[str] = None,
    scale: Optional[str] = None,
    motif: Optional[str] = None,
    prompt_bars: Optional[int] = None,
    prompt_seconds: Optional[float] = None,
    prompt_tokens: Optional[int] = None,
    device: Any = None,
    progress: Any = None,
    **options: Any,
) -> list[Sample]:
    """Like ``generate`` but returns ``Sample`` records (score, ids, stop reason, counts).

    ``config``: a ``SamplingConfig`` (default: the bundle's defaults, ``resolve_model``);
    ``options`` change its fields (``temperature=0.9, bars=8``...); each sample's
    ``meta["sampling"]`` is the config it was drawn with. With ``programs="auto"`` (the default) a
    continuation keeps the instruments of its prompt; a chord, scale or motif prompt is piano.
    A music prompt holds the model to its metre (``time_signatures``, unless given).
    """
    from partita.edit import last_onset, new_notes, splice, to_ticks
    from partita.io.midi import duration_seconds, last_note_off
    from partita.generation.filters import held_metres
    from partita.io.timing import bar_count, metres, seconds_at
    from partita.represent.token_tables import token_tables

    model, tokenizer, labels, defaults = resolve_model(model, tokenizer=tokenizer, labels=labels, device=device,
                                                       prompt=prompt)
    cfg = (config or defaults).replace(**options)
    label = resolve_label(composer, labels, int(getattr(model.config, "n_labels", 0)))
    read = _read_prompt(tokenizer, prompt, chords=chords, scale=scale, motif=motif, prompt_bars=prompt_bars,
                        prompt_seconds=prompt_seconds, prompt_tokens=prompt_tokens)
    if cfg.programs == "auto" and any(v is not None for v in (chords, scale, motif)):
        cfg = cfg.replace(programs=(0,))  # structure prompts are piano
    if read.view is not None and cfg.time_signatures is None:  # the file's metre as the tokenizer writes it
        cfg = cfg.replace(time_signatures=held_metres(token_tables(tokenizer), metres(decode_safe(tokenizer, read.ids)[0])))
    raw = sample(model, tokenizer, prompts=[read.ids], n=n, config=cfg, label=label, progress=progress,
                 return_details=True)
    out = []
    for i, r in enumerate(raw):
        added = new_notes(tokenizer, r.ids, r.prompt_length)
        if read.score is not None:  # the user's music with the new notes added (partita.edit)
            # from the prompt's last onset on: a note the model puts earlier in that bar is dropped
            spliced = splice(read.score, added, start=max(last_onset(read.score), 0))
            score, n_new, dropped, new_end = spliced.score, spliced.added, 0, spliced.end
            end = read.end
        else:
            score, dropped = decode_safe(tokenizer, r.ids)
            n_new = int(added.note_num())
            prompt_part, _ = decode_safe(tokenizer, r.ids[: r.prompt_length])
            scale_ = int(score.ticks_per_quarter) / int(prompt_part.ticks_per_quarter)
            end = int(round(last_note_off(prompt_part) * scale_))
            new_end = int(to_ticks(last_note_off(added), int(added.ticks_per_quarter), int(score.ticks_per_quarter)))
        prompt_end = float(seconds_at(score, [end])[0]) if end > 0 else 0.0
        total = duration_seconds(score)
        new_seconds = max(0.0, float(seconds_at(score, [new_end])[0]) - prompt_end) if n_new else 0.0
        out.append(Sample(
            score=score, ids=r.ids, prompt_length=r.prompt_length, stop=r.stop, notes=int(score.note_num()),
            seconds=total, bars=bar_count(score), dropped=dropped, index=i,
            meta={"label": None if label is None else (labels[label] if label < len(labels) else label), "sampling": cfg},
            new_notes=n_new, new_seconds=new_seconds, prompt_end=prompt_end,
        ))
    return out


def generate(
    model: Any = None,
    prompt: Any = None,
    *,
    n: int = 1,
    **kwargs: Any,
) -> list[Score]:
    """``n`` pieces from ``model`` (a bundle folder, a ``Bundle``, or a GPT with ``tokenizer=``).

    ``prompt``: None, a MIDI path or bytes, a ``symusic.Score`` or token ids, continued from its
    end; or ``chords=``, ``scale=``, ``motif=`` text; cropped to its beginning with
    ``prompt_bars``/``prompt_seconds``/``prompt_tokens``. ``composer``: a label name from the
    bundle's card (any letter case) or index. Sampling options are ``SamplingConfig`` fields
    (``config=`` or by name): ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``min_p``;
    length: ``max_new_tokens``, ``bars`` (new bars), ``seconds`` (beyond the prompt), kept
    unless ``allow_early_end``; ``programs``; ``seed``: same seed, same pieces; ``threads``.
    More options (``tokenizer``, ``labels``, ``device``, ``progress``): ``generate_samples``.

    Returns one ``symusic.Score`` per sample (prompt + continuation); a sample without any note is
    a score with ``note_num() == 0`` (``generate_samples`` says which).
    """
    return [s.score for s in generate_samples(model, prompt, n=n, **kwargs)]
