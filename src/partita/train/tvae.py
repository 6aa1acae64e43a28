"""Training the composer-conditioned transformer VAE (``partita train tvae``) with Lightning.

Data: segments of ``context`` tokens starting on a bar line, drawn label-balanced from the train
pieces of the label set (``partita.data.segments.LabelledSegments``, the classifier's sampler:
same label choice, same seeded batches, so ``--resume`` continues exactly). A segment that reaches
the end of its piece keeps the EOS token, so the decoder learns where pieces end.

Loss per predicted token (an ELBO, with the two usual guards against posterior collapse)::

    loss = (sum of token cross-entropies + beta_t * B * sum_d max(mean_b KL[b, d], free_bits)) / tokens

* ``beta_t`` rises linearly from 0 to ``beta`` over ``kl_warmup`` steps (KL annealing: the
  decoder first learns to use z, then the latent is pulled onto the prior);
* *free bits*: a latent dimension whose batch-mean KL is below ``free_bits`` nats costs a constant,
  so the optimiser gains nothing by collapsing it all the way.

Validation: fixed windows of the validation pieces, ``z = mu``; logs ``val/loss`` (the ELBO per
token with beta = 1, no free bits: comparable across runs), ``val/recon`` (nats per token),
``val/kl`` (nats per segment) and ``val/latent_acc``: how often the nearest prior component
(by log density) of a window's ``mu`` is its own composer, a quick check that the latent space
is organised by composer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.models.tvae import TVAE, TVAEConfig
from partita.data.segments import LabelledSegments, choose_labels
from partita.train.classifier import SeededBatches, fixed_loader
from partita.train.common import ResumableModule, RunConfig, resumed_model, run, start_run
from partita.represent.tokens import token_streams

__all__ = ["TVAEModule", "train_tvae", "kl_weight", "component_log_density"]


def kl_weight(step: int, *, warmup: int, beta: float) -> float:
    """The KL weight at ``step``: linear from 0 to ``beta`` over ``warmup`` steps, then ``beta``."""
    if warmup <= 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup)


def component_log_density(model: TVAE, z: torch.Tensor) -> torch.Tensor:
    """``[B, n_labels]``: log N(z; prior_mu[k], exp(prior_logvar[k])) for every component k."""
    mu = model.prior_mu[None]
    logvar = model.prior_logvar.clamp(-10.0, 10.0)[None]
    return -0.5 * (((z[:, None, :] - mu) ** 2) / logvar.exp() + logvar + np.log(2 * np.pi)).sum(-1)


#: ``RunConfig`` defaults of the transformer VAE.
RUN_DEFAULTS = dict(batch_size=16, max_steps=2000, lr=1e-3, weight_decay=0.01, warmup=100, min_lr_ratio=0.1)


class TVAEModule(ResumableModule):
    """The transformer VAE under a ``run`` (``RunConfig``); the KL weight and free bits of the
    module doc, ``val_per_piece`` validation windows."""

    run_defaults = RUN_DEFAULTS

    def __init__(self, config: dict, run: RunConfig | dict | None = None, *, kl_warmup: int = 500,
                 beta: float = 1.0, free_bits: float = 0.1, val_per_piece: int = 2):
        super().__init__(run)
        self.save_hyperparameters()
        self.model = TVAE(TVAEConfig.from_dict(config))
        self.data: LabelledSegments | None = None
        self.batches_seen = 0
        self._val: list = []

    def attach(self, data: LabelledSegments) -> None:
        self.data = data

    def _draw(self, rng):
        ids, labels = self.data.sample("train", self.run_config.batch_size, self.model.config.context, rng)
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SeededBatches(self, self._draw), batch_size=None, generator=torch.Generator())

    def val_dataloader(self):
        ids, labels, _ = self.data.fixed_windows("valid", self.model.config.context, self.hparams.val_per_piece)
        return fixed_loader(ids, labels, 64)

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        hp = self.hparams
        out = self.model(ids, labels)
        beta = kl_weight(self.global_step, warmup=hp.kl_warmup, beta=hp.beta)
        kl_dims = out.kl.mean(dim=0)  # [d_latent], batch mean
        kl_term = torch.clamp(kl_dims, min=hp.free_bits).sum() * ids.shape[0]
        loss = (out.recon + beta * kl_term) / max(out.n_tokens, 1)
        self.batches_seen += 1
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/recon", out.recon / max(out.n_tokens, 1), prog_bar=True)
        self.log("train/kl", kl_dims.sum(), prog_bar=True)
        self.log("train/beta", beta)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_validation_epoch_start(self):
        self._val = []

    def validation_step(self, batch, batch_idx):
        ids, labels = batch
        out = self.model(ids, labels, sample=False)
        near = component_log_density(self.model, out.mu).argmax(-1)
        self._val.append((float(out.recon), out.n_tokens, float(out.kl.sum()), len(labels), int((near == labels).sum())))

    def on_validation_epoch_end(self):
        recon = sum(v[0] for v in self._val)
        tokens = max(sum(v[1] for v in self._val), 1)
        kl = sum(v[2] for v in self._val)
        n = max(sum(v[3] for v in self._val), 1)
        self.log("val/loss", (recon + kl) / tokens, prog_bar=True)
        self.log("val/recon", recon / tokens)
        self.log("val/kl", kl / n)
        self.log("val/latent_acc", sum(v[4] for v in self._val) / n, prog_bar=True)


def train_tvae(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    labels: list[str] | None = None,
    min_pieces: int = 40,
    kl_warmup: int = 500,
    beta: float = 1.0,
    free_bits: float = 0.1,
    callbacks: list | None = None,
    command: str | None = None,
    **run_options,
) -> dict:
    """Train a composer-conditioned TVAE on a prepared, tokenised corpus; returns the card written
    with the bundle. ``run_config`` or ``RunConfig`` fields as keyword arguments describe the run."""
    from partita.represent.tokens import special_id

    config_run, out = start_run(out, run_config, run_options, RUN_DEFAULTS)
    preset, model = resumed_model(out, config_run, preset, overrides)  # ``preset`` defaults to small
    corpus = Corpus(corpus_dir)
    streams = token_streams(corpus)
    tokenizer = streams.tokenizer()
    names = choose_labels(corpus, labels, min_pieces)
    pad = special_id(tokenizer, "PAD")
    data = LabelledSegments(corpus, streams, names, pad_id=pad, keep_eos=True)
    data.check("train", "training")
    data.check("valid", "validation")
    config = TVAEConfig.from_dict(model) if model else TVAEConfig.preset(preset, **{"vocab_size": len(tokenizer), "labels": names, "pad_id": pad,
                                          "bos_id": special_id(tokenizer, "BOS"), "eos_id": special_id(tokenizer, "EOS"),
                                          **(overrides or {})})
    if config.vocab_size != len(tokenizer):
        raise PartitaError(f"vocab_size {config.vocab_size} does not match the tokenizer's {len(tokenizer)} tokens")
    if config.labels != names:
        raise PartitaError("set the composer set with --labels/--min-pieces, not --set labels=")

    def make_module(r: RunConfig) -> TVAEModule:
        module = TVAEModule(config.to_dict(), r, kl_warmup=kl_warmup, beta=beta, free_bits=free_bits)
        module.attach(data)
        return module

    def export(module: TVAEModule, card: dict) -> None:
        card["segments_seen"] = int(module.batches_seen * config_run.batch_size)
        save_bundle(module.model.cpu().float().eval(), out / "bundle", tokenizer=tokenizer, card=card,
                    fp16=config_run.fp16_bundle)

    card = {
        "family": "tvae",
        "corpus": str(corpus.path),
        "source": corpus.config.get("source"),
        "labels": names,
        "pieces": {split: data.counts(split) for split in ("train", "valid", "test")},
        "command": command or "partita.train.tvae.train_tvae(...)",
        "preset": preset,
        "parameters": TVAE(config).num_parameters(),
        "kl_warmup": kl_warmup,
        "beta": beta,
        "free_bits": free_bits,
        "notes": "metrics are on the corpus's validation split; 'partita eval conditioned' gives the test-split numbers",
    }
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks,
               settings={"preset": preset, "model": config.to_dict()})
