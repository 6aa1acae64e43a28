"""Attribution of the bundled corpus's TEST pieces with an index (default: the shipped one),
next to chance and the feature baselines; "unknown" rate on random-note pieces.

python benchmarks/attribution.py --corpus CORPUS [--index DIR] [--json out.json]
"""
import argparse
import json
from collections import Counter

import numpy as np
import torch

torch.set_num_threads(1)

from partita.data.corpus import Corpus
from partita.io.midi import note_array
from partita.represent.features import feature_vector
from partita.search.attribute import fit_from_arrays, load_attribution
from partita.search.embed import embed_corpus, embed_notes
from partita.search.index import Index, load_embedder, resolve_model, shipped_index

ap = argparse.ArgumentParser()
ap.add_argument("--index", default=None)
ap.add_argument("--corpus", required=True, help="the prepared bundled corpus the shipped models used")
ap.add_argument("--random", type=int, default=50)
ap.add_argument("--json", default=None)
args = ap.parse_args()

folder = args.index or shipped_index()
idx = Index.load(folder)
att = load_attribution(folder)
path, _ = resolve_model(idx.model)
model = load_embedder(path)
kw = dict(windows=int(idx.embed["windows"]), seed=int(idx.embed["seed"]))
corpus = Corpus(args.corpus)
test = corpus.indices(split="test")
vecs, kept, fails = embed_corpus(model, corpus, test, **kw)
assert not fails, fails
labels = [corpus.pieces[i]["label"] for i in kept]
res = att.attribute(vecs, k=3)
top1 = np.mean([r["top"][0]["label"] == y for r, y in zip(res, labels)])
top3 = np.mean([y in [t["label"] for t in r["top"]] for r, y in zip(res, labels)])
strict = np.mean([r["known"] and r["verdict"] == y for r, y in zip(res, labels)])
unknown_test = np.mean([not r["known"] for r in res])
train_labels = [p["label"] for p in corpus.pieces if p["split"] == "train"]
majority = Counter(train_labels).most_common(1)[0][0]
chance_major = np.mean([y == majority for y in labels])
probs = att.probabilities(vecs)
code = {l: j for j, l in enumerate(att.labels)}
tgt = np.array([code[y] for y in labels])
nll = float(-np.log(probs[np.arange(len(tgt)), tgt] + 1e-12).mean())
from partita.search.attribute import expected_calibration_error

ece = expected_calibration_error(probs, tgt)


def subset_acc(att, vecs, labels, group):
    cols = [att.labels.index(g) for g in group]
    rows = [i for i, y in enumerate(labels) if y in group]
    if not rows:
        return None, 0
    s = att.similarities(vecs[rows])[:, cols]
    pred = [group[j] for j in s.argmax(axis=1)]
    return float(np.mean([p == labels[i] for p, i in zip(pred, rows)])), len(rows)


from test_search import random_note_piece

rand_notes = [note_array(random_note_piece(seed=s)) for s in range(args.random)]
rv = embed_notes(model, rand_notes, **kw)
rres = att.attribute(rv, k=1)
unknown_random = np.mean([not r["known"] for r in rres])

out = {
    "index": str(folder), "n_test": len(kept), "labels": len(att.labels),
    "siavit_centroid": {"top1": top1, "top3": top3, "top1_strict_(unknown_counts_wrong)": strict, "unknown_on_test": unknown_test,
                        "unknown_on_random_notes": unknown_random, "nll": nll, "ece": ece,
                        "quartets_3way": subset_acc(att, vecs, labels, ["Beethoven", "Haydn", "Mozart"]),
                        "renaissance_3way": subset_acc(att, vecs, labels, ["Monteverdi", "Palestrina", "Trecento"]),
                        "random_novelty": [round(r["novelty"], 2) for r in rres[:10]], "threshold": att.threshold},
    "chance": {"majority_label": majority, "majority_rate": chance_major, "uniform": 1 / len(att.labels)},
}

# Feature baselines on the same pieces: (a) the same centroid pipeline on standardised features,
# (b) logistic regression on them (train split), both with the valid split for calibration.
feat = lambda i: feature_vector(corpus.notes(i))
tr = corpus.indices(split="train")
va = corpus.indices(split="valid")
Ftr = np.stack([feat(i) for i in tr]); Fva = np.stack([feat(i) for i in va]); Fte = np.stack([feat(i) for i in kept])
mu, sd = Ftr.mean(0), Ftr.std(0) + 1e-6
z = lambda F: (F - mu) / sd
ytr = [corpus.pieces[i]["label"] for i in tr]; yva = [corpus.pieces[i]["label"] for i in va]
fa = fit_from_arrays(np.concatenate([z(Ftr), z(Fva)]), ytr + yva, ["train"] * len(tr) + ["valid"] * len(va))
fres = fa.attribute(z(Fte), k=3)
Fr = np.stack([feature_vector(n) for n in rand_notes])
out["features_centroid"] = {
    "top1": np.mean([r["top"][0]["label"] == y for r, y in zip(fres, labels)]),
    "top3": np.mean([y in [t["label"] for t in r["top"]] for r, y in zip(fres, labels)]),
    "unknown_on_test": np.mean([not r["known"] for r in fres]),
    "unknown_on_random_notes": np.mean([not r["known"] for r in fa.attribute(z(Fr), k=1)]),
    "quartets_3way": subset_acc(fa, z(Fte), labels, ["Beethoven", "Haydn", "Mozart"]),
    "renaissance_3way": subset_acc(fa, z(Fte), labels, ["Monteverdi", "Palestrina", "Trecento"]),
}
from sklearn.linear_model import LogisticRegression

lr = LogisticRegression(max_iter=3000, C=1.0).fit(z(Ftr), ytr)
P = lr.predict_proba(z(Fte))
order = np.argsort(-P, axis=1)
out["features_logreg"] = {
    "top1": float(np.mean(lr.classes_[order[:, 0]] == np.array(labels))),
    "top3": float(np.mean([y in lr.classes_[o[:3]] for o, y in zip(order, labels)])),
}
print(json.dumps(out, indent=1, default=float))
if args.json:
    json.dump(out, open(args.json, "w"), indent=1, default=float)
