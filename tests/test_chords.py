"""The chord tagger (partita train chords, --style pop): labels, beat features, decoding, training
on the fixture songs, the shipped pop-chords against the rule on held-out songs, and the pop style
that plays its chords or moves a model's notes onto them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
from typer.testing import CliRunner

from partita.cli import app
from partita.errors import PartitaError
from partita.generation.accompany import accompany, load_tagger, render_plan, tagged_plan
from partita.models.chords import QUALITIES, beat_features, chord_tones, decode, label_class

FIX = Path(__file__).parent / "fixtures" / "accompany"
SONG = FIX / "008" / "008.mid"
Q = list(QUALITIES)
runner = CliRunner()


def test_labels_read_as_the_nearest_quality():
    assert label_class("C:maj", Q) == Q.index("maj")
    assert label_class("A:min7/b7", Q) == 9 * len(Q) + Q.index("min7")
    assert label_class("Bb:maj6", Q) == 10 * len(Q) + Q.index("maj")
    assert label_class("D:sus4(b7)", Q) == 2 * len(Q) + Q.index("sus4")
    assert label_class("F#:hdim7", Q) == 6 * len(Q) + Q.index("dim")
    assert label_class("N", Q) == -1 and label_class("C:weird", Q) == -1
    assert chord_tones(label_class("G:7", Q), Q) == (7, (7, 11, 2, 5))


def test_beat_features_of_a_made_melody():
    # beats of 480 ticks from 120: C for a beat and a half from the first beat, then E on the third
    notes = {"time": np.array([120, 1080]), "duration": np.array([720, 480]), "pitch": np.array([60, 64])}
    x = beat_features(notes, 480, 120)
    assert x.shape == (3, 37)
    np.testing.assert_allclose(x[:, 0], [1.0, 0.5, 0.0])  # C's duration in each beat (beats)
    np.testing.assert_allclose(x[:, 12], [0.5, 0.5, 0.0])  # in each beat's first half
    np.testing.assert_allclose(x[:, 24 + 0], [1, 0, 0])  # C starts on beat 0
    np.testing.assert_allclose(x[:, 24 + 4], [0, 0, 1]) and np.testing.assert_allclose(x[:, 4], [0, 0, 1.0])
    np.testing.assert_allclose(x[:, 36], [0, 0, 0])
    assert beat_features({"time": np.array([0]), "duration": np.array([480]), "pitch": np.array([60])}, 480, 0, 3)[1:, 36].tolist() == [1, 1]


def test_decode_trades_changes_for_probability():
    lp = np.log(np.array([[0.9, 0.1], [0.45, 0.55], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]]))
    assert decode(lp, 0.0).tolist() == [0, 1, 0, 1, 1]  # every beat its best chord
    assert decode(lp, 0.5).tolist() == [0, 0, 0, 1, 1]  # a flicker is not worth two changes
    assert decode(lp, 50.0).tolist() == [1, 1, 1, 1, 1]  # no change: the chord best over all
    assert decode(np.zeros((0, 2)), 1.0).tolist() == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A chord tagger trained for a few steps on the fixture songs (004 valid, 008 train, 009 and 019 held out)."""
    out = tmp_path_factory.mktemp("chords") / "run"
    result = runner.invoke(app, ["train", "chords", "--data", str(FIX), "--out", str(out), "--max-steps", "3",
                                 "--batch-size", "2", "--set", "d_hidden=16", "--progress", "none"])
    assert result.exit_code == 0, result.output
    assert "held-out songs: 2" in result.output
    return out / "bundle"


def test_training_writes_a_bundle_with_its_figures(trained):
    card = json.loads((trained / "card.json").read_text())
    assert card["family"] == "chords" and card["songs"] == {"train": 1, "valid": 1, "test": 2}
    test = card["metrics"]["test"]
    assert test["songs"] == 2 and 0.0 <= test["tagger_fit"] <= 1.0 and 0.0 <= test["rule_fit"] <= 1.0
    rows = card["decoding_on_valid"]
    best = max(r["tagger_fit"] for r in rows)
    near = [r for r in rows if r["tagger_fit"] >= best - 0.01]
    chosen = max(near, key=lambda r: (r["outside"], r["change"]))
    assert (test["change"], test["outside"]) == (chosen["change"], chosen["outside"]) and len(rows) == 20
    tagger = load_tagger(str(trained))
    assert tagger.config.d_hidden == 16 and (tagger.config.change, tagger.config.outside) == (test["change"], test["outside"])


@pytest.mark.parametrize("key", [0, 5, 9])
def test_shipped_tagger_hears_arpeggiated_chords_in_any_key(tmp_path, key):
    """A melody outlining I vi IV V, a bar each, arpeggiated in eighths: pop-chords hears those
    chords in every key (it is trained on every transposition)."""
    progression = [(0, (0, 4, 7)), (9, (0, 3, 7)), (5, (0, 4, 7)), (7, (0, 4, 7))]
    score = symusic.Score(480)
    track = symusic.core.TrackTick("MELODY", 0, False)
    for bar, (root, shape) in enumerate(progression * 2):
        tones = [60 + (key + root + i) % 12 for i in shape]
        for k, p in enumerate([tones[0], tones[1], tones[2], tones[1]] * 2):
            track.notes.append(symusic.core.NoteTick(bar * 1920 + k * 240, 240, p, 90))
    score.tracks.append(track)
    plan = tagged_plan(score, 0, load_tagger())
    for bar, (root, shape) in enumerate(progression * 2):
        middle = bar * 1920 + 960
        chord = next(c for c in plan if c[0] <= middle < c[1])
        assert chord[3] == frozenset((key + root + i) % 12 for i in shape), (bar, chord)


def test_pop_plays_the_tagged_chords_under_the_melody(trained):
    score = symusic.Score(str(SONG))
    plan = tagged_plan(score, 0, load_tagger())
    starts = [c[0] for c in plan]
    assert starts == sorted(starts) and all(a < b for a, b, _, _ in plan)
    assert all(b == a2 for (_, b, _, _), (a2, _, _, _) in zip(plan[:-1], plan[1:]))  # back to back
    mel = score.tracks[0].notes.numpy()
    assert plan[-1][1] >= int((mel["time"] + mel["duration"]).max()) - 480
    arp = accompany(str(SONG))[0].score.tracks[-1].notes.numpy()
    for t, p in zip(arp["time"], arp["pitch"]):  # every note is a tone of its chord
        k = np.searchsorted(starts, t, side="right") - 1
        assert int(p) % 12 in plan[k][3]
    block = render_plan(score, 0, plan, pattern="block").notes.numpy()
    beats = (plan[-1][1] - plan[0][0]) / score.ticks_per_quarter
    assert len(arp["time"]) / beats == pytest.approx(2.5, rel=0.15)  # a bass a half bar, eighths above it
    assert len(arp["time"]) > len(block["time"])
    # another tagger gives other chords: --chord-model is read
    mine = accompany(str(SONG), chord_model=str(trained))[0].score.tracks[-1].notes.numpy()
    assert not np.array_equal(mine["pitch"], arp["pitch"])


def test_arpeggio_density_follows_the_option(tmp_path):
    score = symusic.Score(480)
    track = symusic.core.TrackTick("Flute", 73, False)
    for i in range(16):
        track.notes.append(symusic.core.NoteTick(i * 480, 460, [72, 76, 79, 76][i % 4], 90))
    score.tracks.append(track)
    path = tmp_path / "m.mid"
    score.dump_midi(str(path))

    def rate(**kw):
        return accompany(str(path), **kw)[0].score.tracks[-1].note_num() / 16

    assert rate() == pytest.approx(2.5, rel=0.1)
    assert rate(density=4.5) == pytest.approx(4.5, rel=0.1) and rate(density=1.5) == pytest.approx(1.5, rel=0.1)


def test_pattern_is_for_chords_played_without_a_model(tmp_path):
    with pytest.raises(PartitaError, match="--pattern plays the chords without a model"):
        accompany(str(SONG), model="gpt-small", pattern="block")
    with pytest.raises(PartitaError, match="--chord-model works with --style pop"):
        accompany(str(SONG), style="chorale", chord_model="pop-chords")


def test_arpeggio_notes_never_overlap_themselves_and_sit_under_the_bass():
    plan = tagged_plan(symusic.Score(str(SONG)), 0, load_tagger())
    n = render_plan(symusic.Score(str(SONG)), 0, plan, pattern="arpeggio").notes.numpy()
    for p in np.unique(n["pitch"]):  # a note ends before the same pitch starts again
        on, off = n["time"][n["pitch"] == p], (n["time"] + n["duration"])[n["pitch"] == p]
        assert np.all(off[:-1] <= on[1:])
    bass = n["velocity"] == n["velocity"].max()
    assert bass.any() and (~bass).any() and np.all(n["velocity"][~bass] == n["velocity"].max() - 10)
