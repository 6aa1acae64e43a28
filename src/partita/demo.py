"""``partita demo``: every job partita does, with the shipped models, written up as a report.

The pieces are the demo set that ships in the package (``partita/data/demo``): the 115
test-split pieces of the bundled corpus, which every shipped model held out (it was trained on
the train split and tuned on the valid split of the same prepared corpus; see
``scripts/make_demo_set.py``). So every number the demo prints is on music the models never saw.

Steps (each one's failure is reported in its section, not fatal to the others):

1. prepare the demo set into ``OUT/corpus``;
2. attribute the pieces with the shipped embedder and index (accuracy next to chance) and place
   two of them on the corpus map;
3. continue a Bach chorale opening, a folk tune and a chord progression with the shipped
   transformer, and sample in the style of a composer; continue the opening of a piano piece and
   rewrite four bars of another with the shipped piano model (``gpt-piano``, on two of the
   GiantMIDI-Piano transcriptions, which it never saw);
4. interpolate between two folk melodies with the shipped 2-bar MusicVAE, and between two 16-bar
   dance tunes with the shipped hierarchical 16-bar MusicVAE;
5. compare the generated set with the real pieces on the musical metrics;
6. accompany: harmonize a held-out chorale's soprano in four parts (``chorale-harmony``, whose
   held-out figures the report quotes), put folk chords under a held-out folk tune, and, given a
   POP909 folder (``--pop``) and an accompaniment model, a piano part under a held-out song's melody;
7. attribute real piano music with the shipped piano index: four GiantMIDI-Piano transcriptions
   that ship in the package, and, given an ASAP folder (``--asap``), performances of works the
   piano models held out, each looking for its own score among the scores of all ASAP works;
8. write ``OUT/index.html``: pianorolls, audio players (when a SoundFont is present), MIDI links,
   the map and the tables.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from partita.errors import PartitaError

DEMO_SET = Path(__file__).resolve().parent / "data" / "demo"
PIANO_SET = Path(__file__).resolve().parent / "data" / "demo-piano"

#: Features shown in the report's metric table (all are compared in ``metrics.json``).
SHOWN_FEATURES = (
    "pitch_range",
    "pitch_class_entropy",
    "scale_consistency",
    "polyphony",
    "note_density",
    "avg_ioi",
    "groove_consistency",
    "empty_beat_rate",
)


@dataclass
class Music:
    """A piece the report shows: its name, a caption and the score."""

    name: str
    caption: str
    score: Any
    group: str


def music_file(out: Path, m: Music) -> Path:
    """Where the demo writes ``m``'s MIDI: ``generated/`` (compared with the demo set by the
    metrics), or for the piano pieces ``piano/``, for the accompanied melodies ``accompanied/``."""
    folder = {"piano": "piano", "accompaniment": "accompanied"}.get(m.group, "generated")
    return Path(out) / folder / f"{m.name}.mid"


@dataclass
class DemoResult:
    out: Path
    report: Optional[Path] = None
    pieces: int = 0
    attribution: dict = field(default_factory=dict)
    piano: dict = field(default_factory=dict)
    music: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)  # (step, one-line reason)
    seconds: float = 0.0


def demo_pieces(per_label: Optional[int] = None) -> list[dict]:
    """The demo set's rows (path, label, title), at most ``per_label`` per label, in file order."""
    with open(DEMO_SET / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise PartitaError(f"{DEMO_SET}: the demo set is missing from this install; reinstall partita")
    taken: dict[str, int] = {}
    out = []
    for row in rows:
        if per_label is not None and taken.get(row["label"], 0) >= per_label:
            continue
        taken[row["label"]] = taken.get(row["label"], 0) + 1
        out.append({**row, "file": DEMO_SET / row["path"]})
    return out


def _attribute(rows: list[dict], out: Path, highlight: int, progress) -> dict:
    """Attribute every row with the shipped index; place ``highlight`` of them on its map."""
    from partita.search.attribute import load_attribution
    from partita.search import choose_index
    from partita.search.index import Index, embed_queries
    from partita.search.maps import draw_map

    choice = choose_index([r["file"] for r in rows])
    index_path = choice.index
    index = Index.load(index_path)
    attribution = load_attribution(index_path)
    vectors, kept, failures = embed_queries(index, [r["file"] for r in rows], progress=progress)
    by_file = {str(r["file"]): r for r in rows}
    verdicts = attribution.attribute(vectors, k=3)
    known = set(attribution.labels)
    results = []
    for path, v in zip(kept, verdicts):
        row = by_file[str(path)]
        results.append({
            "piece": row["path"], "label": row["label"], "verdict": v["verdict"],
            "top3": [t["label"] for t in v["top"]],
            "probability": v["top"][0]["probability"] if v["known"] else None,
            "known": v["known"],
        })
    scored = [r for r in results if r["label"] in known]
    top1 = float(np.mean([r["verdict"] == r["label"] for r in scored])) if scored else float("nan")
    top3 = float(np.mean([r["label"] in r["top3"] for r in scored])) if scored else float("nan")
    counts = {}
    for r in scored:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    summary = {
        "pieces": len(scored),
        "labels": len(known),
        "top1": top1,  # "unknown composer" counts as wrong
        "top1_known": float(np.mean([r["top3"][0] == r["label"] for r in scored])) if scored else float("nan"),
        "top3": top3,
        "chance": 1.0 / max(1, len(known)),
        "majority": max(counts.values()) / len(scored) if scored else float("nan"),
        "unknown": sum(not r["known"] for r in scored),
        "failures": [f"{p}: {why}" for p, why in failures],
        "choice": choice.to_dict(),
        "pieces_table": results,
    }
    # Two held-out pieces on the corpus map: a chorale and a folk tune (else the first two kept).
    kept_files = {str(k) for k in kept}
    candidates = [r["file"] for r in rows if str(r["file"]) in kept_files]
    chosen = [next((r["file"] for r in rows if r["label"] == lab and str(r["file"]) in kept_files), None)
              for lab in ("Bach", "Essen")]
    chosen = [c for c in chosen if c is not None] or candidates[:highlight]
    info = draw_map(index_path, out / "map.html", highlight=chosen, png=out / "map.png")
    summary["map"] = {"html": info["html"], "png": info["png"], "highlighted": [Path(c).name for c in chosen],
                      "fitted": info.get("fitted")}
    return summary


def _piano(asap: Optional[Path], held_out: int = 4) -> dict:
    """Real piano music against the shipped piano index: the shipped transcriptions (composer,
    nearest ASAP works) and, with an ASAP folder, performances of held-out works finding their score."""
    from partita.search.attribute import load_attribution
    from partita.search.embed import embed_files
    from partita.search import choose_index
    from partita.search.index import Index, load_embedder, resolve_model

    files = sorted(PIANO_SET.glob("*.mid"))
    choice = choose_index(files)
    folder = choice.index
    index = Index.load(folder)
    attribution = load_attribution(folder)
    model = load_embedder(resolve_model(index.model)[0])
    vectors, kept, failures = embed_files(model, files)
    out: dict = {"choice": choice.to_dict(), "transcriptions": [], "renditions": [],
                 "failures": [f"{p}: {why}" for p, why in failures]}
    verdicts = attribution.attribute(vectors, k=3)
    from partita.search.reader import attribute_files, load_reader

    readout = load_reader(folder)
    if readout is not None and len(kept):  # the composer readout partita attribute uses
        read = {r["query"]: r for r in attribute_files(index, readout, kept, k=3, nearest=0)[0]}
        verdicts = [read.get(str(p)) or v for p, v in zip(kept, verdicts)]
    for path, verdict, hits in zip(kept, verdicts, index.search(vectors, 3)):
        out["transcriptions"].append({
            "piece": Path(path).stem.rsplit(",", 1)[0], "verdict": verdict["verdict"] if verdict["known"] else "unknown composer",
            "top3": ", ".join(f"{t['label']} {t['probability']:.0%}" for t in verdict["top"]),
            "nearest": "; ".join(f"{h.piece.get('label')}: {h.piece.get('title')}" for h in hits)})
    if asap is None:
        return out
    import csv as _csv

    table = Path(asap) / "metadata.csv"
    if not table.is_file():
        raise PartitaError(f"{asap}: not an ASAP folder (no metadata.csv)")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(_csv.DictReader(f))
    seen = set(index.column("group"))
    works = sorted({r["folder"] for r in rows})
    held = [w for w in works if w not in seen]
    picked = [next(r for r in rows if r["folder"] == w) for w in held[:: max(1, len(held) // held_out)][:held_out]]
    scores = [Path(asap) / next(r["midi_score"] for r in rows if r["folder"] == w) for w in works]
    score_vecs, score_kept, _ = embed_files(model, scores)
    score_work = [str(Path(p).parent.relative_to(asap)) for p in score_kept]
    queries = [Path(asap) / r["midi_performance"] for r in picked]
    q_vecs, q_kept, _ = embed_files(model, queries)
    for path, vec, verdict in zip(q_kept, q_vecs, attribution.attribute(q_vecs, k=3)):
        work = str(Path(path).parent.relative_to(asap))
        order = np.argsort(-(score_vecs @ vec))
        rank = int(np.flatnonzero(np.array(score_work)[order] == work)[0]) + 1
        out["renditions"].append({
            "performance": str(Path(path).relative_to(asap)), "composer": work.split("/")[0],
            "verdict": verdict["verdict"] if verdict["known"] else "unknown composer",
            "found": score_work[order[0]], "rank_of_its_score": rank, "scores": len(score_work)})
    return out


def _generate(rows: list[dict], bars: int) -> list[Music]:
    """Continuations of held-out openings and of a chord progression, and composer samples."""
    from partita.bundle import load as load_model
    from partita.generation import generate_samples
    from partita.io.midi import load
    from partita.pretrained import GPT

    bundle = load_model(GPT, "gpt")
    made: list[Music] = []
    jobs = []
    for label in ("Bach", "Essen"):
        row = next((r for r in rows if r["label"] == label), None)
        if row is not None:
            jobs.append((f"{label.lower()}-continuation", f"{label}: {row['title']}, first 2 bars continued",
                         dict(prompt=load(row["file"]), prompt_bars=2, composer=label)))
    jobs.append(("chords-continuation", "chords C G Am F, continued in the style of Bach", dict(chords="C G Am F", composer="Bach")))
    jobs.append(("mozart-sample", "a sample in the style of Mozart (transformer, composer token)", dict(composer="Mozart")))
    for name, caption, kwargs in jobs:
        [s] = generate_samples(bundle, n=1, bars=bars, seed=0, temperature=0.9, top_p=0.95, **kwargs)
        if s.ok:
            made.append(Music(name, caption, s.score, "generated"))
    return made


def _piano_music(fast: bool) -> list[Music]:
    """gpt-piano on real piano music it never saw: an opening continued, four bars infilled."""
    from partita.bundle import load as load_model
    from partita.generation import generate_samples
    from partita.generation.infill import infill
    from partita.io.midi import load
    from partita.pretrained import GPT_PIANO

    bundle = load_model(GPT_PIANO, "gpt")
    ravel = next(PIANO_SET.glob("Ravel*.mid"))
    handel = next(PIANO_SET.glob("Handel*.mid"))
    prompt_s, new_s = (6.0, 4.0) if fast else (15.0, 15.0)
    [s] = generate_samples(bundle, prompt=load(ravel), prompt_seconds=prompt_s, seconds=new_s, seed=0)
    made = []
    if s.ok:
        made.append(Music("piano-continuation", f"Ravel, Jeux d'eau (a GiantMIDI-Piano transcription): the first "
                          f"{prompt_s:.0f} s, continued for {new_s:.0f} s by gpt-piano", s.score, "piano"))
    span, k = ((5, 6), 2) if fast else ((5, 8), 4)
    [f] = infill(bundle, load(handel), bars=span, seed=0, candidates=k)
    made.append(Music("piano-infill", f"Handel, Air in E major HWV 425 (a GiantMIDI-Piano transcription): bars "
                      f"{span[0]}-{span[1]} rewritten by gpt-piano given the music before and after them, the best "
                      f"of {k} candidates ({f.notes_removed} notes replaced by {f.notes_added}; every other note as "
                      "played)", f.score, "piano"))
    return made


def _tvae_sample(composer: str) -> list[Music]:
    from partita.generation.tvae import sample_tvae

    [score] = sample_tvae(None, composer=composer, n=1, seed=0, temperature=1.0, top_p=0.95)
    return [Music(f"tvae-{composer.lower()}", f"a sample of the composer-conditioned VAE, composer {composer}", score, "generated")]


def _interpolate(rows: list[dict], steps: int, bars: int = 2) -> list[Music]:
    from partita.generation.vae import interpolate_files, melody_of

    size = bars * 16
    target = 6 * bars  # about six notes a bar: a melody that moves, not runs of sixteenths nor held notes

    def opening_notes(row: dict) -> int:
        try:
            events = np.asarray(melody_of(row["file"])[0].events)
        except PartitaError:
            return -1000
        return int((events[:size] < 128).sum()) if len(events) >= size else -1000

    def pick(group: list[dict]) -> Optional[dict]:
        best = min(group, key=lambda r: abs(opening_notes(r) - target), default=None)
        return best if best is not None and opening_notes(best) > 0 else None

    folk = [r for r in rows if r["label"] in ("Essen", "O'Neill's", "Ryan's Mammoth")]
    if bars == 2:
        a = pick([r for r in folk if r["label"] == "Essen"])
        b = pick([r for r in folk if r["label"] != "Essen"])
    else:  # two 16-bar dance tunes, one from each Irish collection
        a = pick([r for r in folk if r["label"] == "O'Neill's"])
        b = pick([r for r in folk if r["label"] == "Ryan's Mammoth"])
    if a is None or b is None:
        raise PartitaError(f"the demo set has no two {bars}-bar folk tunes to interpolate between")
    scores = interpolate_files(a["file"], b["file"], steps=steps, bars=bars)
    out = []
    prefix = "interpolation" if bars == 2 else f"interpolation-{bars}bar"
    for i, score in enumerate(scores):
        t = i / (len(scores) - 1)
        where = "A" if i == 0 else "B" if i == len(scores) - 1 else f"{t:.2f} of the way"
        out.append(Music(f"{prefix}-{i}", f"{bars} bars, {where}: {a['title']} -> {b['title']}", score, "interpolation"))
    return out


def _accompany(rows: list[dict], pop: Optional[Path]) -> list[Music]:
    """Accompaniments of held-out melodies: a chorale soprano in four parts, a folk tune with the
    rule's chords and with the pop style's, and (with ``pop``, a POP909 folder) a held-out pop melody."""
    import json

    from partita.generation.accompany import accompany, melody_only
    from partita.generation.chorale import chorale_voices, split_chorales
    from partita.io.midi import load
    from partita.pretrained import CHORALE_HARMONY, POP_CHORDS, bundle_path

    made: list[Music] = []
    chorales = split_chorales(sorted(DEMO_SET.glob("bach/*.mid")))[0]["test"]  # tunes the model never saw
    if chorales:
        score = load(chorales[0])
        soprano = melody_only(score, chorale_voices(score)[0])
        [r] = accompany(soprano, style="chorale", seed=0)
        fig = json.loads((bundle_path(CHORALE_HARMONY) / "card.json").read_text()).get("metrics", {}).get("test", {})
        sysm = fig.get("systems", {})
        note = (f" On the {fig['chorales']} held-out chorales: chord fit with Bach's own {sysm['model']['chord_fit']:.2f} "
                f"(the naive rule's {sysm['rule']['chord_fit']:.2f}), parallel fifths and octaves "
                f"{sysm['model']['parallels']:.1f} per 100 beats (Bach's {sysm['real']['parallels']:.1f}, the rule's "
                f"{sysm['rule']['parallels']:.1f}).") if sysm else ""
        made.append(Music("chorale-harmonized", f"Bach chorale {chorales[0].stem}: its soprano alone, with alto, tenor "
                          f"and bass by chorale-harmony (a tune it never saw)." + note, r.score, "accompaniment"))
    folk = next((r for r in rows if r["label"] == "Essen"), None)
    if folk is not None:
        [r] = accompany(str(folk["file"]), style="folk", pattern="broken")
        made.append(Music("folk-accompanied", f"Essen folk tune {folk['title']}: broken chords under it by the rule "
                          f"(one diatonic triad a half bar, from the tune's own notes)", r.score, "accompaniment"))
    test = json.loads((bundle_path(POP_CHORDS) / "card.json").read_text()).get("metrics", {}).get("test", {})
    pop_note = (f" On {test['songs']} held-out POP909 songs the tagger's chords fit the annotated ones at "
                f"{test['tagger_fit']:.2f} a beat (the rule's {test['rule_fit']:.2f}).") if test else ""
    if folk is not None:
        [r] = accompany(str(folk["file"]), style="pop")
        made.append(Music("folk-pop-accompanied", f"The same tune with the pop style: the chords pop-chords (a tagger "
                          f"trained on POP909) hears in it, as arpeggios over a bass." + pop_note, r.score, "accompaniment"))
    if pop is not None:
        from partita.data.accompany import song_files, song_split

        song = next((f for f in song_files(pop) if song_split(f.stem) == "test"), None)
        if song is not None:
            score = load(song)
            track = next(i for i, t in enumerate(score.tracks) if t.name.strip().upper() == "MELODY")
            melody = melody_only(score, track)
            for t in melody.tracks:
                t.notes = t.notes.filter(lambda n: n.time < 32 * 4 * int(score.ticks_per_quarter), inplace=False)
            [r] = accompany(melody, style="pop", seed=0)
            made.append(Music("pop-accompanied", f"POP909 song {song.stem} (held out): the first 32 bars of its melody, "
                              "with the chords pop-chords hears in it, as arpeggios over a bass." + pop_note, r.score,
                              "accompaniment"))
    return made


def _metrics(corpus: Path, generated: Path) -> dict:
    from partita.evaluate.metrics import compare_sets, load_set

    reference = load_set(corpus, split=None)
    made = load_set(generated)
    return compare_sets(reference, made)


def run_demo(
    out: Path,
    *,
    fast: bool = False,
    bars: int = 8,
    workers: Optional[int] = None,
    asap: Optional[Path] = None,
    pop: Optional[Path] = None,
    progress: Optional[Callable[[str], Callable[[int, int], None]]] = None,
) -> DemoResult:
    """Run the demo into ``out``; ``fast`` attributes 2 pieces per label and shortens everything;
    ``asap``: an ASAP folder, whose held-out works the piano section then attributes and retrieves;
    ``pop``: a POP909 folder, one of whose held-out melodies the accompaniment section accompanies.
    ``progress(desc)`` returns a progress callback for a step (or None)."""
    from partita.data.prepare import prepare
    from partita.io.audio import have_soundfont, save_clip, clip_format
    from partita.io.midi import save
    from partita.viz.pianoroll import save_pianoroll_png

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out)
    step = progress or (lambda desc: None)

    def attempt(name: str, fn, *args):
        try:
            return fn(*args)
        except PartitaError as e:
            res.problems.append((name, str(e)))
            return None

    rows = demo_pieces(2 if fast else None)
    prepared = prepare(DEMO_SET, out / "corpus", workers=workers, progress=step("preparing the demo set"))
    res.pieces = len(rows)

    res.attribution = attempt("attribution", _attribute, rows, out, 2, step("attributing")) or {}
    res.piano = attempt("piano", _piano, asap) or {}
    music: list[Music] = []
    music += attempt("generation", _generate, rows, 2 if fast else bars) or []
    music += attempt("piano generation", _piano_music, fast) or []
    music += attempt("accompaniment", _accompany, rows, pop) or []
    music += attempt("composer-conditioned VAE", _tvae_sample, "Bach") or []
    music += attempt("interpolation", _interpolate, rows, 3 if fast else 7) or []
    music += attempt("interpolation", _interpolate, rows, 3 if fast else 5, 16) or []
    res.music = music

    generated = out / "generated"
    rolls, audio = out / "rolls", out / "audio"
    sound = have_soundfont()
    fmt = clip_format() if sound else None
    files = {}
    for m in music:
        midi = save(m.score, music_file(out, m))
        png = save_pianoroll_png(m.score, rolls / f"{m.name}.png", width_px=720, height_px=220, title=m.name)
        clip = save_clip(m.score, audio / f"{m.name}{fmt}", seconds=8 if fast else 30) if sound else None
        files[m.name] = (midi, png, clip)
    if len(music) >= 2:
        res.metrics = attempt("metrics", _metrics, prepared.corpus.path, generated) or {}
        if res.metrics:
            import json

            (out / "metrics.json").write_text(json.dumps(res.metrics, indent=2, default=float) + "\n")

    res.seconds = time.perf_counter() - started
    res.report = _write_report(res, files, sound)
    return res


def _pct(x: Optional[float]) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}%"


def _write_report(res: DemoResult, files: dict, sound: bool) -> Path:
    from partita.viz.report import Report

    out = res.out
    report = Report("partita demo", out, subtitle=(
        f"{res.pieces} held-out pieces of the bundled corpus (never seen by the shipped models), "
        f"made in {res.seconds:.0f} s."))
    a = res.attribution
    s = report.section("Attribution", "Which composer (or folk collection) wrote each held-out piece, by the "
                       "shipped SiaViT embedder against the label centroids of the shipped index.")
    if a:
        s.table(["pieces", "labels", "top-1 (unknown = wrong)", "top-1, forced to a label", "top-3", "chance (1/labels)",
                 "majority label", "said unknown composer"],
                [[a["pieces"], a["labels"], _pct(a["top1"]), _pct(a["top1_known"]), _pct(a["top3"]), _pct(a["chance"]),
                  _pct(a["majority"]), a["unknown"]]])
        per: dict[str, list] = {}
        for r in a["pieces_table"]:
            per.setdefault(r["label"], []).append(r["verdict"] == r["label"])
        s.table(["label", "pieces", "top-1"], [[k, len(v), _pct(float(np.mean(v)))] for k, v in sorted(per.items())])
        m = a.get("map")
        if m:
            s.text(f"The corpus map (t-SNE of the shipped index) with two held-out pieces placed on it: "
                   f"{', '.join(m['highlighted'])}.")
            s.image(m["png"], "corpus map")
            s.page(m["html"], "the interactive map (hover for title and composer)")
    for step, why in res.problems:
        if step == "attribution":
            s.text(f"skipped: {why}")

    p = res.piano
    s = report.section("Piano music", "Real piano music the shipped piano models never saw, against the shipped "
                       "piano index (ASAP's train and valid works, embedded by featnet-piano).")
    if p:
        s.table(["GiantMIDI-Piano transcription", "attributed to", "top 3", "nearest pieces of the index"],
                [[t["piece"], t["verdict"], t["top3"], t["nearest"]] for t in p["transcriptions"]])
        if p["renditions"]:
            s.text("Performances of ASAP works that no piano model trained on or was tuned with, each looking for "
                   "its own score among the scores of every ASAP work:")
            s.table(["performance", "composer", "attributed to", "most similar score", "rank of its own score"],
                    [[r["performance"], r["composer"], r["verdict"], r["found"], f"{r['rank_of_its_score']} of {r['scores']}"]
                     for r in p["renditions"]])
        else:
            s.text("Run 'partita demo --asap PATH/TO/asap' to also see performances of held-out ASAP works find their score.")
    for step, why in res.problems:
        if step == "piano":
            s.text(f"skipped: {why}")

    for group, title, intro in (
        ("generated", "Generation", "The shipped transformer continues held-out openings and a chord progression, "
         "and samples in the style of a composer." + ("" if sound else " (No SoundFont on this machine: no audio.)")),
        ("piano", "Piano generation", "The shipped piano model (gpt-piano, trained on ASAP's performances) continues "
         "the opening of a real piano performance and rewrites four bars of another given what comes before and after "
         "them, both transcriptions it never saw."),
        ("accompaniment", "Accompaniment", "Melodies the models never saw, every note of them kept, with new "
         "tracks under them (partita accompany)." + ("" if any(m.name == "pop-accompanied" for m in res.music) else
         " Run 'partita demo --pop PATH/TO/pop909' with an accompaniment model to also hear a pop song's melody accompanied.")),
        ("interpolation", "Interpolation", "The shipped MusicVAEs walk their latent space from one folk melody to another: 2 bars, then 16 bars (hierarchical)."),
    ):
        sec = report.section(title, intro)
        for m in res.music:
            if m.group == group:
                midi, png, clip = files[m.name]
                sec.item(m.caption, image=png, audio=clip, midi=midi)
        for step, why in res.problems:
            if step in {"generated": ("generation", "composer-conditioned VAE"), "piano": ("piano generation",),
                        "interpolation": ("interpolation",), "accompaniment": ("accompaniment",)}[group]:
                sec.text(f"{step} skipped: {why}")

    sec = report.section("Musical metrics", "The generated set against the real held-out pieces (MGEval): "
                         "overlap area near 1 and KL near 0 mean the generated pieces sit among the real ones.")
    if res.metrics:
        rows = []
        for name in SHOWN_FEATURES:
            f = res.metrics["features"].get(name, {})
            rows.append([name, f.get("reference_mean"), f.get("generated_mean"), f.get("oa_gen"), f.get("kl_gen")])
        sec.table(["feature", "real (mean)", "generated (mean)", "overlap area", "KL divergence"],
                  [[r[0]] + [("-" if v is None else float(v)) for v in r[1:]] for r in rows])
        sec.link(out / "metrics.json", "every feature, as JSON")
    return report.write()
