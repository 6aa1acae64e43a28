"""Training the GRU composer classifier (``partita train classifier``) with Lightning.

Data: the corpus's token streams (``partita data tokenize``; a one-line error when missing), cut
into segments by ``LabelledSegments`` (shared with the transformer VAE, ``partita.train.tvae``):

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
from partita.models.classifier import ClassifierConfig, GRUClassifier, segment_windows
from partita.train.common import ResumableModule, RunConfig, run, start_run
from partita.data.streams import token_streams

__all__ = ["LabelledSegments", "choose_labels", "train_classifier"]


def choose_labels(corpus: Corpus, labels: list[str] | None = None, min_pieces: int = 40) -> list[str]:
    """The label set: ``labels`` (checked against the corpus, matched ignoring case) or every
    label with at least ``min_pieces`` good pieces, in the corpus's (sorted) order."""
    counts: dict[str, int] = {}
    for r in corpus.pieces:
        if r["label"] is not None:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    if labels:
        by_lower = {k.lower(): k for k in counts}
        out = []
        for name in labels:
            key = by_lower.get(str(name).strip().lower())
            if key is None:
                raise PartitaError(f"label {name!r} is not in the corpus; its labels: {', '.join(sorted(counts))}")
            if key not in out:
                out.append(key)
    else:
        out = [k for k in sorted(counts) if counts[k] >= min_pieces]
    if len(out) < 2:
        raise PartitaError(
            f"need at least 2 labels with >= {min_pieces} pieces, the corpus has {len(out)}: "
            "lower --min-pieces or name them with --labels"
        )
    return out


class LabelledSegments:
    """Token segments of the pieces of a label set, by split (module doc).

    ``labels``: the label names (index = class). Pieces with another label, no label or no
    tokens are left out. ``keep_eos=False`` (classifier): the music tokens only (BOS and EOS
    dropped); ``keep_eos=True`` (VAE): BOS dropped but EOS kept, so a model learns where pieces end.
    """

    def __init__(self, corpus: Corpus, streams, labels: list[str], *, pad_id: int = 0, keep_eos: bool = False):
        self.streams, self.labels, self.pad_id, self.keep_eos = streams, list(labels), pad_id, keep_eos
        index = {name: k for k, name in enumerate(self.labels)}
        rows = {r["id"]: r for r in corpus.pieces}
        self.label_of: dict[int, int] = {}
        self.by_split: dict[str, dict[int, list[int]]] = {}
        for i, pid in enumerate(streams.ids):
            row = rows.get(pid)
            if row is None or row["label"] not in index or not row["split"] or streams.lengths[i] < 3:
                continue
            k = index[row["label"]]
            self.label_of[i] = k
            self.by_split.setdefault(row["split"], {}).setdefault(k, []).append(i)
        self._bar_starts: dict[int, np.ndarray] = {}

    def pieces(self, split: str) -> list[int]:
        """Stream indices of ``split``'s pieces, in stream order."""
        return sorted(i for ps in self.by_split.get(split, {}).values() for i in ps)

    def counts(self, split: str) -> dict[str, int]:
        got = self.by_split.get(split, {})
        return {name: len(got.get(k, [])) for k, name in enumerate(self.labels)}

    def tokens(self, i: int) -> np.ndarray:
        """Piece ``i``'s tokens without BOS (and without EOS unless ``keep_eos``)."""
        t = self.streams.piece(i)
        return np.asarray(t[1:] if self.keep_eos else t[1:-1], dtype=np.int64)

    def bar_starts(self, i: int) -> np.ndarray:
        """Offsets (into ``tokens(i)``) of the first token of every bar."""
        if i not in self._bar_starts:
            bars = np.asarray(self.streams.bars(i)[1:], dtype=np.int64)
            starts = np.flatnonzero(np.diff(bars) != 0) + 1
            self._bar_starts[i] = np.concatenate([[0], starts]).astype(np.int64)
        return self._bar_starts[i]

    def check(self, split: str, what: str) -> None:
        missing = [name for name, n in self.counts(split).items() if n == 0]
        if not self.by_split.get(split) or missing:
            raise PartitaError(
                f"the corpus has no {split} pieces with tokens for label(s) {', '.join(missing or self.labels)}: "
                f"{what} needs every label in the {split} split"
            )

    def sample(self, split: str, batch_size: int, seq_len: int, rng: np.random.Generator, *,
               min_len: int | None = None, crop_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, seq_len] padded, labels [B])``: label-balanced random windows on bar lines;
        with probability ``crop_prob`` a window is cut to a random length in ``[min_len, seq_len]``."""
        groups = self.by_split.get(split, {})
        keys = sorted(groups)
        ids = np.full((batch_size, seq_len), self.pad_id, np.int64)
        labels = np.zeros(batch_size, np.int64)
        for b in range(batch_size):
            k = keys[int(rng.integers(len(keys)))]
            i = groups[k][int(rng.integers(len(groups[k])))]
            toks = self.tokens(i)
            starts = self.bar_starts(i)
            fits = starts[starts <= max(len(toks) - seq_len, 0)]
            s = int(fits[int(rng.integers(len(fits)))]) if len(fits) else 0
            n = min(seq_len, len(toks) - s)
            if crop_prob and min_len and rng.random() < crop_prob and n > min_len:
                n = int(rng.integers(min_len, n + 1))
            ids[b, :n] = toks[s : s + n]
            labels[b] = k
        return ids, labels

    def fixed_windows(self, split: str, seq_len: int, per_piece: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids [N, seq_len], labels [N], piece [N])``: up to ``per_piece`` evenly spread windows
        of every piece of ``split`` (deterministic: the same windows every time)."""
        rows, labels, piece = [], [], []
        for i in self.pieces(split):
            toks = self.tokens(i)
            for s, e in segment_windows(len(toks), seq_len, per_piece):
                row = np.full(seq_len, self.pad_id, np.int64)
                row[: e - s] = toks[s:e]
                rows.append(row)
                labels.append(self.label_of[i])
                piece.append(i)
        if not rows:
            return np.zeros((0, seq_len), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.stack(rows), np.asarray(labels), np.asarray(piece)


class SeededBatches(torch.utils.data.IterableDataset):
    """Endless batches; batch ``k`` comes from ``np.random.default_rng([seed, k])`` (module doc).
    ``module.batches_seen`` says where to start, so a resumed run continues the sequence."""

    def __init__(self, module, draw):
        self.module, self.draw = module, draw

    def __iter__(self):
        k = self.module.batches_seen
        rank = self.module.global_rank  # several processes (DDP) draw different batches
        while True:
            yield self.draw(np.random.default_rng([self.module.hparams.seed, k] + ([rank] if rank else [])))
            k += 1


def fixed_loader(ids: np.ndarray, labels: np.ndarray, batch_size: int):
    data = torch.utils.data.TensorDataset(torch.from_numpy(ids), torch.from_numpy(labels))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


class ClassifierModule(ResumableModule):
    def __init__(self, config: dict, *, lr: float = 2e-3, weight_decay: float = 0.01, warmup: int = 100,
                 max_steps: int = 2000, min_lr_ratio: float = 0.1, batch_size: int = 32, min_len: int = 32,
                 crop_prob: float = 0.5, val_per_piece: int = 4, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.model = GRUClassifier(ClassifierConfig.from_dict(config))
        self.data: LabelledSegments | None = None
        self.batches_seen = 0
        self._val: list = []

    def attach(self, data: LabelledSegments) -> None:
        self.data = data

    def _draw(self, rng):
        hp, c = self.hparams, self.model.config
        ids, labels = self.data.sample("train", hp.batch_size, c.segment, rng, min_len=hp.min_len, crop_prob=hp.crop_prob)
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


#: ``RunConfig`` defaults of the classifier.
RUN_DEFAULTS = dict(batch_size=32, max_steps=2000, lr=2e-3, weight_decay=0.01, warmup=100, min_lr_ratio=0.1)


def train_classifier(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    preset: str = "small",
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
    corpus = Corpus(corpus_dir)
    streams = token_streams(corpus)
    tokenizer = streams.tokenizer()
    names = choose_labels(corpus, labels, min_pieces)
    data = LabelledSegments(corpus, streams, names, pad_id=special_id(tokenizer, "PAD"))
    data.check("train", "training")
    data.check("valid", "validation")
    config = ClassifierConfig.preset(preset, **{"vocab_size": len(tokenizer), "labels": names,
                                                "pad_id": special_id(tokenizer, "PAD"), **(overrides or {})})
    if config.vocab_size != len(tokenizer):
        raise PartitaError(f"vocab_size {config.vocab_size} does not match the tokenizer's {len(tokenizer)} tokens")
    if config.labels != names:
        raise PartitaError("set the label set with --labels/--min-pieces, not --set labels=")

    def make_module(r: RunConfig) -> ClassifierModule:
        module = ClassifierModule(config.to_dict(), lr=r.lr, weight_decay=r.weight_decay, warmup=r.warmup,
                                  max_steps=r.max_steps, min_lr_ratio=r.min_lr_ratio, batch_size=r.batch_size,
                                  min_len=min_len, crop_prob=crop_prob, seed=r.seed)
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
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks)


__all__ += ["ClassifierModule", "SeededBatches", "fixed_loader"]
