"""Training the chord tagger (``partita train chords``) with Lightning.

Data: a folder of songs with chord annotations, POP909's layout (``NNN/NNN.mid`` with
``chord_midi.txt`` beside it: start and end seconds and a Harte label a line). Each song's
melody (the track named MELODY, else ``choose_melody_track``) is read beat by beat
(``partita.models.chords.beat_features`` on the file's beats) and every beat's target is the
chord annotated at its middle. Songs are split by number (``partita.data.accompany.song_split``:
ending in 9 held out, 4 mod 20 for validation).

A training batch is ``batch_size`` songs drawn at random, each moved by a random transposition
(features and chords alike) and cut to a random window of ``window`` beats; batch ``k`` comes
from its own generator seeded with ``(seed, k)``, so a resumed run draws the batches an
uninterrupted one would. Validation is the cross entropy over every beat of the validation songs.
At the end, the chord change cost and the weight of the melody's notes outside a chord
(``ChordTagger.scores``) are chosen on the validation songs, and the card gets the held-out
songs' figures next to the rule's (``evaluate_tagger``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from partita.bundle import save_bundle
from partita.errors import PartitaError
from partita.models.chords import ChordTagger, ChordTaggerConfig, beat_features, chord_tones, decode_half_bars, label_class
from partita.train.classifier import SeededBatches
from partita.train.common import ResumableModule, RunConfig, resumed_model, run, start_run

__all__ = ["TaggedSong", "evaluate_tagger", "read_tagged_songs", "train_chords"]

RUN_DEFAULTS = dict(batch_size=16, max_steps=3000, lr=2e-3, weight_decay=0.01, warmup=100, min_lr_ratio=0.1, val_every=500)
#: Change costs tried on the validation songs.
CHANGES = (0.0, 0.5, 1.0, 2.0)
#: Weights of the melody's duration outside a chord tried on the validation songs.
OUTSIDE = (0.0, 1.0, 2.0, 4.0, 8.0)
#: Of the pairs within this (a point) of the best validation fit, the one that weighs the notes most is kept.
TOLERANCE = 0.01


@dataclass
class TaggedSong:
    song: str
    split: str
    features: np.ndarray  # [beats, FEATURES]
    labels: list  # the annotated label at every beat ("N" for none)
    chords: list  # the annotated pitch classes at every beat (None for none)


def read_tagged_songs(folder: str | Path, *, progress: Any = None) -> tuple[list[TaggedSong], list[str]]:
    """The annotated songs of ``folder`` and the files skipped (one line each)."""
    from partita.data.accompany import chord_pitch_classes, song_files, song_split
    from partita.generation.accompany import beat_phase, choose_melody_track
    from partita.io.midi import load
    from partita.io.timing import seconds_at

    files = [f for f in song_files(folder) if (f.parent / "chord_midi.txt").exists()]
    if not files:
        raise PartitaError(f"{folder}: no song with a chord_midi.txt beside it (POP909's layout: NNN/NNN.mid, NNN/chord_midi.txt)")
    songs, skipped = [], []
    for i, f in enumerate(files):
        try:
            score = load(f)
            k = next((j for j, t in enumerate(score.tracks) if t.name.strip().upper() == "MELODY" and t.note_num()), None)
            k = choose_melody_track(score, name=f.name) if k is None else k
            notes = score.tracks[k].notes.numpy()
            tpq = int(score.ticks_per_quarter)
            phase = beat_phase(notes["time"], tpq)
            x = beat_features(notes, tpq, phase)
            rows = [line.split() for line in (f.parent / "chord_midi.txt").read_text().splitlines() if len(line.split()) >= 3]
            start = np.array([float(r[0]) for r in rows])
            end = np.array([float(r[1]) for r in rows])
            middle = seconds_at(score, phase + np.arange(len(x)) * tpq + tpq // 2)
            j = np.searchsorted(start, middle, side="right") - 1
            labels = [rows[a][2] if a >= 0 and m < end[a] else "N" for a, m in zip(j, middle)]
            songs.append(TaggedSong(f.stem, song_split(f.stem), x, labels, [chord_pitch_classes(lab) for lab in labels]))
        except (PartitaError, ValueError, IndexError) as e:
            skipped.append(f"{f.name}: {e}")
        if progress is not None:
            progress(i + 1, len(files))
    return songs, skipped


def _targets(song: TaggedSong, qualities: list) -> np.ndarray:
    return np.array([label_class(lab, qualities) for lab in song.labels], np.int64)


def _transpose(x: np.ndarray, y: np.ndarray, shift: int, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.roll(x[:, :12], shift, 1), np.roll(x[:, 12:24], shift, 1), np.roll(x[:, 24:36], shift, 1), x[:, 36:]], 1)
    root, q = np.divmod(np.maximum(y, 0), n_q)
    return x, np.where(y < 0, -1, ((root + shift) % 12) * n_q + q)


class ChordModule(ResumableModule):
    run_defaults = RUN_DEFAULTS

    def __init__(self, config: dict, run: RunConfig | dict | None = None, *, window: int = 256):
        super().__init__(run)
        self.save_hyperparameters()
        self.model = ChordTagger(ChordTaggerConfig.from_dict(config))
        self.songs: dict[str, list] = {}
        self.batches_seen = 0
        self._val: list = []

    def attach(self, songs: dict[str, list]) -> None:
        self.songs = songs

    def _draw(self, rng):
        c, L = self.model.config, int(self.hparams.window)
        train = self.songs["train"]
        xs, ys = [], []
        for _ in range(self.run_config.batch_size):
            x, y = train[int(rng.integers(len(train)))]
            x, y = _transpose(x, y, int(rng.integers(12)), len(c.qualities))
            a = int(rng.integers(max(len(x) - L, 0) + 1))
            x, y = x[a:a + L], y[a:a + L]
            xs.append(np.pad(x, ((0, L - len(x)), (0, 0)))), ys.append(np.pad(y, (0, L - len(y)), constant_values=-1))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SeededBatches(self, self._draw), batch_size=None, generator=torch.Generator())

    def val_dataloader(self):
        rows = [(torch.from_numpy(x[None]), torch.from_numpy(y[None])) for x, y in self.songs["valid"]]
        return torch.utils.data.DataLoader(rows, batch_size=None)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-1)
        self.batches_seen += 1
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_validation_epoch_start(self):
        self._val = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)[0].float()
        keep = y[0] >= 0
        if keep.any():
            self._val.append((torch.nn.functional.cross_entropy(logits[keep], y[0][keep], reduction="sum"), int(keep.sum())))

    def on_validation_epoch_end(self):
        n = max(sum(x[1] for x in self._val), 1)
        self.log("val/loss", float(sum(float(x[0]) for x in self._val) / n), prog_bar=True)


def beat_fit(chords: list, song: TaggedSong) -> list[float]:
    """Per beat of the melody's span with an annotated chord: the share of the pitch classes of the
    chord played there (``chords``, one a beat) in the annotated chord."""
    active = np.flatnonzero(song.features[:, 36] == 0)
    out = []
    if not len(active):
        return out
    for k in range(int(active[0]), int(active[-1]) + 1):
        truth = song.chords[k] if k < len(song.chords) else None
        if truth is not None:
            out.append(sum(p in truth for p in chords[k]) / len(chords[k]))
    return out


def rule_beats(song: TaggedSong) -> list:
    """The rule baseline's chord at every beat (``partita.generation.accompany.rule_choice``: the
    diatonic triad of the melody's key holding most of its duration, a chord per 2 beats)."""
    from partita.generation.accompany import rule_choice, estimate_key

    d = song.features[:, :12]
    tonic, mode = estimate_key(np.arange(12), d.sum(axis=0))
    pairs = [d[k:k + 2].sum(axis=0) for k in range(0, len(d), 2)]
    chosen = rule_choice(np.stack(pairs), tonic, mode) if pairs else []
    return [tuple(chosen[k // 2][1]) for k in range(len(d))]


def evaluate_tagger(model: ChordTagger, songs: list[TaggedSong], *, change: Optional[float] = None,
                    outside: Optional[float] = None) -> dict:
    """Mean per-beat chord fit (``beat_fit``) of the tagger's chords (one a half bar of 2 beats,
    paired as it finds likelier, ``decode_half_bars``: POP909's bars say nothing), played as
    triads (the first three tones of the chord), and of the rule's triads, over ``songs``; and
    the share of beats whose chord class is the annotated one."""
    c = model.config
    change = c.change if change is None else change
    outside = c.outside if outside is None else outside
    tagged, rule, exact = [], [], []
    for s in songs:
        path = decode_half_bars(model.scores(s.features, outside), change)
        tagged += beat_fit([chord_tones(k, c.qualities)[1][:3] for k in path], s)
        rule += beat_fit(rule_beats(s), s)
        y = _targets(s, c.qualities)
        exact += list((path == y)[y >= 0])
    return {"songs": len(songs), "beats": len(tagged), "tagger_fit": float(np.mean(tagged)) if tagged else None,
            "rule_fit": float(np.mean(rule)) if rule else None, "tagger_exact": float(np.mean(exact)) if exact else None,
            "change": float(change), "outside": float(outside)}


def choose_decoding(tagger: ChordTagger, valid: list[TaggedSong], test: list[TaggedSong], card: dict) -> None:
    """Set the tagger's change cost and outside weight (``CHANGES`` x ``OUTSIDE``) from the
    validation songs: of the pairs within ``TOLERANCE`` of the best fit there, the one with the
    largest outside weight (then change cost), as the notes of a melody unlike POP909's are a
    surer guide than POP909's context (an arpeggio of C, Am, F, G is heard so in every key only with weight 8);
    and write the figures into ``card``: every pair's on validation, the held-out songs'
    (``evaluate_tagger``) with the chosen pair."""
    fits = {(ch, w): evaluate_tagger(tagger, valid, change=ch, outside=w)["tagger_fit"] for ch in CHANGES for w in OUTSIDE}
    best = max(fits.values())
    tagger.config.change, tagger.config.outside = max((k for k, v in fits.items() if v >= best - TOLERANCE), key=lambda k: (k[1], k[0]))
    card["decoding_on_valid"] = [{"change": ch, "outside": w, "tagger_fit": v} for (ch, w), v in fits.items()]
    card.setdefault("metrics", {}).setdefault("valid", {})["tagger_fit"] = fits[(tagger.config.change, tagger.config.outside)]
    if test:
        card["metrics"]["test"] = evaluate_tagger(tagger, test)


def train_chords(data: str | Path, out: str | Path, run_config: RunConfig | None = None, *, overrides: dict | None = None,
                 window: int = 256, callbacks: list | None = None, command: Optional[str] = None, progress: Any = None,
                 **run_options) -> dict:
    """Train a chord tagger on the annotated songs of ``data``; returns the card written with the
    bundle (``out / "bundle"``)."""
    config_run, out = start_run(out, run_config, run_options, RUN_DEFAULTS)
    _, model = resumed_model(out, config_run, "small", overrides)
    songs, skipped = read_tagged_songs(data, progress=progress)
    by_split = {s: [t for t in songs if t.split == s] for s in ("train", "valid", "test")}
    for split in ("train", "valid"):
        if not by_split[split]:
            raise PartitaError(f"{data}: no {split} songs (songs are split by number: 4 mod 20 validation, ending in 9 test)")
    config = ChordTaggerConfig.from_dict(model) if model else ChordTaggerConfig(**(overrides or {}))
    arrays = {split: [(t.features, _targets(t, config.qualities)) for t in rows] for split, rows in by_split.items()}

    def make_module(r: RunConfig) -> ChordModule:
        module = ChordModule(config.to_dict(), r, window=window)
        module.attach(arrays)
        return module

    def export(module: ChordModule, card: dict) -> None:
        tagger = module.model.cpu().float().eval()
        choose_decoding(tagger, by_split["valid"], by_split["test"], card)
        save_bundle(tagger, out / "bundle", card=card)

    card = {
        "family": "chords",
        "data": str(data),
        "licence": "POP909: MIT" if "pop909" in str(data).lower() else None,
        "songs": {split: len(rows) for split, rows in by_split.items()},
        "skipped": skipped,
        "command": command or "partita.train.chords.train_chords(...)",
        "parameters": ChordTagger(config).num_parameters(),
    }
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks,
               settings={"preset": "small", "model": config.to_dict()})
