"""Build the demo set that ships in the package: the test-split pieces of the bundled corpus.

Every shipped model is trained on the train split (and tuned on the valid split) of the same
prepared corpus, ``partita data prepare bundled --max-per-label 200``; its test split is therefore
held out for all of them. Copying those MIDI files (about 400 KB) into the package lets
``partita demo`` run in well under three minutes on a fresh install, instead of spending most
of them exporting music21's corpus again.

    python scripts/make_demo_set.py CORPUS   # CORPUS: the prepared bundled corpus the models used
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

from partita.data.corpus import Corpus

OUT = Path(__file__).resolve().parents[1] / "src" / "partita" / "data" / "demo"


def main(corpus_path: str) -> None:
    corpus = Corpus(corpus_path)
    rows = [r for r in corpus.pieces if r["split"] == "test" and r["status"] == "ok"]
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with open(OUT / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "title"])
        for r in sorted(rows, key=lambda r: r["id"]):
            (OUT / r["id"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r["path"], OUT / r["id"])  # the exported MIDI file it was read from
            w.writerow([r["id"], r["label"], r["title"]])
    print(f"{len(rows)} held-out pieces -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
