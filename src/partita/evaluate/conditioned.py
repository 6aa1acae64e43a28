"""Evaluation of the composer classifier and of the composer-conditioned transformer VAE.

``evaluate_classifier``: per held-out piece (windows voted, ``GRUClassifier.piece_log_probs``)
accuracy, balanced accuracy and per-label recall, next to chance (1/K), the majority class of the
training split, and a feature + logistic-regression baseline (``partita.represent.features``'
hand-made features of the whole piece, standardised, scikit-learn ``LogisticRegression``
trained on the training split); plus the accuracy of single windows.

``evaluate_conditioned``: what the issue asks of a composer-conditioned generator:

* **generated samples, classified**: ``n`` samples per composer from the VAE (its prior's
  component of that composer), decoded to MIDI and encoded again (exactly what ``partita classify``
  does with a written file), classified by the classifier; accuracy per composer next to chance
  1/K, and the classifier's accuracy on real held-out windows of the same length as the ceiling;
  a confusion-matrix PNG;
* **latent space**: the posterior means of held-out windows (evenly spread, several per piece):
  *relative cosine similarity* (mean cosine similarity of pairs with the same label over the mean
  of pairs with different labels, both mapped to [0, 1] as ``(1 + cos) / 2`` so that the ratio is
  defined: 1 means no composer structure, 2 is the most there can be) and the
  *silhouette* (cosine distance, ``partita.evaluate.pairs.silhouette``) of the latents grouped
  by label, each next to the same numbers for the hand-made feature vectors of the same windows (the baseline); a 2-D map PNG
  (t-SNE, or PCA) of the latents coloured by composer.

Only held-out pieces enter these numbers (the test split by default); nothing here trains except
the baseline, on the training split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from partita.data.corpus import Corpus
from partita.errors import PartitaError
from partita.evaluate.pairs import silhouette

__all__ = [
    "classify_files",
    "confusion_png",
    "evaluate_classifier",
    "evaluate_conditioned",
    "feature_baseline",
    "latent_map_png",
    "relative_cosine_similarity",
]


def _load(model: Any, family: str):
    """``(model, tokenizer, card)`` from a bundle path, a Bundle, or a model (tokenizer None)."""
    from partita.bundle import load

    if hasattr(model, "config_class"):  # a bare model
        if getattr(type(model), "family", None) != family:
            raise PartitaError(f"expected a {family} model, got {type(model).__name__}")
        return model, None, {}
    bundle = load(model, family)
    return bundle.model, bundle.tokenizer, bundle.card


def _streams(corpus: Corpus, streams: Any):
    if streams is not None:
        return streams
    from partita.represent.tokens import token_streams

    return token_streams(corpus)


def check_same_tokenizer(tokenizer: Any, streams: Any, what: str) -> None:
    """The model must read the corpus's tokens: same tokenizer file (by content hash)."""
    if tokenizer is None:
        return
    import hashlib
    import tempfile

    from partita.represent.tokens import save_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        ours = hashlib.sha256(save_tokenizer(tokenizer, Path(tmp) / "t.json").read_bytes()).hexdigest()
        theirs = hashlib.sha256(save_tokenizer(streams.tokenizer(), Path(tmp) / "s.json").read_bytes()).hexdigest()
    if ours != theirs:
        raise PartitaError(
            f"the {what}'s tokenizer differs from the corpus's token streams: tokenize the corpus with the "
            f"{what}'s tokenizer.json (partita data tokenize) or use a model trained on this corpus"
        )


# --------------------------------------------------------------------------- classifier


def feature_baseline(corpus: Corpus, labels: Sequence[str], *, train_split: str = "train", split: str = "test",
                     seed: int = 0) -> dict:
    """Feature + logistic-regression baseline: whole-piece ``feature_vector``s, standardised, a
    ``LogisticRegression`` fitted on ``train_split``; accuracy and balanced accuracy on ``split``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from partita.represent.features import FEATURE_NAMES, feature_vector

    index = {name: k for k, name in enumerate(labels)}

    def xy(which: str):
        idx = [i for i in corpus.indices(split=which) if corpus.pieces[i]["label"] in index]
        x = np.stack([feature_vector(corpus.notes(i)) for i in idx]) if idx else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        return x, np.asarray([index[corpus.pieces[i]["label"]] for i in idx], np.int64)

    x_train, y_train = xy(train_split)
    x_test, y_test = xy(split)
    if len(set(y_train.tolist())) < 2 or len(y_test) == 0:
        return {}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0, random_state=seed))
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    return {"accuracy": float(np.mean(pred == y_test)), "balanced_accuracy": float(balanced_accuracy_score(y_test, pred))}


def evaluate_classifier(model: Any, corpus: Corpus | str | Path, *, streams: Any = None, split: str = "test",
                        max_segments: int = 16, baseline: bool = True, seed: int = 0) -> dict:
    """Per-piece accuracy of a classifier on ``split`` next to chance, majority and the feature
    baseline (module doc). ``model``: a classifier bundle path, a ``Bundle`` or a ``GRUClassifier``."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    from partita.data.segments import LabelledSegments

    model, tokenizer, _ = _load(model, "classifier")
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    streams = _streams(corpus, streams)
    check_same_tokenizer(tokenizer, streams, "classifier")
    c = model.config
    data = LabelledSegments(corpus, streams, c.labels, pad_id=c.pad_id)
    pieces = data.pieces(split)
    if not pieces:
        raise PartitaError(f"the corpus has no {split} pieces with the classifier's labels ({', '.join(c.labels)})")
    model.eval()
    y = np.asarray([data.label_of[i] for i in pieces])
    logp = np.stack([model.piece_log_probs(data.tokens(i), max_segments=max_segments) for i in pieces])
    pred = logp.argmax(axis=1)

    import torch

    ids, wy, _ = data.fixed_windows(split, c.segment, 4)
    with torch.no_grad():
        wpred = np.concatenate([model(torch.from_numpy(ids[s : s + 64]))[0].argmax(-1).numpy() for s in range(0, len(ids), 64)])
    train_counts = data.counts("train")
    majority = max(train_counts, key=lambda k: train_counts[k]) if any(train_counts.values()) else c.labels[0]
    out = {
        "split": split,
        "labels": list(c.labels),
        "pieces": int(len(pieces)),
        "pieces_per_label": data.counts(split),
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "recall_per_label": {name: float(np.mean(pred[y == k] == k)) if np.any(y == k) else None
                             for k, name in enumerate(c.labels)},
        "window_accuracy": float(np.mean(wpred == wy)),
        "windows": int(len(wy)),
        "chance": 1.0 / c.n_labels,
        "majority_class": majority,
        "majority_accuracy": float(np.mean(y == c.labels.index(majority))),
        "confusion": confusion_matrix(y, pred, labels=list(range(c.n_labels))).tolist(),
    }
    if baseline:
        out["feature_logreg"] = feature_baseline(corpus, c.labels, split=split, seed=seed)
    return out


def classify_files(model: Any, files: Sequence[str | Path], *, top_k: int = 3, max_segments: int = 16,
                   min_tokens: int = 16) -> list[dict]:
    """Top-``k`` labels with probabilities for each MIDI file; a file that cannot be read, has no
    notes or is too short gives ``{"file", "error"}`` (one line) instead, and the rest go on.
    ``model``: a classifier bundle path or ``Bundle``."""
    from partita.io.midi import load, preprocess
    from partita.represent.tokens import encode

    model, tokenizer, _ = _load(model, "classifier")
    if tokenizer is None:
        raise PartitaError("the classifier bundle has no tokenizer.json: it cannot read MIDI files")
    names = model.config.labels
    results = []
    for f in files:
        try:
            score = preprocess(load(f), sustain=True)
            if score.note_num() == 0:
                raise PartitaError("the file has no notes")
            ids = encode(tokenizer, score)
            if len(ids) < min_tokens:
                raise PartitaError(f"too short to classify ({len(ids)} tokens, needs at least {min_tokens}): give a longer piece")
            p = np.exp(model.piece_log_probs(ids, max_segments=max_segments))
        except PartitaError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            results.append({"file": str(f), "error": msg.replace(f"{f}: ", "")})
            continue
        order = np.argsort(-p)[:top_k]
        results.append({"file": str(f), "tokens": int(len(ids)),
                        "top": [{"label": names[k], "probability": float(p[k])} for k in order]})
    return results


# --------------------------------------------------------------------------- metrics and plots


def relative_cosine_similarity(x: np.ndarray, labels: np.ndarray) -> dict:
    """Mean cosine similarity of pairs with the same label (``within``), of pairs with different
    labels (``across``), and ``relative``: the ratio of the two after mapping cosines to [0, 1]
    (``(1 + within) / (1 + across)``), so that it stays defined when ``across`` is near 0 or
    negative; 1 means no label structure, higher is better. Pairs of a point with itself are left out."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(x), dtype=bool)
    within = float(sim[same & off].mean()) if np.any(same & off) else float("nan")
    across = float(sim[~same].mean()) if np.any(~same) else float("nan")
    return {"within": within, "across": across, "relative": (1.0 + within) / (1.0 + across)}


def confusion_png(matrix: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = "",
                  predicted: Optional[Sequence[str]] = None) -> Path:
    """A confusion matrix (rows: asked-for / true label, columns: predicted) as a PNG; cells show
    counts, colours the row-normalised rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, np.float64)
    predicted = list(predicted or labels)
    rate = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(predicted), 1.0 + 0.65 * len(labels)), dpi=120)
    ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(predicted)), predicted, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("classified as")
    ax.set_ylabel("composer")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if rate[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def latent_map_png(x: np.ndarray, labels: np.ndarray, names: Sequence[str], path: str | Path, *,
                   method: str = "tsne", seed: int = 0, title: str = "") -> Path:
    """A 2-D projection (``"tsne"``: scikit-learn t-SNE, PCA-initialised, seeded; ``"pca"``) of
    ``x`` coloured by label, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x, np.float64)
    if method == "pca" or len(x) < 10:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x)
    else:
        raise PartitaError(f"map method must be 'tsne' or 'pca', got {method!r}")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        sel = np.asarray(labels) == k
        if np.any(sel):
            ax.scatter(xy[sel, 0], xy[sel, 1], s=12, color=cmap(k % 10), label=name, alpha=0.8)
    ax.legend(fontsize=8, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"latent map ({method})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- conditioned VAE


def _window_features(tokenizer: Any, ids: np.ndarray, pad_id: int) -> np.ndarray:
    from partita.generation.sampling import decode_safe
    from partita.io.midi import note_array
    from partita.represent.features import feature_vector

    feats = []
    for row in ids:
        score, _ = decode_safe(tokenizer, row[row != pad_id], check=False)
        feats.append(feature_vector(note_array(score)))
    return np.stack(feats)


def evaluate_conditioned(
    tvae: Any,
    classifier: Any,
    corpus: Corpus | str | Path,
    *,
    split: str = "test",
    n: int = 32,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: Optional[float] = 0.95,
    per_piece: int = 4,
    out_dir: str | Path | None = None,
    map_method: str = "tsne",
    classifier_metrics: bool = True,
    progress=None,
) -> dict:
    """The conditioned-generation metrics of the module doc; PNGs go to ``out_dir`` when given.

    ``tvae``/``classifier``: bundle paths or ``Bundle`` objects. ``n`` samples per composer.
    """
    import torch

    from partita.generation.tvae import sample_tvae_ids
    from partita.represent.tokens import encode
    from partita.generation.sampling import decode_safe
    from partita.data.segments import LabelledSegments

    from partita.bundle import load

    tb, cb = load(tvae, "tvae"), load(classifier, "classifier")
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    streams = _streams(corpus, None)
    check_same_tokenizer(tb.tokenizer, streams, "VAE")
    vae, clf = tb.model.eval(), cb.model.eval()
    vnames, cnames = list(vae.config.labels), list(clf.config.labels)
    shared = [name for name in vnames if name in cnames]
    if not shared:
        raise PartitaError(f"the VAE's composers ({', '.join(vnames)}) and the classifier's ({', '.join(cnames)}) have none in common")
    out: dict = {"split": split, "vae_labels": vnames, "classifier_labels": cnames, "judged_labels": shared,
                 "chance": 1.0 / len(cnames), "samples_per_label": n, "seed": seed, "temperature": temperature,
                 "top_p": top_p}
    if classifier_metrics:
        out["classifier"] = evaluate_classifier(cb, corpus, streams=streams, split=split, seed=seed)
    out_dir = Path(out_dir) if out_dir is not None else None

    # 1. generated samples, classified --------------------------------------------------------
    conf = np.zeros((len(shared), len(cnames)), np.int64)
    per_label: dict = {}
    lengths: list[int] = []
    empty = 0
    for r, name in enumerate(shared):
        ids_list = sample_tvae_ids(tb, composer=name, n=n, seed=seed, temperature=temperature, top_p=top_p)
        for ids in ids_list:
            score, _ = decode_safe(tb.tokenizer, ids)
            if score.note_num() == 0:
                empty += 1
                conf[r, :] += 0
                continue
            toks = encode(cb.tokenizer, score)  # the written MIDI file, read as `partita classify` reads it
            lengths.append(len(toks))
            if len(toks) == 0:
                empty += 1
                continue
            conf[r, int(np.argmax(clf.piece_log_probs(toks)))] += 1
        if progress:
            progress(r + 1, len(shared))
        hit = conf[r, cnames.index(name)]
        per_label[name] = {"accuracy": float(hit / n), "samples": n}
    out["generated"] = {
        "accuracy": float(sum(conf[r, cnames.index(name)] for r, name in enumerate(shared)) / (n * len(shared))),
        "per_label": per_label,
        "empty_samples": empty,
        "mean_tokens": float(np.mean(lengths)) if lengths else 0.0,
        "confusion": conf.tolist(),
    }

    # ceiling: the classifier on real held-out windows of the generated length
    seg_len = vae.config.context
    real = LabelledSegments(corpus, streams, shared, pad_id=vae.config.pad_id)
    rid, ry, _ = real.fixed_windows(split, seg_len, per_piece)
    if len(rid):
        hits = [int(np.argmax(clf.piece_log_probs(row[row != vae.config.pad_id]))) == cnames.index(shared[k])
                for row, k in zip(rid, ry)]
        out["real_windows"] = {"accuracy": float(np.mean(hits)), "windows": int(len(hits)), "tokens": seg_len}

    # 2. latent space of held-out windows ------------------------------------------------------
    vdata = LabelledSegments(corpus, streams, vnames, pad_id=vae.config.pad_id, keep_eos=True)
    wid, wy, _ = vdata.fixed_windows(split, seg_len, per_piece)
    latent: dict = {"windows": int(len(wy))}
    if len(wid) >= 2 and len(set(wy.tolist())) >= 2:
        with torch.no_grad():
            mu = np.concatenate([vae.encode(torch.from_numpy(wid[s : s + 64]))[0].numpy() for s in range(0, len(wid), 64)])
        feats = _window_features(tb.tokenizer, wid, vae.config.pad_id)
        feats = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-6)
        latent["vae"] = {"relative_cosine": relative_cosine_similarity(mu, wy), "silhouette": silhouette(mu, wy)}
        latent["features"] = {"relative_cosine": relative_cosine_similarity(feats, wy), "silhouette": silhouette(feats, wy)}
        if out_dir is not None:
            latent["map_png"] = str(latent_map_png(mu, wy, vnames, out_dir / "latent_map.png", method=map_method, seed=seed,
                                                   title=f"TVAE latents of {split} windows ({map_method})"))
    out["latent"] = latent
    if out_dir is not None:
        out["confusion_png"] = str(confusion_png(conf, shared, out_dir / "confusion.png", predicted=cnames,
                                                 title=f"TVAE samples ({n} per composer) classified"))
    return out
