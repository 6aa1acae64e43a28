"""``partita eval vae``: MusicVAE reconstruction and interpolation on held-out melodies, next to baselines.

Reconstruction, per model, on every window of the split (same extraction as training: windows
every bar, rests of a bar or more left out), from the posterior mean ``mu``:

* **teacher-forced** per-step accuracy: the decoder reads the true previous events and predicts
  the next one (argmax), as in the MusicVAE paper's first column;
* **sampled** per-step accuracy: the decoder runs on its own greedy outputs for the whole window,
  the paper's "full sampling" column: what ``partita vae reconstruct`` returns;
* both also on the steps whose true event is not HOLD (note-ons and note-offs), since HOLD is
  most of the steps and a model that only says HOLD already scores well;
* sampled accuracy per 16-step bar (does the end of a 16-bar window hold up?), and sampled accuracy
  when each window's code is decoded for another window's target (how much the decoder reads z:
  near the real score means it ignores the code);
* the reconstruction cross-entropy (nats per window) and the KL of the posterior (nats), in total
  and per latent dimension (how many carry over 0.1 nats: posterior collapse leaves few).

Baselines from the train split's windows (same labels): the **majority class per step position**
(what a decoder that ignores the input can reach: compare with sampled accuracy), and the
**bigram** "most likely next event after this one" (next-step prediction without a latent code:
compare with teacher-forced accuracy).

Interpolation, per model, on random pairs of test windows A, B (seeded): the code of A is slerped
to the code of B in ``steps`` steps and every point decoded greedily. Reported for each point t:

* the note-level distance to A and to B: the fraction of steps whose sounding pitch (or silence)
  differs. Moving steadily from A to B means the distance to A rises and to B falls; ``monotone``
  is the mean Spearman correlation of the distance with t (+1 for A, -1 for B is perfect);
* musicality: the fraction of melodies whose statistics all lie within the 5th-95th percentile of
  real test windows: notes per bar, share of onsets on the eighth-note grid, share of notes in the
  best-fitting major scale (pitch classes), pitch range and mean absolute interval;
* endpoints: per-step event accuracy of the t=0 and t=1 melodies against A and B (the codes are
  the posterior means, so this is reconstruction) and their sounding-pitch agreement;
* smoothness: the note-level distance between consecutive points (mean, and the largest step
  of a path, averaged over pairs): a smooth path changes a little at every step.

Sampling, per model: ``samples`` codes drawn from the prior (N(0, I), or the mixture fitted to the
training codes, ``prior_components``; seeded) and decoded greedily,
as ``partita vae sample`` does; reported: the share of samples whose statistics all lie within the
real test windows' 5th-95th percentiles (as for interpolations), per statistic, and notes per bar.
A model whose codes drift away from the prior (free bits let the KL grow) reconstructs well and
samples badly: this is where it shows.

The baseline for interpolation is the data-space crossfade: at point t each step's event comes
from B with probability t, else from A (the paper's "data interpolation").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.represent.melody import HOLD, NOTE_OFF, NUM_CLASSES, STEPS_PER_BAR, canonicalize, corpus_windows, sounding

_MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)
STATS = ("notes_per_bar", "on_eighth_grid", "in_scale", "pitch_range", "mean_interval")


# --- baselines ---------------------------------------------------------------------------------


def majority_per_position(train: np.ndarray) -> np.ndarray:
    """The most frequent event at each step position of the train windows: ``[T]``."""
    counts = np.stack([np.bincount(train[:, t].astype(np.int64), minlength=NUM_CLASSES) for t in range(train.shape[1])])
    return counts.argmax(1)


def bigram_table(train: np.ndarray) -> np.ndarray:
    """``table[prev]``: the most frequent event after ``prev`` in the train windows (``prev = 130``:
    the first step of a window)."""
    counts = np.zeros((NUM_CLASSES + 1, NUM_CLASSES), np.int64)
    prev = np.concatenate([np.full((len(train), 1), NUM_CLASSES), train[:, :-1]], 1).astype(np.int64)
    np.add.at(counts, (prev.ravel(), train.astype(np.int64).ravel()), 1)
    counts[counts.sum(1) == 0, HOLD] = 1  # never seen: say HOLD
    return counts.argmax(1)


def _accuracies(pred: np.ndarray, target: np.ndarray) -> dict:
    hit = pred == target
    moving = target != HOLD
    return {"accuracy": float(hit.mean()), "accuracy_non_hold": float(hit[moving].mean()) if moving.any() else None}


# --- melody statistics -------------------------------------------------------------------------


def melody_stats(events: np.ndarray) -> np.ndarray:
    """``[n, 5]`` statistics (``STATS``) of windows ``[n, T]``; NaN where a melody has no notes."""
    ev = np.atleast_2d(np.asarray(events))
    out = np.full((len(ev), len(STATS)), np.nan)
    bars = ev.shape[1] / STEPS_PER_BAR
    for i, row in enumerate(ev):
        on = np.flatnonzero(row < NOTE_OFF)
        if len(on) == 0:
            continue
        pitches = row[on].astype(np.int64)
        hist = np.bincount(pitches % 12, minlength=12)
        in_scale = max(hist[np.roll(_MAJOR, k)].sum() for k in range(12)) / len(on)
        intervals = np.abs(np.diff(pitches))
        out[i] = (len(on) / bars, np.mean(on % 2 == 0), in_scale, np.ptp(pitches),
                  intervals.mean() if len(intervals) else 0.0)
    return out


def note_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of steps whose sounding pitch (or silence) differs, row by row."""
    return np.mean(sounding(a) != sounding(b), axis=-1)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y + 1e-9 * np.arange(len(y))))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den else 0.0


def interpolation_report(paths: np.ndarray, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
    """Metrics of interpolations ``paths [pairs, points, T]`` between windows ``a``, ``b`` ``[pairs, T]``."""
    pairs, points, _ = paths.shape
    d_a = np.stack([note_distance(paths[:, k], a) for k in range(points)], 1)  # [pairs, points]
    d_b = np.stack([note_distance(paths[:, k], b) for k in range(points)], 1)
    t = np.linspace(0, 1, points)
    stats = melody_stats(paths.reshape(pairs * points, -1)).reshape(pairs, points, -1)
    inside = np.all((stats >= lo) & (stats <= hi), axis=-1)  # NaN (no notes) counts as outside
    steps = np.stack([note_distance(paths[:, k], paths[:, k + 1]) for k in range(points - 1)], 1)
    return {
        "endpoint_accuracy": float(np.mean([(paths[:, 0] == a).mean(), (paths[:, -1] == b).mean()])),
        "endpoint_pitch_agreement": float(1 - (d_a[:, 0].mean() + d_b[:, -1].mean()) / 2),
        "change_per_step": float(steps.mean()),
        "largest_step": float(steps.max(1).mean()),
        "t": [round(float(x), 4) for x in t],
        "distance_to_a": [float(x) for x in d_a.mean(0)],
        "distance_to_b": [float(x) for x in d_b.mean(0)],
        "monotone_a": float(np.mean([_spearman(t, row) for row in d_a])),
        "monotone_b": float(np.mean([_spearman(t, row) for row in d_b])),
        "musical": [float(x) for x in inside.mean(0)],
        "musical_inner": float(inside[:, 1:-1].mean()) if points > 2 else None,
    }


def crossfade(a: np.ndarray, b: np.ndarray, points: int, seed: int) -> np.ndarray:
    """The data-space baseline: at point t each step comes from B with probability t, else from A."""
    rng = np.random.default_rng(seed)
    u = rng.random(a.shape)
    paths = [canonicalize(np.where(u[None] < t, b, a)[0]) for t in np.linspace(0, 1, points)]
    return np.stack(paths, 1)


# --- the evaluation ----------------------------------------------------------------------------


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _evaluate_model(model, windows: np.ndarray, batch_size: int, seed: int = 0, progress=None) -> dict:
    import torch
    import torch.nn.functional as F

    from partita.models.musicvae import kl_divergence

    # Each window's code decoded for another window: how much the decoder reads from z at all.
    perm = np.random.default_rng(seed).permutation(len(windows))
    mus, tf_pred, s_pred, recon, kl_dims = [], [], [], 0.0, 0.0
    with torch.no_grad():
        for sl in _batches(len(windows), batch_size):
            x = torch.as_tensor(windows[sl].astype(np.int64))
            mu, sigma = model.encode(x)
            mus.append(mu)
            logits = model.decode_logits(mu, x)
            tf_pred.append(logits.argmax(-1).numpy())
            s_pred.append(model.decode(mu).numpy())
            recon += float(F.cross_entropy(logits.reshape(-1, NUM_CLASSES), x.reshape(-1), reduction="sum"))
            kl_dims = kl_dims + kl_divergence(mu[..., None], sigma[..., None]).sum(0).numpy()
            if progress:
                progress(sl.stop, len(windows))
        mu = torch.cat(mus)
        shuffled = np.concatenate([model.decode(mu[perm[sl]]).numpy() for sl in _batches(len(windows), batch_size)])
    tf_pred, s_pred = np.concatenate(tf_pred), canonicalize(np.concatenate(s_pred).astype(np.int16))
    kl_dims = kl_dims / len(windows)
    hit = s_pred == windows
    return {
        "teacher_forced": _accuracies(tf_pred, windows),
        "sampled": _accuracies(s_pred, windows),
        "sampled_by_bar": [float(x) for x in hit.reshape(len(windows), -1, STEPS_PER_BAR).mean((0, 2))],
        "sampled_other_code": _accuracies(canonicalize(shuffled.astype(np.int16)), windows),
        "recon_nats_per_window": recon / len(windows),
        "kl_nats": float(kl_dims.sum()),
        "kl_dims_over_0.1_nats": int((kl_dims > 0.1).sum()),
        "kl_largest_dim_nats": float(kl_dims.max()),
    }


def prior_samples_report(model, n: int, lo: np.ndarray, hi: np.ndarray, seed: int = 0, batch_size: int = 64) -> dict:
    """Statistics of ``n`` melodies decoded greedily from codes drawn from the model's prior."""
    import torch

    z = model.sample_prior(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ev = np.concatenate([model.decode(z[sl]).numpy() for sl in _batches(n, batch_size)])
    stats = melody_stats(canonicalize(ev.astype(np.int16)))
    inside = (stats >= lo) & (stats <= hi)  # NaN (no notes) counts as outside
    return {"n": int(n), "within_real_statistics": float(np.all(inside, -1).mean()),
            "within_by_statistic": {k: float(v) for k, v in zip(STATS, inside.mean(0))},
            "notes_per_bar": float(np.nan_to_num(stats[:, 0]).mean())}


def _interpolate_pairs(model, a: np.ndarray, b: np.ndarray, points: int, batch_size: int) -> np.ndarray:
    import torch

    from partita.models.musicvae import slerp

    out = []
    with torch.no_grad():
        for sl in _batches(len(a), max(1, batch_size // points)):
            za, _ = model.encode(torch.as_tensor(a[sl].astype(np.int64)))
            zb, _ = model.encode(torch.as_tensor(b[sl].astype(np.int64)))
            zs = torch.stack([slerp(za, zb, float(t)) for t in np.linspace(0, 1, points)], 1)  # [n, points, z]
            ev = model.decode(zs.reshape(-1, zs.shape[-1])).numpy().reshape(len(za), points, -1)
            out.append(canonicalize(ev.astype(np.int16)))
    return np.concatenate(out)


def evaluate_vae(
    models: Iterable[Any],
    corpus_dir: str | Path,
    *,
    split: str = "test",
    labels: Optional[Iterable[str]] = None,
    max_windows: Optional[int] = None,
    pairs: int = 50,
    steps: int = 7,
    samples: int = 100,
    batch_size: int = 64,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict:
    """Reconstruction and interpolation metrics of MusicVAE bundles (folders or ``Bundle``) on a split.

    ``labels`` defaults to the first model's training labels (its card). ``max_windows`` keeps a
    seeded random subset of each window set; ``pairs`` interpolation pairs per model (0: none);
    ``samples`` melodies sampled from the prior per model (0: none).
    """
    from partita.generation.vae import load_vae

    corpus = Corpus(corpus_dir)
    bundles = [load_vae(m) for m in models]
    if not bundles:
        raise PartitaError("give at least one MusicVAE bundle to evaluate")
    if labels is None:
        card_labels = bundles[0].card.get("labels") if isinstance(bundles[0].card, dict) else None
        labels = [x for x in (card_labels or []) if x in corpus.labels] or None
    data: dict[int, dict] = {}
    result: dict = {"split": split, "corpus": str(corpus.path), "labels": list(labels) if labels else None,
                    "windows": {}, "models": [], "baselines": [], "interpolation": []}
    for bundle in bundles:
        model, c = bundle.model, bundle.model.config
        if c.bars not in data:
            test, _ = corpus_windows(corpus, split, c.bars, labels=labels)
            train, _ = corpus_windows(corpus, "train", c.bars, labels=labels)
            if len(test) == 0:
                raise PartitaError(f"{corpus.path}: no {c.bars}-bar melody windows in the {split} split")
            if len(train) == 0:
                raise PartitaError(f"{corpus.path}: no {c.bars}-bar melody windows in the train split for the baselines")
            if max_windows is not None and len(test) > max_windows:
                test = test[np.sort(np.random.default_rng(seed).choice(len(test), max_windows, replace=False))]
            real = melody_stats(test)
            lo, hi = np.nanpercentile(real, 5, axis=0), np.nanpercentile(real, 95, axis=0)
            data[c.bars] = {"test": test, "train": train, "lo": lo, "hi": hi}
            result["windows"][str(c.bars)] = {"test": int(len(test)), "train": int(len(train))}
            majority = majority_per_position(train)
            bigram = bigram_table(train)
            prev = np.concatenate([np.full((len(test), 1), NUM_CLASSES), test[:, :-1]], 1).astype(np.int64)
            result["baselines"].append({"name": "majority class per step", "bars": c.bars, "compare_with": "sampled",
                                        **_accuracies(np.broadcast_to(majority, test.shape), test)})
            result["baselines"].append({"name": "bigram next event", "bars": c.bars, "compare_with": "teacher_forced",
                                        **_accuracies(bigram[prev], test)})
        d = data[c.bars]
        name = bundle.path.name if bundle.path is not None else f"model-{len(result['models'])}"
        if bundle.path is not None and name == "bundle":
            name = bundle.path.parent.name
        row = {"name": name, "path": str(bundle.path) if bundle.path else None, "bars": c.bars,
               "decoder": c.decoder, "parameters": model.num_parameters(),
               **_evaluate_model(model, d["test"], batch_size, seed, progress)}
        if samples > 0:
            row["prior_samples"] = prior_samples_report(model, samples, d["lo"], d["hi"], seed, batch_size)
            row["prior_samples"]["real_notes_per_bar"] = float(np.nanmean(melody_stats(d["test"])[:, 0]))
        result["models"].append(row)
        if pairs > 0:
            rng = np.random.default_rng(seed)
            n = len(d["test"])
            ia = rng.integers(0, n, pairs)
            ib = (ia + 1 + rng.integers(0, max(n - 1, 1), pairs)) % max(n, 1)  # never the same window
            a, b = d["test"][ia], d["test"][ib]
            points = steps + 2
            paths = _interpolate_pairs(model, a, b, points, batch_size)
            result["interpolation"].append({"name": name, "kind": "latent slerp", "bars": c.bars, "pairs": int(pairs),
                                            **interpolation_report(paths, a, b, d["lo"], d["hi"])})
            if not any(r["kind"] == "data crossfade" and r["bars"] == c.bars for r in result["interpolation"]):
                base = crossfade(a, b, points, seed)
                result["interpolation"].append({"name": "data-space crossfade", "kind": "data crossfade",
                                                "bars": c.bars, "pairs": int(pairs),
                                                **interpolation_report(base, a, b, d["lo"], d["hi"])})
    return result
