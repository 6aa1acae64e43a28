"""Training the GRU composer classifier (``partita train classifier``) with Lightning.

Data: the corpus's token streams (``partita data tokenize``; a one-line error when missing), cut
into segments by ``partita.data.segments.LabelledSegments`` (shared with the transformer VAE):

* the label set is chosen once (``choose_labels``): the labels given, or every label with at
  least ``min_pieces`` pieces, so that each class has enough pieces to learn from and to test on;
* a training batch is drawn label-balanced (a label uniformly, then one of its train pieces
  uniformly, then a window starting on a bar line), so that the big collections do not drown the
  small ones and a piece's length does not set its weight; half the windows are cut to a random
  length (>= ``min_len``) so that the classifier does not learn "short segment = folk tune" and
  can read short inputs (generated samples, short files);
* batch ``k`` is drawn from its own generator seeded with ``(seed, k)``: a resumed run draws
  exactly the batches an uninterrupted one would;
* validation reads fixed windows of every validation piece (``fixed_windows``) and reports the
  segment loss and accuracy.

At the end the bundle is written with the tokenizer and a card holding the test-split metrics of
``partita.evaluate.conditioned.evaluate_classifier`` (per piece, windows voted, next to the
majority class and a feature + logistic-regression baseline). The test split is not used for any
choice during training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.data.segments import LabelledSegments, choose_labels
from partita.models.classifier import ClassifierConfig, GRUClassifier
from partita.train.common import ResumableModule, RunConfig, resumed_model, run, start_run
from partita.represent.tokens import token_streams

__all__ = ["train_classifier"]


class SeededBatches(torch.utils.data.IterableDataset):
    """Endless batches; batch ``k`` comes from ``np.random.default_rng([seed, k])`` (module doc).
    ``module.batches_seen`` says where to start, so a resumed run continues the sequence."""

    def __init__(self, module, draw):
        self.module, self.draw = module, draw

    def __iter__(self):
        k = self.module.batches_seen
        rank = self.module.global_rank  # several processes (DDP) draw different batches
        while True:
            yield self.draw(np.random.default_rng([self.module.run_config.seed, k] + ([rank] if rank else [])))
            k += 1


def fixed_loader(ids: np.ndarray, labels: np.ndarray, batch_size: int):
    data = torch.utils.data.TensorDataset(torch.from_numpy(ids), torch.from_numpy(labels))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


#: ``RunConfig`` defaults of the classifier.
RUN_DEFAULTS = dict(batch_size=32, max_steps=2000, lr=2e-3, weight_decay=0.01, warmup=100, min_lr_ratio=0.1)


class ClassifierModule(ResumableModule):
    """The GRU classifier under a ``run`` (``RunConfig``); training crops of at least ``min_len``
    tokens (``crop_prob`` of them shorter than a segment), ``val_per_piece`` validation windows."""

    run_defaults = RUN_DEFAULTS

    def __init__(self, config: dict, run: RunConfig | dict | None = None, *, min_len: int = 32,
                 crop_prob: float = 0.5, val_per_piece: int = 4):
        super().__init__(run)
        self.save_hyperparameters()
        self.model = GRUClassifier(ClassifierConfig.from_dict(config))
        self.data: LabelledSegments | None = None
        self.batches_seen = 0
        self._val: list = []

    def attach(self, data: LabelledSegments) -> None:
        self.data = data

    def _draw(self, rng):
        hp, c = self.hparams, self.model.config
        ids, labels = self.data.sample("train", self.run_config.batch_size, c.segment, rng, min_len=hp.min_len,
                                       crop_prob=hp.crop_prob)
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SeededBatches(self, self._draw), batch_size=None, generator=torch.Generator())

    def val_dataloader(self):
        ids, labels, _ = self.data.fixed_windows("valid", self.model.config.segment, self.hparams.val_per_piece)
        return fixed_loader(ids, labels, 64)

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        logits, loss = self.model(ids, labels)
        self.batches_seen += 1
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(-1) == labels).float().mean())
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_validation_epoch_start(self):
        self._val = []

    def validation_step(self, batch, batch_idx):
        ids, labels = batch
        logits, _ = self.model(ids)
        self._val.append((torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                          (logits.argmax(-1) == labels).sum(), len(labels)))

    def on_validation_epoch_end(self):
        n = max(sum(x[2] for x in self._val), 1)
        self.log("val/loss", float(sum(float(x[0]) for x in self._val) / n), prog_bar=True)
        self.log("val/acc", float(sum(int(x[1]) for x in self._val) / n), prog_bar=True)


def train_classifier(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    labels: list[str] | None = None,
    min_pieces: int = 40,
    min_len: int = 32,
    crop_prob: float = 0.5,
    callbacks: list | None = None,
    evaluate: bool = True,
    command: str | None = None,
    **run_options,
) -> dict:
    """Train a GRU composer classifier on a prepared, tokenised corpus; returns the card written
    with the bundle. ``run_config`` or ``RunConfig`` fields as keyword arguments describe the run."""
    from partita.represent.tokens import special_id

    config_run, out = start_run(out, run_config, run_options, RUN_DEFAULTS)
    preset, model = resumed_model(out, config_run, preset, overrides)  # ``preset`` defaults to small
    corpus = Corpus(corpus_dir)
    streams = token_streams(corpus)
    tokenizer = streams.tokenizer()
    names = choose_labels(corpus, labels, min_pieces)
    data = LabelledSegments(corpus, streams, names, pad_id=special_id(tokenizer, "PAD"))
    data.check("train", "training")
    data.check("valid", "validation")
    config = ClassifierConfig.from_dict(model) if model else ClassifierConfig.preset(
        preset, **{"vocab_size": len(tokenizer), "labels": names, "pad_id": special_id(tokenizer, "PAD"), **(overrides or {})})
    if config.vocab_size != len(tokenizer):
        raise PartitaError(f"vocab_size {config.vocab_size} does not match the tokenizer's {len(tokenizer)} tokens")
    if config.labels != names:
        raise PartitaError("set the label set with --labels/--min-pieces, not --set labels=")

    def make_module(r: RunConfig) -> ClassifierModule:
        module = ClassifierModule(config.to_dict(), r, min_len=min_len, crop_prob=crop_prob)
        module.attach(data)
        return module

    def export(module: ClassifierModule, card: dict) -> None:
        model = module.model.cpu().float().eval()
        card["segments_seen"] = int(module.batches_seen * config_run.batch_size)
        if evaluate and data.by_split.get("test"):
            from partita.evaluate.conditioned import evaluate_classifier

            card["metrics"]["test"] = evaluate_classifier(model, corpus, streams=streams, split="test")
        save_bundle(model, out / "bundle", tokenizer=tokenizer, card=card, fp16=config_run.fp16_bundle)

    card = {
        "family": "classifier",
        "corpus": str(corpus.path),
        "source": corpus.config.get("source"),
        "labels": names,
        "pieces": {split: data.counts(split) for split in ("train", "valid", "test")},
        "command": command or "partita.train.classifier.train_classifier(...)",
        "preset": preset,
        "parameters": GRUClassifier(config).num_parameters(),
    }
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks,
               settings={"preset": preset, "model": config.to_dict()})


__all__ += ["ClassifierModule", "SeededBatches", "fixed_loader"]
