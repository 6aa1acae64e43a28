"""Musical metrics on hand-made pieces with known values, and MGEval's set comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import make_score

from partita.cli import main
from partita.errors import PartitaError
from partita.evaluate.metrics import (
    FEATURES,
    PieceSet,
    avg_ioi,
    avg_pitch_shift,
    compare_sets,
    empty_beat_rate,
    groove_consistency,
    kl_divergence,
    load_set,
    overlap_area,
    piece_metrics,
    pitch_class_entropy,
    pitch_class_transition_matrix,
    pitch_entropy,
    pitch_in_scale_rate,
    polyphony_rate,
    scale_consistency,
    score_metrics,
)
from partita.io.midi import NOTE_DTYPE, save

C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def notes_of(rows) -> np.ndarray:
    """A note array in beats from (onset, duration, pitch) rows, one track."""
    a = np.zeros(len(rows), NOTE_DTYPE)
    for k, (on, dur, p) in enumerate(rows):
        a[k] = (on, dur, p, 80, 0, False, 0)
    return a


def scale(pitches=C_MAJOR, step=1.0):
    return notes_of([(k * step, step, p) for k, p in enumerate(pitches)])


def test_c_major_scale_known_values():
    m = score_metrics(make_score([(k * 480, 480, p, 80) for k, p in enumerate(C_MAJOR)]))
    assert m["scale_consistency"] == 1.0
    assert m["pitch_range"] == 12.0
    assert m["n_pitches_used"] == 8.0 and m["n_pitch_classes_used"] == 7.0
    assert m["pitch_entropy"] == pytest.approx(3.0)  # 8 pitches, once each
    # 7 classes, C twice: -(2/8 log2 2/8 + 6 * 1/8 log2 1/8) = 0.5 + 2.25
    assert m["pitch_class_entropy"] == pytest.approx(2.75)
    assert m["polyphony"] == 1.0 and m["polyphony_rate"] == 0.0
    assert m["note_density"] == pytest.approx(1.0)  # one note per beat
    assert m["avg_ioi"] == pytest.approx(1.0)
    assert m["avg_pitch_shift"] == pytest.approx(12 / 7)
    assert m["empty_beat_rate"] == 0.0
    assert m["groove_consistency"] == 1.0  # both bars: an onset on every beat
    # Quarter notes fall in the [1, 2) beat bin (index 6) of both rhythm histograms.
    assert np.flatnonzero(m["duration_histogram"]).tolist() == [6]
    assert np.flatnonzero(m["ioi_histogram"]).tolist() == [6]
    pctm = m["pitch_class_transition_matrix"]
    assert pctm.sum() == pytest.approx(1.0) and pctm[0, 2] == pytest.approx(1 / 7) and pctm[11, 0] == pytest.approx(1 / 7)
    assert set(m) == set(FEATURES)


def test_single_repeated_note():
    n = notes_of([(k, 1.0, 60) for k in range(8)])
    assert pitch_class_entropy(n) == 0.0
    assert pitch_entropy(n) == 0.0
    assert scale_consistency(n) == 1.0
    assert avg_pitch_shift(n) == 0.0
    assert pitch_class_transition_matrix(n)[0, 0] == 1.0


def test_entropy_and_scales():
    chromatic = scale(list(range(60, 72)))
    assert pitch_class_entropy(chromatic) == pytest.approx(math.log2(12))
    assert scale_consistency(chromatic) == pytest.approx(7 / 12)
    a_minor = scale([69, 71, 72, 74, 76, 77, 79])
    assert pitch_in_scale_rate(a_minor, 9, "minor") == 1.0
    assert pitch_in_scale_rate(a_minor, 0, "major") == 1.0  # the relative major: same notes
    # One note out of eight outside every scale that holds the other seven:
    assert scale_consistency(scale([60, 62, 64, 65, 67, 69, 71, 61])) == pytest.approx(7 / 8)
    with pytest.raises(ValueError):
        pitch_in_scale_rate(a_minor, 0, "dorian")


def test_groove_consistency():
    bar = [0.0, 1.0, 1.5, 3.0]
    same = notes_of([(b * 4 + t, 0.5, 60) for b in range(4) for t in bar])
    assert groove_consistency(same, 4.0) == 1.0
    # Bar 2 adds one onset: 2 of 3 neighbour pairs differ in 1 of 48 grid positions.
    changed = notes_of([(b * 4 + t, 0.5, 60) for b in range(4) for t in bar] + [(4 + 2.0, 0.5, 62)])
    assert groove_consistency(changed, 4.0) == pytest.approx(1 - (2 / 3) / 48)
    assert math.isnan(groove_consistency(notes_of([(0, 1, 60), (1, 1, 62)]), 4.0))  # one bar only


def test_empty_beat_rate_and_polyphony_rate():
    # Notes fill beats 0 and 2 of 4 (a note ending exactly on a beat does not fill the next one).
    assert empty_beat_rate(notes_of([(0, 1, 60), (2, 1, 62), (3.5, 0.5, 64)])) == pytest.approx(0.25)
    assert empty_beat_rate(notes_of([(0, 1, 60), (3, 1, 62)])) == pytest.approx(0.5)
    # A two-note chord held for half of the sounding time.
    n = notes_of([(0, 2, 60), (0, 1, 64)])
    assert polyphony_rate(n) == pytest.approx(0.5)
    assert polyphony_rate(notes_of([(0, 1, 60), (0, 1, 64), (0, 1, 67)])) == 1.0


def test_chords_count_as_one_onset():
    n = notes_of([(0, 1, 60), (0, 1, 64), (0, 1, 67), (2, 1, 62)])
    assert avg_ioi(n) == pytest.approx(2.0)
    m = pitch_class_transition_matrix(n)
    assert m.sum() == pytest.approx(1.0)
    assert m[0, 2] == m[4, 2] == m[7, 2] == pytest.approx(1 / 3)


def test_empty_piece_gives_nan_not_errors():
    m = piece_metrics(np.zeros(0, NOTE_DTYPE))
    for name, shape in FEATURES.items():
        if shape == ():
            assert math.isnan(m[name]), name
        else:
            assert np.all(np.asarray(m[name]) == 0), name
    drums = notes_of([(k, 0.5, 36) for k in range(4)])
    drums["is_drum"] = True
    m = piece_metrics(drums)  # drums have no pitch, but they fill beats (as in muspy)
    assert math.isnan(m["pitch_class_entropy"]) and math.isnan(m["pitch_range"])
    assert m["empty_beat_rate"] == 0.0
    with pytest.raises(PartitaError):
        piece_metrics(np.zeros(3))


def test_kde_distances_match_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    # Identical samples: 1 but for the KDE tails beyond the data range, which MGEval leaves out too.
    assert 0.99 < overlap_area(a, a) <= 1.0
    assert kl_divergence(a, a) == pytest.approx(0.0, abs=1e-9)
    far = rng.normal(20, 1, 400)
    assert overlap_area(a, far) < 1e-3 and kl_divergence(a, far) > 10
    # Two unit Gaussians one standard deviation apart overlap by 2 * Phi(-1/2) = 0.617; the KDE
    # widens both a little (bandwidth 0.3 at n = 4000), which raises it a few hundredths.
    b = rng.normal(0, 1, 4000)
    c = rng.normal(1, 1, 4000)
    assert 0.60 < overlap_area(b, c) < 0.68


def _set(pieces):
    return PieceSet("x", names=[str(k) for k in range(len(pieces))], metrics=[piece_metrics(p) for p in pieces])


def test_compare_sets_prefers_the_similar_set():
    rng = np.random.default_rng(1)

    def diatonic(k):
        return scale([int(rng.choice(C_MAJOR)) for _ in range(16)], step=rng.choice([0.5, 1.0]))

    def chromatic(k):
        return notes_of([(t * 0.25, 0.25, int(rng.integers(40, 90))) for t in range(16)])

    ref = _set([diatonic(k) for k in range(30)])
    like = _set([diatonic(k) for k in range(30)])
    unlike = _set([chromatic(k) for k in range(30)])
    close, far = compare_sets(ref, like), compare_sets(ref, unlike)
    assert close["n_reference"] == 30 and set(close["features"]) == set(FEATURES)
    for name in ("scale_consistency", "pitch_class_histogram", "pitch_range"):
        assert close["features"][name]["oa_ref"] > far["features"][name]["oa_ref"], name
        assert close["features"][name]["kl_ref"] < far["features"][name]["kl_ref"], name
    assert close["features"]["scale_consistency"]["generated_mean"] == 1.0
    assert far["features"]["scale_consistency"]["generated_mean"] < 0.9
    # Deterministic: same inputs, same numbers.
    assert compare_sets(ref, unlike) == far
    with pytest.raises(PartitaError):
        compare_sets(ref, _set([diatonic(0)]))


def cli(*args) -> int:
    """Run the partita command in this process; its exit code (0 when it returns normally)."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _write_set(folder, rows_list):
    folder.mkdir()
    for k, rows in enumerate(rows_list):
        save(make_score(rows), folder / f"p{k}.mid")


def test_eval_metrics_command(tmp_path, capsys):
    rng = np.random.default_rng(2)
    ref_rows = [[(t * 480, 480, int(rng.choice(C_MAJOR)), 80) for t in range(16)] for _ in range(6)]
    gen_rows = [[(t * 240, 240, int(rng.integers(50, 80)), 80) for t in range(16)] for _ in range(5)]
    _write_set(tmp_path / "ref", ref_rows)
    _write_set(tmp_path / "gen", gen_rows)
    (tmp_path / "gen" / "broken.mid").write_bytes(b"MThd\x00\x00")
    out = tmp_path / "m.json"
    assert cli("eval", "metrics", tmp_path / "gen", "--reference", tmp_path / "ref", "--json", out) == 0
    printed = capsys.readouterr().out
    assert "scale_consistency" in printed and "skipped 1 file" in printed
    data = json.loads(out.read_text())
    assert data["n_reference"] == 6 and data["n_generated"] == 5
    assert data["features"]["scale_consistency"]["reference_mean"] == 1.0
    assert data["skipped"] == [{"file": "broken.mid", "reason": "truncated"}]
    # The per-piece numbers in the JSON are the library's.
    expected = score_metrics(tmp_path / "gen" / "p0.mid")
    assert data["generated_pieces"]["p0.mid"]["pitch_range"] == expected["pitch_range"]


def test_eval_metrics_user_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _write_set(tmp_path / "ref", [[(0, 480, 60, 80), (480, 480, 62, 80)]] * 2)
    for args, words in (
        ([str(tmp_path / "empty"), "--reference", str(tmp_path / "ref")], "no MIDI files"),
        ([str(tmp_path / "nope"), "--reference", str(tmp_path / "ref")], "no such file or folder"),
        ([str(tmp_path / "ref"), "--reference", str(tmp_path / "nope")], "no such file or folder"),
    ):
        assert cli("eval", "metrics", *args) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


def test_load_set_reads_a_prepared_corpus(tmp_path):
    from partita.data.prepare import prepare

    src = tmp_path / "midi"
    _write_set(src, [[(t * 480, 480, 60 + (t * k) % 12, 80) for t in range(8)] for k in range(1, 9)])
    prepare(src, tmp_path / "corpus", workers=1, test=0.25, valid=0.0)
    pieces = load_set(tmp_path / "corpus", split="all")
    assert len(pieces) == 8
    # The corpus path gives the same numbers as reading the MIDI files.
    by_file = {p.stem: score_metrics(p) for p in src.glob("*.mid")}
    for name, m in zip(pieces.names, pieces.metrics):
        stem = next(s for s in by_file if s in name)
        assert m["pitch_class_entropy"] == pytest.approx(by_file[stem]["pitch_class_entropy"])
        assert m["groove_consistency"] == pytest.approx(by_file[stem]["groove_consistency"])
    with pytest.raises(PartitaError, match="no pieces in split"):
        load_set(tmp_path / "corpus", split="nonsense")
