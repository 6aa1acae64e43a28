"""Training the feature embedder (``partita train featnet``) with Lightning.

Data: augmented crops of the corpus's train pieces, each turned into a descriptor
(``partita.represent.features.piano_descriptor``). A crop is what another rendition of the same
music could look like: a random 30-90 s stretch (``crop_seconds``), played faster or slower (tempo
x 0.8-1.25: every time scaled), louder or softer (velocities scaled and jittered), with up to 15%
of its notes dropped, sometimes without the sustain pedal (durations cut), and, with
``transpose > 0``, moved by up to that many semitones. ``crops`` crops per piece are drawn once, in
the worker pool, seeded, before training starts; batches are drawn from them.

Loss: a two-level supervised contrastive loss over each batch of ``works_per_batch`` works x
``per_work`` crops. For every crop the target distribution over the other crops of the batch gives
weight 1 to crops of the same work (``group`` in the corpus: every performance and the score of
one work share it) and ``composer_weight`` to crops of other works by the same composer (label),
0 to the rest; the loss is the cross-entropy between that target and the softmax of cosine
similarities / ``temperature``. So the embedding keeps a work's renditions together (retrieval)
and a composer's works near each other (attribution).

Validation (every ``--val-every`` steps, on whole pieces, as ``partita embed`` will see them):
``val/composer_top1``, the share of validation pieces whose nearest composer centroid (centroids of
the train pieces' embeddings) is their composer; ``val/rendition_r1``, where the corpus has
performances and scores (``kind``), the share of validation performances whose most similar score
among all scores is their work's; ``val/score``, their mean, picks the best checkpoint. At the
end the model's atypicality limit is set from the train pieces (``partita.models.featnet``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.models.featnet import FeatNet, FeatNetConfig
from partita.represent.features import augmented_crop, piano_descriptor
from partita.train.classifier import SeededBatches
from partita.train.common import ResumableModule, RunConfig, run, start_run

__all__ = ["FeatNetModule", "augmented_crop", "crop_bank", "two_level_supcon", "train_featnet"]


# --- data -----------------------------------------------------------------------------------------


_WORKER: dict = {}


def _open_corpus(path: str) -> None:
    _WORKER["corpus"] = Corpus(path)


def _piece_crops(item: tuple) -> np.ndarray | None:
    index, seed, crops, crop_seconds, transpose, tolerance = item
    notes = _WORKER["corpus"].notes(index)
    rng = np.random.default_rng([seed, index])
    out = []
    for _ in range(crops):
        try:
            out.append(piano_descriptor(augmented_crop(notes, rng, crop_seconds=crop_seconds, transpose=transpose),
                                        chord_tolerance=tolerance))
        except ValueError:  # too few notes
            continue
    return np.stack(out) if out else None


def _whole_piece(item: tuple) -> np.ndarray | None:
    index, tolerance = item
    try:
        return piano_descriptor(_WORKER["corpus"].notes(index), chord_tolerance=tolerance)
    except ValueError:
        return None


def _pool_map(corpus: Corpus, fn, items: list, workers: int | None) -> list:
    from partita.data.pool import isolated_map

    out: list = [None] * len(items)
    for k, _, result in isolated_map(fn, items, workers=workers, on_crash=lambda item: None,
                                     initializer=_open_corpus, initargs=(str(corpus.path),)):
        out[k] = result
    return out


def crop_bank(corpus: Corpus, pieces: list[int], *, crops: int, seed: int, crop_seconds=(30.0, 90.0), transpose: int = 0,
              chord_tolerance: float = 0.05, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``crops`` augmented descriptors per piece, computed in the worker pool: ``(descriptors
    [N, D] float32, piece index of each row [N])``. Seeded by ``(seed, piece)``: the same whatever
    the number of workers."""
    items = [(i, seed, crops, tuple(crop_seconds), transpose, chord_tolerance) for i in pieces]
    rows, owners = [], []
    for i, result in zip(pieces, _pool_map(corpus, _piece_crops, items, workers)):
        if result is not None:
            rows.append(result)
            owners.append(np.full(len(result), i, np.int64))
    if not rows:
        raise PartitaError(f"{corpus.path}: no train piece has enough notes to crop")
    return np.concatenate(rows).astype(np.float32), np.concatenate(owners)


def two_level_supcon(z: torch.Tensor, work: torch.Tensor, label: torch.Tensor, *, composer_weight: float,
                     temperature: float) -> torch.Tensor:
    """The loss of the module doc for unit embeddings ``z [B, dim]``, work ids and label ids
    (label -1: unlabelled, never a composer positive). Crops without any positive add nothing."""
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    same_work = work[:, None] == work[None, :]
    same_label = (label[:, None] == label[None, :]) & (label[:, None] >= 0)
    target = same_work.float() + composer_weight * (same_label & ~same_work).float()
    target = target.masked_fill(eye, 0.0)
    total = target.sum(1)
    has = total > 0
    if not has.any():
        return z.sum() * 0.0
    log_p = torch.log_softmax(logits, 1).masked_fill(eye, 0.0)
    return -((target[has] / total[has, None]) * log_p[has]).sum(1).mean()


class FeatNetData:
    """The pieces of a corpus as a FeatNet trains on them: label and work ids, kinds, splits."""

    def __init__(self, corpus: Corpus):
        rows = corpus.pieces
        self.corpus = corpus
        self.labels: list[str] = corpus.labels
        label_index = {name: k for k, name in enumerate(self.labels)}
        works: dict[str, int] = {}
        self.label_of = np.array([label_index.get(r["label"], -1) for r in rows], np.int64)
        self.work_of = np.array([works.setdefault(r.get("group") or r["id"], len(works)) for r in rows], np.int64)
        self.kind = np.array([r.get("kind") or "" for r in rows])
        self.split = {s: [i for i, r in enumerate(rows) if r["split"] == s] for s in ("train", "valid", "test")}


# --- the Lightning module ---------------------------------------------------------------------------


#: ``RunConfig`` defaults of the feature embedder (a batch is works_per_batch x per_work crops).
RUN_DEFAULTS = dict(max_steps=1500, lr=2e-3, weight_decay=0.05, warmup=50, min_lr_ratio=0.05, val_every=100,
                    checkpoint_every=500, precision="32-true")


class FeatNetModule(ResumableModule):
    """The FeatNet under a ``run`` (``RunConfig``) and its own batch and loss options."""

    run_defaults = RUN_DEFAULTS
    monitor = "val/score"
    monitor_mode = "max"
    items = "crops"

    def __init__(self, config: dict, run: RunConfig | dict | None = None, *, works_per_batch: int = 48,
                 per_work: int = 4, composer_weight: float = 0.1, temperature: float = 0.1):
        super().__init__(run)
        self.save_hyperparameters()
        self.model = FeatNet(FeatNetConfig.from_dict(config))
        self.batches_seen = 0
        self.bank = self.owner = None
        self.data: FeatNetData | None = None
        self.whole: dict[int, np.ndarray] = {}

    def items_in(self, batch) -> int:
        return int(batch[0].shape[0])

    def attach(self, data: FeatNetData, bank: np.ndarray, owner: np.ndarray, whole: dict[int, np.ndarray]) -> None:
        self.data, self.bank, self.owner, self.whole = data, torch.from_numpy(bank), owner, whole
        self._rows_of_work: dict[int, np.ndarray] = {}
        works = data.work_of[owner]
        for w in np.unique(works):
            self._rows_of_work[int(w)] = np.flatnonzero(works == w)
        self._works = np.array(sorted(self._rows_of_work))

    def _draw(self, rng: np.random.Generator):
        hp = self.hparams
        works = rng.choice(self._works, min(hp.works_per_batch, len(self._works)), replace=False)
        rows = np.concatenate([rng.choice(self._rows_of_work[int(w)], hp.per_work) for w in works])
        owner = self.owner[rows]
        return (self.bank[rows], torch.from_numpy(self.data.work_of[owner]), torch.from_numpy(self.data.label_of[owner]))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SeededBatches(self, self._draw), batch_size=None, generator=torch.Generator())

    def val_dataloader(self):  # everything happens in validation_step: one dummy batch
        return torch.utils.data.DataLoader([torch.zeros(1)], batch_size=None)

    def training_step(self, batch, batch_idx):
        x, work, label = batch
        z = self.model(x)
        loss = two_level_supcon(z.float(), work, label, composer_weight=self.hparams.composer_weight,
                                temperature=self.hparams.temperature)
        self.batches_seen += 1
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    @torch.no_grad()
    def embed(self, pieces: list[int]) -> tuple[np.ndarray, list[int]]:
        kept = [i for i in pieces if i in self.whole]
        if not kept:
            return np.zeros((0, self.model.config.dim), np.float32), []
        x = torch.from_numpy(np.stack([self.whole[i] for i in kept])).to(self.device)
        return self.model(x).float().cpu().numpy(), kept

    def validation_step(self, batch, batch_idx):
        metrics = validation_metrics(self, self.data)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "score")


def validation_metrics(module: FeatNetModule, data: FeatNetData) -> dict:
    """The module doc's validation figures on whole train and valid pieces."""
    ref, ref_kept = module.embed(data.split["train"])
    val, val_kept = module.embed(data.split["valid"])
    out: dict[str, float] = {}
    ref_labels, val_labels = data.label_of[ref_kept], data.label_of[val_kept]
    known = sorted(set(ref_labels[ref_labels >= 0].tolist()))
    ask = np.isin(val_labels, known)
    if known and ask.any():
        centroids = np.stack([ref[ref_labels == k].mean(0) for k in known])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        guess = np.array(known)[np.argmax(val[ask] @ centroids.T, 1)]
        out["composer_top1"] = float((guess == val_labels[ask]).mean())
    every = np.r_[ref_kept, val_kept].astype(np.int64)
    vectors = np.concatenate([ref, val]) if len(every) else ref
    is_score = data.kind[every] == "score"
    queries = np.flatnonzero((data.kind[every] == "performance") & np.isin(every, val_kept))
    if is_score.any() and len(queries):
        best = np.flatnonzero(is_score)[np.argmax(vectors[queries] @ vectors[is_score].T, 1)]
        out["rendition_r1"] = float((data.work_of[every[best]] == data.work_of[every[queries]]).mean())
    out["score"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


# --- the run ------------------------------------------------------------------------------------------


def train_featnet(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    preset: str = "small",
    overrides: dict | None = None,
    composer_weight: float = 0.1,
    temperature: float = 0.1,
    works_per_batch: int = 48,
    per_work: int = 4,
    crops: int = 16,
    crop_seconds: tuple[float, float] = (30.0, 90.0),
    transpose: int = 0,
    workers: int | None = None,
    callbacks: list | None = None,
    command: str | None = None,
    **run_options,
) -> dict:
    """Train a FeatNet on a prepared corpus (module doc); returns the card written with the bundle.
    ``run_config`` or ``RunConfig`` fields as keyword arguments describe the run; ``workers``
    processes draw the crops (default: every core)."""
    batch = (run_config.batch_size if run_config else None) or run_options.get("batch_size")
    if batch:
        per_work = max(2, batch // max(works_per_batch, 1))
    config_run, out = start_run(out, run_config, run_options, {**RUN_DEFAULTS, "batch_size": works_per_batch * per_work})
    if works_per_batch < 2 or per_work < 2:
        raise PartitaError("a batch needs >= 2 works and >= 2 crops per work (--works-per-batch, --per-work)")
    if not 0 <= composer_weight <= 1 or not temperature > 0:
        raise PartitaError("--composer-weight must be in [0, 1] and --temperature positive")
    if not 0 < crop_seconds[0] <= crop_seconds[1]:
        raise PartitaError(f"--crop-seconds must be MIN,MAX with 0 < MIN <= MAX, not {crop_seconds}")
    config = FeatNetConfig.preset(preset, **(overrides or {}))
    corpus = Corpus(corpus_dir)
    data = FeatNetData(corpus)
    if not data.split["train"]:
        raise PartitaError(f"{corpus.path} has no train pieces")
    if not data.split["valid"]:
        raise PartitaError(f"{corpus.path} has no valid pieces to choose the best checkpoint with; prepare it with --valid > 0")
    bank, owner = crop_bank(corpus, data.split["train"], crops=crops, seed=config_run.seed, crop_seconds=crop_seconds,
                            transpose=transpose, chord_tolerance=config.chord_tolerance, workers=workers)
    pieces = data.split["train"] + data.split["valid"]
    whole = {i: d for i, d in zip(pieces, _pool_map(corpus, _whole_piece, [(i, config.chord_tolerance) for i in pieces],
                                                      workers)) if d is not None}

    def make_module(r: RunConfig) -> FeatNetModule:
        module = FeatNetModule(config.to_dict(), r, works_per_batch=works_per_batch, per_work=per_work,
                               composer_weight=composer_weight, temperature=temperature)
        module.model.set_standardisation(torch.from_numpy(bank))
        module.attach(data, bank, owner, whole)
        return module

    def export(module: FeatNetModule, card: dict) -> None:
        card["crops_seen"] = int(module.batches_seen * works_per_batch * per_work)
        train_whole = [whole[i] for i in data.split["train"] if i in whole]
        module.model.set_atypicality_limit(torch.from_numpy(np.stack(train_whole)).to(module.model.mean.device))
        card["atypicality_limit"] = float(module.model.atypicality_limit)
        save_bundle(module.model.cpu().float(), out / "bundle", card=card, fp16=config_run.fp16_bundle)

    card = {
        "family": "featnet",
        "corpus": str(corpus.path),
        "source": corpus.config.get("source"),
        "labels": data.labels,
        "command": command or "partita.train.featnet.train_featnet(...)",
        "preset": preset,
        "parameters": FeatNet(config).num_parameters(),
        "pieces": {s: len(v) for s, v in data.split.items()},
        "crops": {"per_piece": crops, "seconds": list(crop_seconds), "transpose": transpose, "bank": len(bank)},
        "loss": {"composer_weight": composer_weight, "temperature": temperature, "works_per_batch": works_per_batch,
                 "per_work": per_work},
        "notes": "metrics are on the corpus's validation split; see 'partita eval embedder' for test-split numbers",
    }
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks)
