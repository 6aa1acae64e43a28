"""Training MusicVAE (``partita train vae``) with Lightning.

Data: 2-bar or 16-bar melody windows (``partita.represent.melody.corpus_windows``: one line per
track, skyline for polyphonic parts, windows every bar, rests of a bar or more left out, repeats
within a piece kept once) from a prepared corpus's pieces, optionally only some labels (the folk
collections, Essen / O'Neill's / Ryan's Mammoth, are nearly all single-line tunes: ideal).
``holdout`` corpora keep their valid and test windows unseen: training windows equal to one of
them, in any transposition, are dropped (a larger export of the same collections can then train
a model that is scored on the standard corpus's test split).
Training batches are drawn at random with replacement, each window transposed by a random number
of semitones in ``[-transpose, transpose]`` (clipped so every pitch stays in 0..127): melodies
are heard in every key, not only the few keys folk tunes are written in. Batch k is a function
of (seed, k) alone, so a resumed run draws the same batches as an uninterrupted one.

Optimisation: Adam, warmup then cosine decay, gradient clipping; the KL weight (beta) and the
scheduled-sampling probability follow the global step (see ``partita.models.musicvae``).
Validation: teacher-forced loss, KL and per-step accuracy decoding from ``mu``, on up to
``max_valid`` validation windows. The run folder follows ``partita.train.common``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.models.musicvae import MusicVAE, MusicVAEConfig
from partita.represent.melody import NOTE_OFF, corpus_windows, drop_windows
from partita.train.common import ResumableModule, RunConfig, resumed_model, run, start_run, warmup_cosine_optimizer


# --- corpus -> melody windows ------------------------------------------------------------------


def transpose_windows(windows: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each window moved by its shift in semitones, the shift clipped so every pitch stays in 0..127."""
    w = np.asarray(windows).astype(np.int64)
    is_note = w < NOTE_OFF
    lo = np.where(is_note, w, 127).min(axis=1)
    hi = np.where(is_note, w, 0).max(axis=1)
    shifts = np.clip(shifts, -lo, 127 - hi)  # a window without notes: lo=127, hi=0, any shift is clipped to 0
    return np.where(is_note, w + shifts[:, None], w)


def training_batch(windows: np.ndarray, k: int, *, batch_size: int, seed: int, transpose: int,
                   rank: int = 0) -> torch.Tensor:
    """Batch ``k`` of a run (of process ``rank``): random windows, randomly transposed; a function
    of (seed, k, rank) only."""
    rng = np.random.default_rng([seed, k] + ([rank] if rank else []))
    idx = rng.integers(0, len(windows), batch_size)
    shifts = rng.integers(-transpose, transpose + 1, batch_size) if transpose > 0 else np.zeros(batch_size, np.int64)
    return torch.from_numpy(transpose_windows(windows[idx], shifts))


class SegmentPosteriors:
    """The frozen segment model's posterior of each distinct segment, computed once.

    A segment recurs in every overlapping window (windows start every bar) and in every
    transposition drawn again, so after the first epochs nearly every segment of a batch is known
    and a training step costs only the top model (the segment encoder was 40% of a step).
    """

    def __init__(self, model: MusicVAE):
        self.model = model
        self.known: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        rows = m._segments(m._check(x))
        keys = [r.tobytes() for r in rows.to(torch.int16).cpu().numpy()]
        new = list(dict.fromkeys(k for k in keys if k not in self.known))
        if new:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            with torch.no_grad():
                mu, sigma = m.segment.encode(rows[[first[k] for k in new]])
            self.known.update(zip(new, zip(mu, sigma)))
        mu = torch.stack([self.known[k][0] for k in keys]).view(x.shape[0], m.config.units, -1)
        sigma = torch.stack([self.known[k][1] for k in keys]).view(x.shape[0], m.config.units, -1)
        return mu, sigma


def fit_prior(model: MusicVAE, windows: np.ndarray, *, seed: int = 0, batch_size: int = 512) -> dict:
    """Fit the model's ``prior_components``-Gaussian mixture (full covariances) to the posterior
    means of ``windows`` and store it in the model's prior buffers; returns what was fitted."""
    from sklearn.mixture import GaussianMixture

    k = model.config.prior_components
    if not k:
        raise PartitaError("this MusicVAE samples from N(0, I): set prior_components to fit a prior")
    model.eval()
    with torch.no_grad():
        mu = torch.cat([model.encode(torch.as_tensor(windows[s:s + batch_size].astype(np.int64)))[0]
                        for s in range(0, len(windows), batch_size)]).double().numpy()
    if len(mu) < 2 * k:
        raise PartitaError(f"{len(mu)} training windows are too few to fit a {k}-component prior")
    gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=seed, max_iter=100).fit(mu)
    with torch.no_grad():
        model.prior_weights.copy_(torch.as_tensor(gm.weights_))
        model.prior_means.copy_(torch.as_tensor(gm.means_))
        model.prior_scales.copy_(torch.linalg.cholesky(torch.as_tensor(gm.covariances_)))
    return {"components": k, "windows": int(len(mu)), "converged": bool(gm.converged_),
            "mean_log_likelihood": float(gm.score(mu))}


# --- the Lightning module ----------------------------------------------------------------------


#: ``RunConfig`` defaults of MusicVAE (Adam: no weight decay).
RUN_DEFAULTS = dict(batch_size=64, max_steps=2000, lr=1e-3, warmup=100, min_lr_ratio=0.05, weight_decay=0.0)


class VAEModule(ResumableModule):
    """MusicVAE under a ``run`` (``RunConfig``); ``transpose``: the random transposition range."""

    run_defaults = RUN_DEFAULTS

    def __init__(self, config: dict, run: RunConfig | dict | None = None, *, transpose: int = 5):
        super().__init__(run)
        self.save_hyperparameters()
        self.model = MusicVAE(MusicVAEConfig.from_dict(config))
        c = self.model.config
        self.segment_posteriors = SegmentPosteriors(self.model) if c.segment_bars and c.freeze_segments else None
        self.train_windows: np.ndarray | None = None
        self.valid_windows: np.ndarray | None = None
        self.batches_seen = 0
        self._val: dict | None = None

    def attach(self, train_windows: np.ndarray, valid_windows: np.ndarray) -> None:
        self.train_windows, self.valid_windows = train_windows, valid_windows

    def train_dataloader(self):
        module = self

        class Train(torch.utils.data.IterableDataset):
            def __iter__(self):
                k = module.batches_seen  # a resumed run continues with the next batch
                while True:
                    r = module.run_config
                    yield training_batch(module.train_windows, k, batch_size=r.batch_size, seed=r.seed,
                                         transpose=module.hparams.transpose, rank=module.global_rank)
                    k += 1

        return torch.utils.data.DataLoader(Train(), batch_size=None, generator=torch.Generator())

    def val_dataloader(self):
        w = torch.from_numpy(self.valid_windows.astype(np.int64))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(w), batch_size=256)

    def training_step(self, batch, batch_idx):
        known = self.segment_posteriors(batch) if self.segment_posteriors is not None else None
        _, losses = self.model(batch, step=int(self.global_step), segment_posterior=known)
        self.batches_seen += 1
        self.log("train/loss", losses["loss"], prog_bar=True)
        for name in ("recon", "kl", "accuracy", "beta", "p_sample"):
            if name in losses:
                self.log(f"train/{name}", losses[name], prog_bar=name == "accuracy")
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return losses["loss"]

    def on_validation_epoch_start(self):
        self._val = {"n": 0, "recon": 0.0, "kl": 0.0, "kl_cost": 0.0, "accuracy": 0.0}

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        _, losses = self.model(x, step=int(self.global_step), sample_z=False, p_sample=0.0)
        n = x.shape[0]
        self._val["n"] += n
        for key in ("recon", "kl", "kl_cost", "accuracy"):
            self._val[key] += float(losses[key]) * n

    def on_validation_epoch_end(self):
        v, c = self._val, self.model.config
        n = max(v["n"], 1)
        beta = (1.0 - c.beta_rate ** self.global_step) * c.max_beta if c.beta_rate else c.max_beta
        self.log("val/loss", (v["recon"] + beta * v["kl_cost"]) / n, prog_bar=True)
        self.log("val/recon", v["recon"] / n)
        self.log("val/kl", v["kl"] / n)
        self.log("val/accuracy", v["accuracy"] / n, prog_bar=True)

    def configure_optimizers(self):
        return warmup_cosine_optimizer(torch.optim.Adam(self.model.parameters(), lr=self.run_config.lr), self)


# --- the run -----------------------------------------------------------------------------------


def train_vae(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    bars: int = 2,
    decoder: str | None = None,
    preset: str | None = None,
    overrides: dict | None = None,
    labels: Optional[Iterable[str]] = None,
    holdout: Iterable[str | Path] = (),
    transpose: int = 5,
    segments: str | Path | None = None,
    max_valid: int = 1024,
    data_progress: Optional[Callable[[int, int], None]] = None,
    callbacks: list | None = None,
    command: str | None = None,
    **run_options,
) -> dict:
    """Train a MusicVAE on a prepared corpus's melody windows; returns the card written with the bundle.

    ``decoder`` defaults to flat for windows of up to 4 bars and hierarchical above (MusicVAE's
    choice). ``segments``: a trained flat short-window MusicVAE (a bundle folder or a shipped name,
    e.g. ``musicvae-2bar``) that codes each segment of the window; the new model learns the
    sequence of its codes (``segment_bars`` in ``partita.models.musicvae``), the segment model kept
    frozen unless ``freeze_segments=False``. ``run_config`` or ``RunConfig`` fields as keyword
    arguments describe the run.
    """
    config_run, out = start_run(out, run_config, run_options, RUN_DEFAULTS)
    preset, model = resumed_model(out, config_run, preset, overrides)  # ``preset`` defaults to small
    corpus = Corpus(corpus_dir)
    if bars < 1:
        raise PartitaError(f"--bars must be at least 1, got {bars}")
    if transpose < 0:
        raise PartitaError(f"--transpose must be >= 0 semitones, got {transpose}")
    if decoder is None:
        decoder = "flat" if bars <= 4 else "hierarchical"
    segment_model = None
    overrides = dict(overrides or {})
    if segments is not None:
        from partita.generation.vae import load_vae

        segment_model = load_vae(str(segments)).model
        sc = segment_model.config
        if sc.decoder != "flat" or sc.segment_bars:
            raise PartitaError(f"{segments}: --segments takes a flat short-window MusicVAE (e.g. musicvae-2bar)")
        decoder = "hierarchical"
        overrides.update(segment_bars=sc.bars, segment_z=sc.z_size, embed_size=sc.embed_size, enc_size=sc.enc_size,
                         enc_layers=sc.enc_layers, dec_size=sc.dec_size, dec_layers=sc.dec_layers, dropout=sc.dropout)
    config = MusicVAEConfig.from_dict(model) if model else MusicVAEConfig.preset(
        preset, **{"bars": bars, "decoder": decoder, **overrides})
    if config.bars != bars:
        raise PartitaError("set the window length with --bars, not with --set bars=...")

    train, train_info = corpus_windows(corpus, "train", bars, labels=labels, progress=data_progress)
    valid, valid_info = corpus_windows(corpus, "valid", bars, labels=labels)
    held_out = {}
    for other in holdout:
        other = Corpus(other)
        for split in ("valid", "test"):
            w, _ = corpus_windows(other, split, bars)
            before = len(train)
            train = drop_windows(train, w)
            held_out[f"{other.path}:{split}"] = {"windows": int(len(w)), "dropped_from_train": before - len(train)}
    train_info["windows"] = int(len(train))
    if len(train) == 0:
        raise PartitaError(f"{corpus.path}: no {bars}-bar melody windows in the train split (try other --labels or fewer --bars)")
    if len(valid) == 0:
        raise PartitaError(f"{corpus.path}: no {bars}-bar melody windows in the valid split to validate on")
    if len(valid) > max_valid:  # a fixed, seeded subset: validation stays quick and comparable
        valid = valid[np.sort(np.random.default_rng(config_run.seed).choice(len(valid), max_valid, replace=False))]

    def make_module(r: RunConfig) -> VAEModule:
        module = VAEModule(config.to_dict(), r, transpose=transpose)
        if segment_model is not None:  # a resumed run then loads its own weights over these
            module.model.segment.load_state_dict(segment_model.state_dict())
        module.attach(train, valid)
        return module

    def export(module: VAEModule, card: dict) -> None:
        if config.prior_components:
            card["prior"] = fit_prior(module.model.cpu().float(), train, seed=config_run.seed)
        save_bundle(module.model.cpu().float(), out / "bundle", card=card, fp16=config_run.fp16_bundle)

    card = {
        "family": "musicvae",
        "corpus": str(corpus.path),
        "source": corpus.config.get("source"),
        "labels": train_info["labels"] or corpus.labels,
        "bars": bars,
        "decoder": decoder,
        **({"segments": str(segments)} if segments is not None else {}),
        "command": command or "partita.train.vae.train_vae(...)",
        "preset": preset,
        "parameters": MusicVAE(config).num_parameters(),
        "batch_size": config_run.batch_size,
        "transpose": transpose,
        "windows": {"train": train_info["windows"], "valid": valid_info["windows"]},
        "holdout": held_out,
        "notes": "metrics are on the corpus's validation split; see 'partita eval vae' for test-split numbers",
    }
    # LSTM gradients shrink through hundreds of steps into denormal floats, which a CPU handles
    # ~10x slower (16-bar windows); flushing them to zero changes nothing that matters. The flag is
    # the thread's floating-point state, so it is set for the run only and put back after.
    flushed = torch.set_flush_denormal(True)
    try:
        return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks,
                   settings={"preset": preset, "model": config.to_dict()})
    finally:
        if flushed:
            torch.set_flush_denormal(False)
