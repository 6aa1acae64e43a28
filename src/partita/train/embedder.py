"""Training the SiaViT embedder (``partita train embedder``) with Lightning.

Batches are label-balanced: each step draws ``labels_per_batch`` labels and ``per_label`` pieces of
each from the train split, and one random crop of ``window_seconds`` from each piece (windows
start between the first note and the last start that fits; shorter pieces are zero-padded), with
optional transposition (every note moved by the same random number of semitones, within
``--transpose``) and multiplicative noise (each lit cell times ``1 + noise * N(0, 1)``, clipped at
0). Every pair in the batch is a training pair: same label = similar. Batch ``k`` is drawn from a
generator seeded with ``(seed, k)``, so a resumed run sees exactly the batches an uninterrupted
one would.

Losses (``--loss``):

* ``contrastive`` (Hadsell et al. 2006, Harmonixr): ``0.5 d^2`` for similar pairs and
  ``0.5 max(0, m - d)^2`` for dissimilar ones, each averaged over its pairs (so the many
  dissimilar pairs do not drown the few similar ones), ``d`` the Euclidean distance of unit
  embeddings (0..2). The margin ``m`` is dynamic: it starts at ``margin_start`` (low: a high margin
  on a collapsed start only pushes everything apart) and after every step becomes
  ``clip(max(mean_similar, mean_dissimilar) + margin_gap, margin_start, margin_max)`` from
  exponential moving averages of the two mean distances, so dissimilar pairs are always asked to
  be a little farther apart than they now are, until ``margin_max``.
* ``supcon`` (Khosla et al. 2020): supervised contrastive loss over the whole batch (every
  same-label window is a positive of every other), temperature ``temperature``.

Validation follows Harmonixr's scheme without its leaks: the validation pieces are split (seeded,
piece-level) into two disjoint halves; on the first, the *pseudo-validation* pairs pick the
distance threshold that maximises balanced accuracy; on the second, same-label pairs, different-
label pairs and a balanced mixed set report accuracy at that threshold, plus ROC-AUC over all its
pairs and the contrastive loss at a static margin (1.0) as ``val/loss``. The best checkpoint
(what the bundle holds) and early stopping follow ``val/auc``. Embeddings are piece embeddings (``partita.search.embed``, ``val_windows`` windows).

``--unseen-labels A,B`` leaves every piece of those labels out of training and validation, to
measure afterwards how the model treats composers it never saw (``partita eval embedder``); the
corpus's own ``unseen`` split (``partita data prepare --split-mode labels``) is never trained on
either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.evaluate.pairs import all_pairs, balanced_pairs, best_threshold, distances, roc_auc
from partita.models.siavit import SiaViT, SiaViTConfig
from partita.represent.pianoroll import random_crop
from partita.train.common import ResumableModule, RunConfig, run, start_run

LOSSES = ("contrastive", "supcon")
STATIC_MARGIN = 1.0


# --- data -----------------------------------------------------------------------------------


class EmbedderData:
    """The corpus's pieces per split with label indices (labels of the train split only)."""

    def __init__(self, corpus: Corpus, unseen_labels: list[str] | None = None):
        self.corpus = corpus
        self.unseen = sorted(set(unseen_labels or []))
        missing = [u for u in self.unseen if u not in corpus.labels]
        if missing:
            raise PartitaError(f"--unseen-labels: {', '.join(missing)} not in the corpus (labels: {', '.join(corpus.labels)})")
        rows = corpus.pieces
        train_labels = sorted({r["label"] for r in rows if r["split"] == "train" and r["label"] is not None}
                              - set(self.unseen))
        if len(train_labels) < 2:
            raise PartitaError(f"{corpus.path}: an embedder needs train pieces of at least 2 labels, found {len(train_labels)}")
        self.labels = train_labels
        index = {name: k for k, name in enumerate(self.labels)}
        self.split: dict[str, list[int]] = {}
        self.label_of: dict[int, int] = {}
        for i, r in enumerate(rows):
            if r["label"] in index and r["split"] in ("train", "valid", "test"):
                self.split.setdefault(r["split"], []).append(i)
                self.label_of[i] = index[r["label"]]
        self._notes: dict[int, np.ndarray] = {}
        self.by_label = [[i for i in self.split.get("train", []) if self.label_of[i] == k] for k in range(len(self.labels))]

    def notes(self, i: int) -> np.ndarray:
        if i not in self._notes:
            n = self.corpus.notes(i)
            self._notes[i] = n[~n["is_drum"]]
        return self._notes[i]

    def usable(self, i: int) -> bool:
        return len(self.notes(i)) > 0


def augment_notes(notes: np.ndarray, semitones: int) -> np.ndarray:
    if semitones == 0:
        return notes
    out = notes.copy()
    out["pitch"] = out["pitch"] + semitones  # the roll folds what leaves F1..E7 back by octaves
    return out


def make_batch(data: EmbedderData, config: SiaViTConfig, step: int, *, seed: int, labels_per_batch: int,
               per_label: int, transpose: int = 0, noise: float = 0.0) -> dict:
    """Training batch number ``step``: rolls ``[P*K, 12, 6, T]`` and label indices ``[P*K]``."""
    rng = np.random.default_rng([seed, step])
    available = [k for k, pieces in enumerate(data.by_label) if pieces]
    chosen = rng.choice(available, size=min(labels_per_batch, len(available)), replace=False)
    rolls, labels = [], []
    for k in sorted(chosen.tolist()):
        pieces = data.by_label[k]
        picks = rng.choice(pieces, size=per_label, replace=len(pieces) < per_label)
        for i in picks.tolist():
            notes = augment_notes(data.notes(i), int(rng.integers(-transpose, transpose + 1)) if transpose else 0)
            roll = random_crop(notes, config.window_seconds, rng, frame_seconds=config.frame_seconds, mode=config.mode)
            if noise > 0:
                roll = roll * np.clip(1.0 + noise * rng.standard_normal(roll.shape), 0.0, None).astype(np.float32)
            rolls.append(roll)
            labels.append(k)
    return {"rolls": torch.from_numpy(np.stack(rolls)), "labels": torch.tensor(labels)}


# --- losses and pair metrics ----------------------------------------------------------------


def pair_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of unit vectors, ``sqrt(2 - 2 cos)``, differentiable at 0."""
    cos = emb @ emb.T
    return torch.sqrt((2.0 - 2.0 * cos).clamp(min=1e-8))


def contrastive_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, float, float]:
    """Balanced contrastive loss over all pairs of the batch; also the mean similar/dissimilar distances."""
    d = pair_distances(emb)
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    pos, neg = same & upper, ~same & upper
    loss = emb.new_zeros(())
    mp = mn = float("nan")
    if pos.any():
        loss = loss + 0.5 * d[pos].pow(2).mean()
        mp = float(d[pos].detach().mean())
    if neg.any():
        loss = loss + 0.5 * (margin - d[neg]).clamp(min=0).pow(2).mean()
        mn = float(d[neg].detach().mean())
    return loss, mp, mn


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., "L_out"), over anchors that have a positive."""
    logits = emb @ emb.T / temperature
    n = len(labels)
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.any(dim=1)
    if not has.any():
        return emb.sum() * 0.0
    mean_pos = (log_prob.masked_fill(~pos, 0.0).sum(1)[has]) / pos.sum(1)[has]
    return -mean_pos.mean()


def pair_report(vectors: np.ndarray, labels: np.ndarray, threshold: float, rng: np.random.Generator) -> dict:
    """Accuracy at ``threshold`` on same, different and balanced mixed pairs; ROC-AUC on all pairs."""
    i, j, y = all_pairs(labels)
    d = distances(vectors, i, j)
    out = {"pairs": int(len(y)), "threshold": float(threshold), "auc": roc_auc(-d, y)}
    pred = d < threshold
    out["acc_same"] = float(pred[y == 1].mean()) if (y == 1).any() else float("nan")
    out["acc_diff"] = float((~pred[y == 0]).mean()) if (y == 0).any() else float("nan")
    mi, mj, my = balanced_pairs(labels, rng)
    md = distances(vectors, mi, mj)
    out["acc_mixed"] = float(((md < threshold) == (my == 1)).mean()) if len(my) else float("nan")
    loss = np.where(my == 1, 0.5 * md**2, 0.5 * np.clip(STATIC_MARGIN - md, 0, None) ** 2)
    out["loss"] = float(loss.mean()) if len(my) else float("nan")
    return out


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions 0..n-1 split into two disjoint halves (pseudo-validation, report), seeded."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def validation_metrics(vectors: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Harmonixr's validation without its leaks (module doc): threshold on one half, report on the other."""
    a, b = split_halves(len(labels), seed)
    ia, ja, ya = balanced_pairs(labels[a], np.random.default_rng([seed, 1]))
    t = best_threshold(distances(vectors[a], ia, ja), ya)
    return pair_report(vectors[b], labels[b], t, np.random.default_rng([seed, 2]))


# --- the Lightning module -------------------------------------------------------------------


#: ``RunConfig`` defaults of the embedder; its batch is ``labels_per_batch`` x ``per_label`` crops
#: (a ``batch_size`` sets ``per_label`` to ``batch_size // labels_per_batch``).
RUN_DEFAULTS = dict(max_steps=1000, lr=1e-3, weight_decay=0.05, warmup=50, min_lr_ratio=0.05)


class EmbedderModule(ResumableModule):
    """The SiaViT under a ``run`` (``RunConfig``: schedule, seed, ...) and its own loss, batch and
    augmentation options."""

    run_defaults = RUN_DEFAULTS
    monitor = "val/auc"  # the pair ROC-AUC on the reporting half of the validation pieces
    monitor_mode = "max"
    items = "crops"

    def items_in(self, batch) -> int:
        return int(batch["labels"].shape[0])

    def __init__(
        self,
        config: dict,
        run: RunConfig | dict | None = None,
        *,
        loss: str = "supcon",
        labels_per_batch: int = 8,
        per_label: int = 4,
        transpose: int = 0,
        noise: float = 0.1,
        temperature: float = 0.1,
        margin_start: float = 0.1,
        margin_gap: float = 0.2,
        margin_max: float = 1.2,
        margin_momentum: float = 0.9,
        val_windows: int = 4,
    ):
        super().__init__(run)
        if loss not in LOSSES:
            raise PartitaError(f"--loss must be one of {', '.join(LOSSES)}, not {loss!r}")
        self.save_hyperparameters()
        self.model = SiaViT(SiaViTConfig.from_dict(config))
        self.data: EmbedderData | None = None
        self.batches_seen = 0
        # Dynamic-margin state: saved in checkpoints (a resumed run continues from the same margin).
        self.register_buffer("margin", torch.tensor(float(margin_start)))
        self.register_buffer("ema_pos", torch.tensor(float("nan")))
        self.register_buffer("ema_neg", torch.tensor(float("nan")))
        self._val_vectors: list = []
        self._val_labels: list = []

    def attach(self, data: EmbedderData) -> None:
        self.data = data

    # data ----------------------------------------------------------------------------------

    def train_dataloader(self):
        module = self
        hp = self.hparams

        class Train(torch.utils.data.IterableDataset):
            def __iter__(self):
                step = module.batches_seen
                while True:
                    yield make_batch(module.data, module.model.config, step, seed=module.run_config.seed,
                                     labels_per_batch=hp.labels_per_batch, per_label=hp.per_label,
                                     transpose=hp.transpose, noise=hp.noise)
                    step += 1

        return torch.utils.data.DataLoader(Train(), batch_size=None, generator=torch.Generator())

    def val_dataloader(self):
        pieces = [i for i in self.data.split.get("valid", []) if self.data.usable(i)]
        if len(pieces) < 2:
            raise PartitaError("the corpus has fewer than 2 usable validation pieces of the trained labels; "
                               "prepare it with a larger --valid fraction")

        class Valid(torch.utils.data.IterableDataset):
            def __iter__(self):
                for start in range(0, len(pieces), 16):
                    yield pieces[start : start + 16]

        return torch.utils.data.DataLoader(Valid(), batch_size=None, generator=torch.Generator())

    # steps ---------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        emb = self.model(batch["rolls"])
        labels = batch["labels"].to(emb.device)
        self.batches_seen += 1
        if hp.loss == "supcon":
            loss = supcon_loss(emb.float(), labels, hp.temperature)
            with torch.no_grad():
                _, mp, mn = contrastive_loss(emb.float(), labels, float(self.margin))
        else:
            loss, mp, mn = contrastive_loss(emb.float(), labels, float(self.margin))
            self._update_margin(mp, mn)
        self.log("train/loss", loss, prog_bar=True)
        if np.isfinite(mp):
            self.log("train/dist_similar", mp)
        if np.isfinite(mn):
            self.log("train/dist_dissimilar", mn)
        self.log("train/margin", float(self.margin))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        return loss

    @torch.no_grad()
    def _update_margin(self, mp: float, mn: float) -> None:
        hp = self.hparams
        b = hp.margin_momentum
        for buf, value in ((self.ema_pos, mp), (self.ema_neg, mn)):
            if np.isfinite(value):
                buf.fill_(value if torch.isnan(buf) else b * float(buf) + (1 - b) * value)
        known = [float(x) for x in (self.ema_pos, self.ema_neg) if not torch.isnan(x)]
        if known:
            self.margin.fill_(min(hp.margin_max, max(hp.margin_start, max(known) + hp.margin_gap)))

    def on_validation_epoch_start(self):
        self._val_vectors, self._val_labels = [], []

    def validation_step(self, batch, batch_idx):
        from partita.search.embed import embed_notes

        # val_dataloader keeps only usable pieces (pitched notes), which embed without a failure
        vectors = embed_notes(self.model, [self.data.notes(i) for i in batch], windows=self.hparams.val_windows,
                              batch_size=64)
        self._val_vectors.append(vectors)
        self._val_labels.extend(self.data.label_of[i] for i in batch)

    def on_validation_epoch_end(self):
        vectors = np.concatenate(self._val_vectors)
        labels = np.asarray(self._val_labels)
        m = validation_metrics(vectors, labels, self.run_config.seed)
        # nan when the validation half has no balanced pairs (a tiny corpus): early stopping then waits
        self.log("val/loss", m["loss"] if np.isfinite(m["loss"]) else float("inf"), prog_bar=True)
        for k in ("auc", "acc_same", "acc_diff", "acc_mixed", "threshold"):
            if m[k] is not None and np.isfinite(m[k]):
                self.log(f"val/{k}", m[k], prog_bar=k == "auc")


# --- the run --------------------------------------------------------------------------------


def train_embedder(
    corpus_dir: str | Path,
    out: str | Path,
    run_config: RunConfig | None = None,
    *,
    preset: str = "small",
    overrides: dict | None = None,
    loss: str = "supcon",
    labels_per_batch: int = 8,
    per_label: int = 4,
    transpose: int = 0,
    noise: float = 0.1,
    temperature: float = 0.1,
    margin_start: float = 0.1,
    margin_gap: float = 0.2,
    margin_max: float = 1.2,
    val_windows: int = 4,
    unseen_labels: list[str] | None = None,
    callbacks: list | None = None,
    command: str | None = None,
    **run_options,
) -> dict:
    """Train a SiaViT on a prepared corpus; returns the card written with the bundle.
    ``run_config`` or ``RunConfig`` fields as keyword arguments describe the run."""
    batch_size = (run_config.batch_size if run_config else None) or run_options.get("batch_size")
    if batch_size:
        per_label = batch_size // max(labels_per_batch, 1)
    config_run, out = start_run(out, run_config, run_options, {**RUN_DEFAULTS, "batch_size": labels_per_batch * per_label})
    corpus = Corpus(corpus_dir)
    if labels_per_batch < 2 or per_label < 1 or (loss == "supcon" and per_label < 2):
        raise PartitaError("batches need >= 2 labels and >= 1 piece per label (>= 2 for --loss supcon)")
    if loss not in LOSSES:
        raise PartitaError(f"--loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    config = SiaViTConfig.preset(preset, **(overrides or {}))
    data = EmbedderData(corpus, unseen_labels)

    def make_module(r: RunConfig) -> EmbedderModule:
        module = EmbedderModule(
            config.to_dict(), r, loss=loss, labels_per_batch=labels_per_batch, per_label=per_label, transpose=transpose,
            noise=noise, temperature=temperature, margin_start=margin_start, margin_gap=margin_gap,
            margin_max=margin_max, val_windows=val_windows,
        )
        module.attach(data)
        return module

    def export(module: EmbedderModule, card: dict) -> None:
        card["windows_seen"] = int(module.batches_seen * labels_per_batch * per_label)
        card["threshold"] = card["metrics"]["valid"].get("val/threshold")
        save_bundle(module.model.cpu().float(), out / "bundle", card=card, fp16=config_run.fp16_bundle)

    card = {
        "family": "siavit",
        "corpus": str(corpus.path),
        "source": corpus.config.get("source"),
        "labels": data.labels,
        "unseen_labels": data.unseen,
        "command": command or "partita.train.embedder.train_embedder(...)",
        "preset": preset,
        "loss": loss,
        "parameters": SiaViT(config).num_parameters(),
        "notes": "metrics are on the corpus's validation split (threshold picked on one half, reported on the "
                 "other); see 'partita eval embedder' for test-split numbers",
    }
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks)
