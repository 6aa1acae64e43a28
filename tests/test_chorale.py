"""partita accompany --style chorale: alto, tenor and bass under a soprano, the soprano kept in
ticks, the voice-leading rules kept; the counted tables; the chorale evaluation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic

from partita.bundle import load_bundle, save_bundle
from partita.generation.accompany import accompany
from partita.generation.chorale import (beat_voices, chorale_files, chorale_voices, harmonize, read_beats, rule_voices,
                                        sounding_at, split_chorales, train_harmony)
from partita.io.midi import load
from partita.models.harmony import voice_leading_errors

DEMO = Path(__file__).resolve().parents[1] / "src" / "partita" / "data" / "demo" / "bach"
HELD_OUT = DEMO / "bwv397.mid"  # its tune is in the held-out split (tune_split): the shipped model never saw it


def _soprano_only(tmp_path: Path, source: Path = HELD_OUT) -> Path:
    score = load(source)
    soprano = chorale_voices(score)[0]
    keep = score.copy()
    keep.tracks = [t for i, t in enumerate(score.tracks) if i == soprano]
    path = tmp_path / "soprano.mid"
    keep.dump_midi(str(path))
    return path


def _on_grid(score, track: int, voices) -> np.ndarray:
    grid = read_beats(score, track)
    cols = [grid.pitch] + [sounding_at(t.notes.numpy(), grid.starts) for t in voices]
    return np.stack(cols, axis=1)


def test_voice_leading_errors_counts_what_it_says():
    # soprano and bass a (compound) fifth apart, both up a step; alto and tenor hold: one parallel fifth
    fifths = np.array([[67, 64, 59, 48], [69, 64, 59, 50]])
    assert voice_leading_errors(fifths) == {"parallel_fifths": 1, "parallel_octaves": 0, "crossing": 0, "beats": 2}
    # fifth to fifth in contrary motion is not a parallel
    contrary = np.array([[67, 64, 59, 48], [72, 64, 59, 41]])
    errors = voice_leading_errors(contrary)
    assert errors["parallel_octaves"] == 0 and errors["parallel_fifths"] == 0
    # octaves in similar motion; a tenor above the alto is a crossing
    octaves = np.array([[72, 67, 64, 48], [74, 67, 64, 50]])
    assert voice_leading_errors(octaves)["parallel_octaves"] == 1
    assert voice_leading_errors(np.array([[72, 60, 64, 48]]))["crossing"] == 1
    assert voice_leading_errors(np.array([[72, -1, 64, 48], [72, 67, 64, 48]]))["beats"] == 1


def test_shipped_harmonizer_keeps_the_soprano_and_the_rules(tmp_path):
    path = _soprano_only(tmp_path)
    original = load(path)
    result = accompany(str(path), style="chorale", seed=0)[0]
    out = result.score
    assert [t.name for t in out.tracks[1:]] == ["Alto", "Tenor", "Bass"]
    assert result.added == {t.name: t.note_num() for t in out.tracks[1:]} and min(result.added.values()) > 0
    a, b = original.tracks[0].notes.numpy(), out.tracks[0].notes.numpy()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert out.ticks_per_quarter == original.ticks_per_quarter
    satb = _on_grid(out, 0, out.tracks[1:])
    sounding = (satb >= 0).all(axis=1)
    assert sounding.sum() == (satb[:, 0] >= 0).sum()  # every beat the soprano sings is harmonized
    assert (np.diff(satb[sounding], axis=1) <= 0).all()  # no voice above the one over it
    errors = voice_leading_errors(satb)
    assert errors["parallel_fifths"] == 0 and errors["parallel_octaves"] == 0 and errors["crossing"] == 0
    # on the half-beat grid too: the passing notes (a third filled in eighths) keep the rules
    grid = read_beats(out, 0)
    ticks = np.sort(np.r_[grid.starts, grid.starts + grid.beat // 2])
    halves = np.stack([sounding_at(t.notes.numpy(), ticks) for t in out.tracks], axis=1)
    onsets = np.concatenate([t.notes.numpy()["time"] for t in out.tracks[1:]]) - grid.starts[0]
    assert (onsets % (grid.beat // 2) == 0).all() and (onsets % grid.beat != 0).any()  # some passing notes
    errors = voice_leading_errors(halves)
    assert errors["parallel_fifths"] == 0 and errors["parallel_octaves"] == 0 and errors["crossing"] == 0
    ranges = load_bundle(Path(__file__).resolve().parents[1] / "src/partita/pretrained/chorale-harmony").model.config.ranges
    for v, (lo, hi) in enumerate(ranges, start=1):
        assert lo <= satb[sounding, v].min() and satb[sounding, v].max() <= hi


def test_seeds_and_temperature(tmp_path):
    path = _soprano_only(tmp_path)

    def notes(**kw):
        r = accompany(str(path), style="chorale", **kw)[0]
        return [tuple(t.notes.numpy()["pitch"]) for t in r.score.tracks[1:]]

    assert notes(seed=3) == notes(seed=3)
    assert notes(seed=1, temperature=0) == notes(seed=2, temperature=0)  # the best path
    assert len({tuple(map(tuple, notes(seed=s, temperature=1.0))) for s in range(4)}) > 1
    two = accompany(str(path), style="chorale", n=2, seed=5)
    assert [r.index for r in two] == [0, 1]


def test_counted_tables_round_trip(tmp_path):
    splits, skipped = split_chorales(chorale_files(DEMO))
    assert splits["train"] and splits["test"] and any("not four voices" in s for s in skipped)
    model, report = train_harmony(splits["train"])
    assert report["chorales"] == len(splits["train"]) and report["chords"] == len(model.config.chords) > 5
    for name in ("start", "end", "emit", "bass"):
        np.testing.assert_allclose(getattr(model, name).exp().sum(-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.trans.exp().sum(-1).numpy(), 1.0, atol=1e-5)
    save_bundle(model, tmp_path / "h")
    again = load_bundle(tmp_path / "h").model
    score = load(_soprano_only(tmp_path))
    first = harmonize(model, score, 0, temperature=0.7, seed=4)
    second = harmonize(again, score, 0, temperature=0.7, seed=4)
    assert [t.notes.numpy()["pitch"].tolist() for t in first] == [t.notes.numpy()["pitch"].tolist() for t in second]


def test_rule_baseline_breaks_the_rules_the_model_keeps(tmp_path):
    score = load(HELD_OUT)
    voices = chorale_voices(score)
    grid, bach = beat_voices(score, voices)
    rule = _on_grid(score, voices[0], rule_voices(score, voices[0]))
    assert rule.shape == bach.shape
    assert voice_leading_errors(rule)["parallel_fifths"] + voice_leading_errors(rule)["parallel_octaves"] > 0


def test_eval_chorales_on_held_out_tunes():
    from partita.evaluate.accompany import evaluate_chorales

    results = evaluate_chorales(None, DEMO, limit=3)
    assert len(results["chorales"]) == 3
    s = results["systems"]
    assert set(s) == {"real", "model", "rule", "other"}
    assert s["real"]["chord_fit"] == 1.0
    assert s["model"]["parallels"] == 0.0 and s["rule"]["parallels"] > s["model"]["parallels"]
    assert 0 < s["model"]["chord_fit"] < 1 and s["other"]["chord_fit"] < 1


def test_cli_chorale(tmp_path):
    from partita.cli import main

    path = _soprano_only(tmp_path)
    main(["accompany", str(path), "--style", "chorale", "-o", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")])
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc["samples"][0]["added"]) == {"Alto", "Tenor", "Bass"}
    written = load(doc["samples"][0]["file"])
    assert [t.name for t in written.tracks][-3:] == ["Alto", "Tenor", "Bass"]
    main(["train", "chorale", "--data", str(DEMO), "--out", str(tmp_path / "h"), "--no-eval"])
    assert load_bundle(tmp_path / "h").card["train_chorales"] > 0


def test_melodies_higher_or_lower_than_a_soprano_are_harmonized_under_them(tmp_path):
    """A fiddle tune reaching C#6 and a chorale tune two octaves down: voices found for every
    beat, under the melody, keeping the rules."""
    from partita.generation.accompany import accompany as run

    tune = DEMO.parent / "oneills" / "0401.mid"
    low = load(_soprano_only(tmp_path))
    for t in low.tracks:
        n = t.notes.numpy()
        n["pitch"] = (n["pitch"] - 24).astype(np.int8)
        t.notes = symusic.Note.from_numpy(**n)
    for source in (load(tune), low):
        out = run(source, style="chorale", seed=0)[0].score
        satb = _on_grid(out, 0, out.tracks[-3:])
        sounding = (satb >= 0).all(axis=1)
        assert sounding.sum() == (satb[:, 0] >= 0).sum()
        assert (np.diff(satb[sounding], axis=1) <= 0).all()
        errors = voice_leading_errors(satb)
        assert errors["parallel_fifths"] == 0 and errors["parallel_octaves"] == 0


def test_a_stray_note_far_out_of_range_is_voiced(tmp_path):
    from partita.generation.accompany import accompany as run

    score = load(_soprano_only(tmp_path))
    n = score.tracks[0].notes.numpy()
    n["pitch"][3] = 0  # a C-1, as a broken file may hold
    score.tracks[0].notes = symusic.Note.from_numpy(**n)
    out = run(score, style="chorale", seed=0)[0].score
    assert all(t.note_num() > 0 for t in out.tracks[-3:])
    assert min(int(p) for t in out.tracks[-3:] for p in t.notes.numpy()["pitch"]) >= 0
