"""Readable output whatever the model says: token repair and safe decoding.

``repair_tokens`` walks the base tokens (BPE merges expanded) with miditok's own table of which
token type may follow which (``tokenizer.tokens_types_graph``): a token that cannot follow is
dropped; a time or note-start token that cannot follow an unfinished note (``Pitch`` without its
``Velocity``/``Duration``) drops that unfinished note instead, so the timeline survives; a
``Position`` (``Tempo``, ``TimeSig``) right after another replaces it; a note left unfinished at the
end is dropped. Time order is not repaired: a ``Position`` that goes back in its bar decodes to a
note earlier in that bar. A valid encoding comes out unchanged. ``decode_safe`` decodes the
repaired tokens, and if miditok or the MIDI round trip still fails, keeps the longest prefix that
works.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from miditok import TokSequence
from symusic import Score, Tempo, TimeSignature

from partita.represent.token_tables import token_tables
from partita.represent.tokens import TokenizerError

__all__ = ["decode_safe", "decode_tokens", "ids_array", "repair_tokens"]


def ids_array(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids).astype(np.int64).ravel()


def repair_tokens(tokenizer: Any, ids: Any) -> list[str]:
    """The base tokens of ``ids`` (merges expanded, special tokens removed) with what cannot follow
    dropped (module doc): a sequence miditok decodes as intended. A valid encoding is unchanged."""
    ids = ids_array(ids)
    table = token_tables(tokenizer)
    g = table.grammar
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


def decode_tokens(tokenizer: Any, tokens: list[str]) -> Score:
    from partita.represent.tokens import restore_tracks

    # a tokenizer's track roles (same-program tracks kept apart) get their programs and names back
    score = restore_tracks(tokenizer, tokenizer.decode(TokSequence(tokens=list(tokens)))) if tokens else Score(tokenizer.time_division)
    if len(score.tempos) == 0:
        score.tempos.append(Tempo(0, float(tokenizer.default_tempo)))
    if len(score.time_signatures) == 0:
        score.time_signatures.append(TimeSignature(0, 4, 4))
    return score


def _readable(tokenizer: Any, tokens: list[str]) -> Optional[Score]:
    """The decoded score if it decodes and survives a MIDI round trip, else None."""
    from partita.io.midi import load

    try:
        score = decode_tokens(tokenizer, tokens)
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
    ids = ids_array(ids)
    tokens = repair_tokens(tokenizer, ids)
    table = token_tables(tokenizer)
    base, _ = table.expand(ids)
    dropped = int((~table.base_special[base]).sum()) - len(tokens)
    if not check:
        try:
            return decode_tokens(tokenizer, tokens), dropped
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
        score = _readable(tokenizer, tokens[:lo]) or decode_tokens(tokenizer, [])
        dropped += len(tokens) - lo
    return score, dropped
