"""``partita eval continuation``: does a GPT follow its prompt?

For held-out pieces of a prepared corpus (one per work: the split is by work, and performances
of one work would count it several times), the opening up to ``prompt_seconds`` is the prompt;
the model continues it (``generate_samples(..., prompt_seconds=P, seconds=S)``: the length is
kept) and the window ``[P, P + S)`` of its continuation is compared with the same window of the
real piece and with the prompt, on five features:

* **key**: cosine similarity of pitch-class histograms (counts) with the prompt's and with the
  real continuation's;
* **density**: notes starting in the window per second;
* **register**: mean pitch (MIDI) and pitch range (highest - lowest) of the window's notes;
* **polyphony**: notes sounding at once, time-weighted mean over the time some note sounds;
* **tempo**: median inter-onset interval between onset groups (chords counted once), seconds.

Every piece is first put through the model's tokenizer and back, so that the real music, the
prompt and the samples have the same time grid. Next to the model, two baselines make the numbers
mean something: **repeat** (the prompt's last ``S`` seconds played again: it follows the prompt
perfectly and adds nothing) and **other piece** (the real continuation of another held-out work:
plausible music that ignores the prompt).

Targets (issue 14): the model's pitch-class similarity to the prompt at least the real
continuation's minus 0.05 (mean over pieces), and its density within +-30% of the real one
(median of the per-piece ratios; the share of pieces within is reported too).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from partita.errors import PartitaError

__all__ = ["FEATURES", "CANDIDATES", "window_features", "evaluate_continuation"]

FEATURES = ("density", "mean_pitch", "pitch_range", "polyphony", "ioi")
CANDIDATES = ("real", "model", "repeat", "other piece")
CHORD_TOLERANCE = 0.03  # seconds: onsets closer than this are one group (a chord)


def _window(notes: np.ndarray, start: float, end: float) -> np.ndarray:
    on = notes["onset"]
    return notes[(on >= start) & (on < end)]


def window_features(notes: np.ndarray, start: float, end: float) -> dict[str, Any]:
    """The features of the notes starting in ``[start, end)`` (seconds; drum notes ignored):
    ``pch`` (12 shares), ``density`` (notes/s over the window), ``mean_pitch``, ``pitch_range``,
    ``polyphony``, ``ioi`` (median gap between onset groups; NaN with fewer than 2 groups)."""
    from partita.io.midi import pitched
    from partita.represent.features import onset_groups, pitch_class_histogram, polyphony

    w = pitched(_window(notes, start, end), sort=True)
    out: dict[str, Any] = {"notes": int(len(w)), "density": len(w) / max(end - start, 1e-9)}
    if len(w) == 0:
        return {**out, "pch": np.zeros(12), "mean_pitch": math.nan, "pitch_range": math.nan, "polyphony": math.nan,
                "ioi": math.nan}
    pitch = w["pitch"].astype(np.float64)
    onset = np.sort(w["onset"].astype(np.float64))
    groups = onset_groups(onset, CHORD_TOLERANCE)
    starts = onset[np.r_[0, np.flatnonzero(np.diff(groups)) + 1]]
    out.update(pch=pitch_class_histogram(w), mean_pitch=float(pitch.mean()), pitch_range=float(pitch.max() - pitch.min()),
               polyphony=float(polyphony(w)[0]), ioi=float(np.median(np.diff(starts))) if len(starts) > 1 else math.nan)
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan


def _shifted(notes: np.ndarray, by: float) -> np.ndarray:
    out = notes.copy()
    out["onset"] = out["onset"] + by
    return out


def _one_per_work(corpus: Any, split: str) -> list[int]:
    """The first piece of each work of ``split``: one per group and per (label, title), since a
    source may file one work in two folders (ASAP's ``18-2`` and ``18-2_no_repeat``)."""
    seen, chosen = set(), []
    for i in corpus.indices(split=split):
        row = corpus.pieces[i]
        keys = {("group", row.get("group") or row["id"]), ("title", row["label"], row.get("title") or row["id"])}
        if not keys & seen:
            seen |= keys
            chosen.append(i)
    return chosen


def _summary(rows: list[dict], candidates: tuple) -> dict:
    def mean(key, c):
        v = np.array([r[c][key] for r in rows if c in r], np.float64)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else math.nan

    def quantiles(key, c):
        v = np.array([r[c][key] for r in rows if c in r], np.float64)
        v = v[np.isfinite(v)]
        return [float(x) for x in np.quantile(v, [0.1, 0.9])] if len(v) else [math.nan, math.nan]

    out: dict[str, dict] = {}
    for c in candidates:
        s: dict[str, Any] = {
            "pch_similarity_to_prompt": mean("pch_to_prompt", c),
            "pch_similarity_to_real": mean("pch_to_real", c),
        }
        for f in FEATURES:
            s[f] = mean(f, c)
            s[f + "_p10_p90"] = quantiles(f, c)
            if c != "real":
                ratio = np.array([r[c][f] / r["real"][f] for r in rows if c in r and r["real"][f] > 0], np.float64)
                ratio = ratio[np.isfinite(ratio)]
                diff = np.array([abs(r[c][f] - r["real"][f]) for r in rows if c in r], np.float64)
                diff = diff[np.isfinite(diff)]
                s[f + "_ratio_to_real_median"] = float(np.median(ratio)) if len(ratio) else math.nan
                s[f + "_within_30pct_of_real"] = float(np.mean(np.abs(ratio - 1) <= 0.3)) if len(ratio) else math.nan
                s[f + "_abs_diff_to_real"] = float(diff.mean()) if len(diff) else math.nan
        out[c] = s
    return out


def evaluate_continuation(
    model: Any,
    corpus_dir: str | Path,
    *,
    split: str = "test",
    prompt_seconds: float = 25.0,
    seconds: float = 15.0,
    max_pieces: Optional[int] = None,
    n: int = 1,
    seed: int = 0,
    config: Any = None,
    use_labels: bool = True,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> dict:
    """Continue the opening of each held-out work of ``corpus_dir`` with ``model`` (a GPT bundle
    folder or ``Bundle``) and compare (module doc). ``config``: a ``SamplingConfig`` (its length
    fields are set here). Returns ``{"settings", "pieces": [per piece], "summary", "targets"}``."""
    from partita.bundle import Bundle, load_bundle
    from partita.data.corpus import Corpus
    from partita.generation import SamplingConfig, generate_samples
    from partita.generation.sampling import decode_safe
    from partita.io.midi import note_array
    from partita.represent.tokens import encode

    if not (float(prompt_seconds) > 0 and float(seconds) > 0):
        raise PartitaError(f"prompt and continuation lengths must be > 0 s, got {prompt_seconds} and {seconds}")
    if float(seconds) > float(prompt_seconds):
        raise PartitaError(f"--seconds ({seconds}) must not exceed --prompt-seconds ({prompt_seconds}): the "
                           "repeat baseline plays the prompt's last seconds again")
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    if getattr(bundle.model, "family", None) != "gpt" or bundle.tokenizer is None:
        raise PartitaError(f"{model}: eval continuation needs a GPT bundle with its tokenizer")
    tok = bundle.tokenizer
    labels = [str(x) for x in (bundle.card.get("labels") or [])] if isinstance(bundle.card, dict) else []
    corpus = Corpus(corpus_dir)
    chosen = _one_per_work(corpus, split)
    P, S = float(prompt_seconds), float(seconds)
    cfg = (config or SamplingConfig()).replace(seconds=S, bars=None, max_new_tokens=None, seed=seed)

    # the pieces as the model's tokens say them, long enough to hold the prompt and the window
    real: list[tuple[int, np.ndarray, Any]] = []
    for i in chosen:
        try:
            score = corpus.score(i)
            grid = decode_safe(tok, encode(tok, score))[0]
        except Exception:  # a piece the tokenizer cannot encode is left out (said in the result)
            continue
        notes = note_array(grid, unit="second")
        notes = notes[~notes["is_drum"]]
        if len(notes) and notes["onset"].max() >= P + S and len(_window(notes, 0, P)):
            real.append((i, notes, score))
        if max_pieces is not None and len(real) >= int(max_pieces):
            break
    if not real:
        raise PartitaError(f"{corpus_dir}: no {split} piece lasts {P + S:g} s with notes before {P:g} s "
                           "(shorten --prompt-seconds/--seconds)")
    rows = []
    for k, (i, notes, score) in enumerate(real):
        row_info = corpus.pieces[i]
        label = row_info["label"] if use_labels and row_info["label"] in labels else None
        if progress is not None:
            progress(k, len(real), str(row_info.get("title") or row_info["id"]))
        samples = generate_samples(bundle, score, n=n, config=cfg, prompt_seconds=P, composer=label)
        prompt_notes = _window(notes, 0, P)
        prompt_pch = window_features(notes, 0, P)["pch"]
        cands = {"real": window_features(notes, P, P + S)}
        model_feats = [window_features(note_array(s.score, unit="second"), P, P + S) for s in samples]
        cands["model"] = {key: (np.mean([m[key] for m in model_feats], axis=0) if key == "pch"
                                else float(np.nanmean([m[key] for m in model_feats]))
                                if any(np.isfinite(m[key]) for m in model_feats) else math.nan)
                          for key in model_feats[0]}
        cands["repeat"] = window_features(_shifted(_window(prompt_notes, P - S, P), S), P, P + S)
        j, other_notes, _ = real[(k + 1) % len(real)]
        if j != i:
            cands["other piece"] = window_features(other_notes, P, P + S)
        row = {"piece": str(row_info.get("title") or row_info["id"]), "label": row_info["label"],
               "composer_token": label, "prompt_notes": int(len(prompt_notes)),
               "stops": [s.stop for s in samples]}
        for c, f in cands.items():
            f = dict(f)
            pch = np.asarray(f.pop("pch"))
            f["pch_to_prompt"] = _cos(pch, prompt_pch)
            f["pch_to_real"] = _cos(pch, cands["real"]["pch"])
            row[c] = {key: (float(v) if isinstance(v, (float, np.floating)) else v) for key, v in f.items()}
        rows.append(row)
    if progress is not None:
        progress(len(real), len(real), "")
    summary = _summary(rows, CANDIDATES)
    m, r = summary["model"], summary["real"]
    targets = {
        "pch_similarity_to_prompt": {"model": m["pch_similarity_to_prompt"], "goal": r["pch_similarity_to_prompt"] - 0.05,
                                     "met": bool(m["pch_similarity_to_prompt"] >= r["pch_similarity_to_prompt"] - 0.05)},
        "density_ratio_to_real": {"model": m["density_ratio_to_real_median"], "goal": [0.7, 1.3],
                                  "met": bool(0.7 <= m["density_ratio_to_real_median"] <= 1.3)},
    }
    return {
        "settings": {"model": str(getattr(bundle, "path", model)), "corpus": str(corpus.path), "split": split,
                     "prompt_seconds": P, "seconds": S, "samples_per_piece": int(n), "seed": int(seed),
                     "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "min_p": cfg.min_p,
                     "composer_labels": bool(use_labels), "works": len(chosen), "pieces": len(rows)},
        "pieces": rows,
        "summary": summary,
        "targets": targets,
    }
