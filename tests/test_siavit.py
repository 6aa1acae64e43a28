"""The SiaViT embedder: the rolled wraparound convolution, the model, piece embeddings, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_score
from partita.bundle import load_bundle, save_bundle
from partita.errors import PartitaError
from partita.io.midi import NOTE_DTYPE, note_array
from partita.models.siavit import PRESETS, SiaViT, SiaViTConfig
from partita.nn.wraparound import WraparoundConv3d, helix_index, roll_helix
from partita.search.embed import embed_files, embed_notes, window_starts


def notes_of(pitches, step=0.25, dur=0.5, start=0.0):
    out = np.zeros(len(pitches), NOTE_DTYPE)
    out["onset"] = start + step * np.arange(len(pitches))
    out["duration"] = dur
    out["pitch"] = pitches
    out["velocity"] = 80
    return out


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SiaViT(SiaViTConfig.tiny()).eval()


# --- the wraparound convolution ----------------------------------------------------------------


def test_helix_padding_continues_into_the_next_octave():
    index, valid = helix_index(1, 1)
    assert index.shape == (14, 8) and bool(valid.all())
    # padded cell (a, b) is pitch class a - 1 of octave b - 1; chromatic note = octave * 12 + pc
    assert int(index[12 + 1, 0 + 1]) == 1 * 12 + 0  # one above E (pc 11) of octave 0: F of octave 1
    assert int(index[-1 + 1, 3 + 1]) == 2 * 12 + 11  # one below F of octave 3: E of octave 2
    assert int(index[0 + 1, 6 + 1]) == 0  # above the top octave: the helix closes
    # Harmonixr's plain pad wraps within the octave instead
    index_p, _ = helix_index(1, 1, "pitch")
    assert int(index_p[12 + 1, 0 + 1]) == 0 * 12 + 0


@pytest.mark.parametrize("kernel", [(3, 3, 3), (5, 3, 1), (3, 1, 5)])
def test_rolling_one_semitone_along_the_helix_rolls_the_output(kernel):
    torch.manual_seed(1)
    conv = WraparoundConv3d(2, 3, kernel)
    x = torch.rand(2, 2, 12, 6, 9)
    for k in (1, -1, 13):
        torch.testing.assert_close(conv(roll_helix(x, k)), roll_helix(conv(x), k), rtol=1e-5, atol=1e-5)
    assert conv(x).shape == (2, 3, 12, 6, 9)


def test_a_plain_circular_pad_is_not_equivariant():
    torch.manual_seed(2)
    conv = WraparoundConv3d(1, 2, 3, wrap="pitch")
    x = torch.rand(1, 1, 12, 6, 5)
    assert not torch.allclose(conv(roll_helix(x, 1)), roll_helix(conv(x), 1), atol=1e-3)


def test_roll_helix_is_transposition_of_the_pianoroll():
    from partita.represent.pianoroll import pianoroll

    notes = notes_of([40, 47, 52, 60])
    up = notes.copy()
    up["pitch"] += 1
    a = torch.from_numpy(pianoroll(notes))
    b = torch.from_numpy(pianoroll(up))
    assert torch.equal(roll_helix(a, 1), b)


# --- the model -----------------------------------------------------------------------------------


def test_forward_gives_unit_vectors_for_any_window_length(tiny):
    for frames in (1, 7, 32, 50):
        y = tiny(torch.rand(3, 12, 6, frames))
        assert y.shape == (3, tiny.config.dim)
        torch.testing.assert_close(y.norm(dim=-1), torch.ones(3))


def test_same_input_same_embedding_and_batch_independent(tiny):
    x = torch.rand(4, 12, 6, 32)
    a, b = tiny(x), tiny(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(tiny(x[1:2]), a[1:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
def test_position_kinds_and_presets_build(positions):
    m = SiaViT(SiaViTConfig.tiny(positions=positions, head_hidden=[8], norm="batch", wrap="zeros")).eval()
    assert m(torch.rand(2, 12, 6, 16)).shape == (2, 16)
    assert {"tiny", "small", "base", "harmonixr"} <= set(PRESETS)
    assert SiaViTConfig.small().dim == 128 and PRESETS["harmonixr"].positions == "none"


def test_rope_makes_order_matter_and_none_does_not():
    torch.manual_seed(3)
    x = torch.rand(1, 12, 6, 32)
    # swap the two halves of the window: patch contents equal, order different
    swapped = torch.cat([x[..., 16:], x[..., :16]], dim=-1)
    cfg = dict(channels=[2], patch_frames=16, stem_stride=1, kernel=[1, 1, 1], stem_kernel=[1, 1, 1], conv_dropout=0.0)
    none = SiaViT(SiaViTConfig.tiny(positions="none", **cfg)).eval()
    torch.testing.assert_close(none(x), none(swapped), rtol=1e-4, atol=1e-5)
    rope = SiaViT(SiaViTConfig.tiny(positions="rope", **cfg)).eval()
    rope.load_state_dict(none.state_dict())
    assert not torch.allclose(rope(x), rope(swapped), atol=1e-6)


def test_config_round_trip_and_errors():
    c = SiaViTConfig.small(window_seconds=60.0)
    assert SiaViTConfig.from_dict(c.to_dict()) == c and c.window_frames == 300
    with pytest.raises(PartitaError, match="unknown SiaViT config"):
        SiaViTConfig.from_dict({**c.to_dict(), "bogus": 1})
    with pytest.raises(PartitaError, match="unknown SiaViT preset"):
        SiaViTConfig.preset("huge")
    with pytest.raises(PartitaError, match="odd"):
        SiaViTConfig.tiny(kernel=[2, 3, 3])
    with pytest.raises(PartitaError, match="pianorolls"):
        SiaViT(SiaViTConfig.tiny())(torch.rand(2, 72, 10))


def test_bundle_round_trip_keeps_embeddings(tiny, tmp_path):
    save_bundle(tiny, tmp_path / "b", card={"labels": ["A", "B"]})
    b = load_bundle(tmp_path / "b")
    assert b.family == "siavit" and b.config == tiny.config
    x = torch.rand(2, 12, 6, 32)
    torch.testing.assert_close(b.model(x), tiny(x))


# --- piece embeddings ----------------------------------------------------------------------------


def test_window_starts_spread_over_the_piece():
    notes = notes_of(np.arange(40, 80), step=1.0, dur=1.0, start=3.0)  # 3 s .. 43 s
    s = window_starts(notes, frame_seconds=0.25, window_seconds=8.0, windows=5)
    assert s[0] == 12 and s[-1] == (43 - 8) * 4 and len(s) == 5 and np.all(np.diff(s) > 0)
    short = window_starts(notes_of([60, 62]), frame_seconds=0.25, window_seconds=8.0, windows=5)
    assert short.tolist() == [0]  # one padded window


def test_embed_notes_is_deterministic_normalised_and_batch_size_free(tiny):
    pieces = [notes_of(np.arange(48, 72)), notes_of([60, 64, 67] * 30, step=0.5), notes_of([30, 90])]
    a = embed_notes(tiny, pieces, windows=4, batch_size=3)
    b = embed_notes(tiny, pieces, windows=4, batch_size=32, seed=5)
    assert a.shape == (3, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0], a[1])
    # drums are not pitched notes
    drums = notes_of([36, 38, 42])
    drums["is_drum"] = True
    with pytest.raises(PartitaError, match="no pitched notes"):
        embed_notes(tiny, [pieces[0], drums])
    with pytest.raises(PartitaError, match="no pitched notes"):
        embed_notes(tiny, [np.zeros(0, NOTE_DTYPE)])


def test_embed_files_skips_bad_files_with_one_line_reasons(tiny, fixtures, tmp_path):
    score = make_score([(i * 240, 240, 60 + i % 12, 90) for i in range(64)])
    good = tmp_path / "good.mid"
    score.dump_midi(str(good))
    drums = tmp_path / "drums.mid"
    make_score([(i * 240, 120, 36, 100) for i in range(8)], is_drum=True).dump_midi(str(drums))
    corrupt = tmp_path / "corrupt.mid"
    corrupt.write_bytes(good.read_bytes()[:40])
    paths = [good, fixtures / "edge" / "empty.mid", corrupt, tmp_path / "missing.mid", drums,
             fixtures / "performance" / "Maestro_1.mid"]
    vectors, kept, failures = embed_files(tiny, paths, windows=2)
    assert kept == [good, fixtures / "performance" / "Maestro_1.mid"] and vectors.shape == (2, 16)
    assert [p for p, _ in failures] == paths[1:5]
    for path, reason in failures:
        assert "\n" not in reason and str(path) in reason
    reasons = dict(failures)
    assert "empty" in reasons[paths[1]]
    assert "truncated" in reasons[corrupt] or "corrupt" in reasons[corrupt]
    assert "no such file" in reasons[paths[3]] and "no pitched notes" in reasons[drums]
    # the file's vector equals embedding its notes directly
    direct = embed_notes(tiny, [note_array(score, unit="second")], windows=2)
    np.testing.assert_allclose(vectors[0], direct[0], rtol=1e-5, atol=1e-6)


def test_wrong_family_is_refused(tmp_path):
    from partita.models.gpt import GPT, GPTConfig

    save_bundle(GPT(GPTConfig.preset("tiny")), tmp_path / "gpt")
    with pytest.raises(PartitaError, match="not a siavit or featnet one"):
        embed_notes(tmp_path / "gpt", [notes_of([60, 62])])


@pytest.mark.parametrize("args, expected", [
    (["eval", "embedder", "--data", "{tmp}/nope"], "not a prepared corpus"),
    (["eval", "embedder", "--data", "{tmp}", "--compare", "x"], "NAME=BUNDLE"),
    (["train", "embedder", "--data", "{tmp}/nope", "--out", "{tmp}/run"], "not a prepared corpus"),
    (["train", "embedder", "--data", "{tmp}", "--window-seconds", "0"], "--window-seconds"),
])
def test_cli_errors_are_one_line(args, expected, tmp_path, capsys):
    from partita.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1 and expected in lines[0], lines
