"""The MusicVAE commands: train vae, eval vae, vae reconstruct | sample | interpolate, and the shipped bundles."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from partita.cli import main
from partita.io.midi import load
from partita.represent.melody import score_to_events
from conftest import FIXTURES, labelled_folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request):
    from partita.data.prepare import prepare

    fixtures = FIXTURES
    root = tmp_path_factory.mktemp("vaecli") / "midi"
    labelled_folder(root, {
        "Pop": sorted((fixtures / "multitrack").glob("POP909_*.mid")),
        "Edge": [fixtures / "edge" / f"{n}.mid" for n in ("fur-elise", "pitches", "key-signatures", "durations",
                                                          "time-signatures")],
    })
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.34, test=0.34)
    return out


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("vaerun") / "run"
    main(["train", "vae", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--max-steps", "12",
          "-b", "8", "--val-every", "6", "--checkpoint-every", "6", "--seed", "1"])
    return out


def _one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_train_vae_writes_a_bundle_and_refuses_to_overwrite(run, corpus, capsys):
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["family"] == "musicvae" and card["bars"] == 2 and card["decoder"] == "flat"
    assert card["steps"] == 12 and card["windows"]["train"] > 0
    assert card["command"].startswith("partita ")  # in-process: sys.argv is pytest's
    assert (run / "checkpoints" / "last.ckpt").exists() and "val/accuracy" in card["metrics"]["valid"]
    # training flushed denormal floats to zero for its run only: the process's floats are whole again
    import torch

    assert torch.tensor(1e-40, dtype=torch.float32).item() != 0.0 and (torch.tensor(1e-38) / 1e3).item() != 0.0
    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--data", str(corpus), "--out", str(run), "--preset", "tiny"])
    assert e.value.code == 2 and "already holds a training run" in _one_line(capsys)
    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--data", str(corpus), "--out", str(run / "x"), "--labels", "Jazz"])
    assert e.value.code == 2 and "label 'Jazz' is not in" in _one_line(capsys)


def test_eval_vae_reports_models_baselines_and_interpolation(run, corpus, tmp_path):
    from partita.represent.melody import corpus_windows
    from partita.data.corpus import Corpus

    out = tmp_path / "eval.json"
    main(["eval", "vae", "--model", str(run / "bundle"), "--data", str(corpus), "--pairs", "3", "--steps", "3",
          "--json", str(out)])
    r = json.loads(out.read_text())
    test, _ = corpus_windows(Corpus(corpus), "test", 2)
    assert r["split"] == "test" and r["windows"]["2"]["test"] == len(test) > 0
    (m,) = r["models"]
    assert m["decoder"] == "flat" and 0 <= m["sampled"]["accuracy"] <= 1 and m["kl_nats"] >= 0
    assert {b["name"] for b in r["baselines"]} == {"majority class per step", "bigram next event"}
    assert len(m["sampled_by_bar"]) == 2 and 0 <= m["sampled_other_code"]["accuracy"] <= 1
    assert 0 <= m["kl_dims_over_0.1_nats"] <= 16 and m["kl_largest_dim_nats"] <= m["kl_nats"] + 1e-9
    ps = m["prior_samples"]
    assert ps["n"] == 100 and 0 <= ps["within_real_statistics"] <= min(ps["within_by_statistic"].values()) <= 1
    assert ps["notes_per_bar"] >= 0 and ps["real_notes_per_bar"] > 0
    latent, data = r["interpolation"]
    assert latent["kind"] == "latent slerp" and data["kind"] == "data crossfade"
    assert len(latent["distance_to_a"]) == len(latent["musical"]) == 5
    # The crossfade starts exactly at A and ends exactly at B.
    assert data["distance_to_a"][0] == 0 and data["distance_to_b"][-1] == 0
    assert data["endpoint_accuracy"] == 1.0 and data["endpoint_pitch_agreement"] == 1.0
    assert 0 < data["change_per_step"] <= data["largest_step"] <= 1
    assert 0 <= latent["endpoint_accuracy"] <= 1 and latent["change_per_step"] >= 0


def test_train_vae_holdout_keeps_another_corpus_test_windows_out(corpus, tmp_path):
    from partita.data.corpus import Corpus
    from partita.represent.melody import corpus_windows

    out = tmp_path / "run"
    main(["train", "vae", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--max-steps", "2",
          "-b", "4", "--val-every", "2", "--holdout", str(corpus)])
    card = json.loads((out / "bundle" / "card.json").read_text())
    train, _ = corpus_windows(Corpus(corpus), "train", 2)
    held = card["holdout"]
    assert set(held) == {f"{Corpus(corpus).path}:valid", f"{Corpus(corpus).path}:test"}
    assert card["windows"]["train"] == len(train) - sum(h["dropped_from_train"] for h in held.values())


def test_train_vae_on_the_codes_of_a_short_window_model(run, corpus, tmp_path, capsys):
    import torch

    import partita

    out = tmp_path / "seg"
    main(["train", "vae", "--data", str(corpus), "--out", str(out), "--bars", "4", "--segments", str(run / "bundle"),
          "--preset", "tiny", "--max-steps", "4", "-b", "4", "--val-every", "4", "--seed", "1", "--set", "prior_components=2"])
    card = json.loads((out / "bundle" / "card.json").read_text())
    assert card["decoder"] == "hierarchical" and card["segments"] == str(run / "bundle")
    assert card["prior"]["components"] == 2 and card["prior"]["windows"] == card["windows"]["train"]
    model, short = partita.load(out / "bundle").model, partita.load(run / "bundle").model
    assert (model.config.segment_bars, model.config.units) == (2, 2)
    # The segment model stayed as trained (frozen); the bundle holds it, so it loads on its own.
    assert all(torch.equal(a, b) for a, b in zip(model.segment.state_dict().values(), short.state_dict().values()))
    assert "val/accuracy" in card["metrics"]["valid"]
    r = tmp_path / "eval.json"
    main(["eval", "vae", "--model", str(out / "bundle"), "--data", str(corpus), "--pairs", "2", "--steps", "1",
          "--json", str(r)])
    (m,) = json.loads(r.read_text())["models"]
    assert len(m["sampled_by_bar"]) == 4 and 0 <= m["sampled"]["accuracy"] <= 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--data", str(corpus), "--out", str(tmp_path / "x"), "--bars", "8", "--segments",
              str(out / "bundle"), "--preset", "tiny"])
    assert e.value.code == 2 and "flat short-window MusicVAE" in _one_line(capsys)


def test_vae_commands_write_readable_midi(run, tmp_path, request):
    bundle = str(run / "bundle")
    fixtures = FIXTURES
    a, b = fixtures / "edge" / "fur-elise.mid", fixtures / "edge" / "pitches.mid"
    out = tmp_path / "o"
    main(["vae", "reconstruct", str(a), "--model", bundle, "--out", str(out), "--max-windows", "2",
          "--json", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    rec = score_to_events(load(r["files"]["reconstruction"]))
    assert len(rec) == 64 and r["windows"] == 2 and 0 <= r["accuracy"] <= 1
    main(["vae", "interpolate", str(a), str(b), "--model", bundle, "--steps", "4", "--out", str(out)])
    files = sorted(out.glob("interpolation-*.mid"))
    assert len(files) == 6 and all(len(score_to_events(load(f))) == 32 for f in files)
    main(["vae", "sample", "-n", "3", "--model", bundle, "--out", str(out), "--seed", "2"])
    first = [score_to_events(load(f)) for f in sorted(out.glob("sample-*.mid"))]
    main(["vae", "sample", "-n", "3", "--model", bundle, "--out", str(tmp_path / "again"), "--seed", "2"])
    again = [score_to_events(load(f)) for f in sorted((tmp_path / "again").glob("sample-*.mid"))]
    assert len(first) == 3 and all(np.array_equal(x, y) for x, y in zip(first, again))


def test_vae_mistakes_are_one_line(run, tmp_path, capsys, request):
    from partita.pretrained import bundle_path

    bundle = str(run / "bundle")
    edge = FIXTURES / "edge"
    for args, expected in [
        (["vae", "sample", "--model", bundle, "--composer", "Bach"], "--composer needs a composer-conditioned tvae"),
        (["vae", "reconstruct", str(edge / "fur-elise.mid"), "--model", str(bundle_path())], "a gpt bundle, not a musicvae one"),
        (["vae", "interpolate", str(edge / "fur-elise.mid"), str(edge / "tempos.mid"), "--model", bundle], "no melody"),
        (["vae", "sample", "--model", str(tmp_path / "nope")], "no such bundle folder"),
        (["vae", "sample", "--bars", "4"], "ships 2-bar and 16-bar"),
    ]:
        with pytest.raises(SystemExit) as e:
            main([*args, "--out", str(tmp_path / "o")])
        assert e.value.code == 2
        assert expected in _one_line(capsys)
    # In a fresh process too: one line on stderr, no traceback.
    proc = subprocess.run([sys.executable, "-m", "partita", "vae", "reconstruct", str(edge / "multitrack.mid"),
                           "--model", bundle, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "no melody to extract" in lines[0], proc.stderr


@pytest.mark.parametrize("name, bars, decoder", [("musicvae-2bar", 2, "flat"), ("musicvae-16bar", 16, "hierarchical"),
                                                 ("musicvae-16bar-flat", 16, "flat")])
def test_shipped_musicvae_bundles(name, bars, decoder, tmp_path):
    import partita
    from partita.generation.vae import sample
    from partita.pretrained import bundle_path

    path = bundle_path(name)
    assert sum(f.stat().st_size for f in path.iterdir()) <= 8 * 2**20
    bundle = partita.load(path)
    c = bundle.model.config
    assert (c.bars, c.decoder) == (bars, decoder)
    card = bundle.card
    assert card["command"].startswith("partita train vae") and card["metrics"]["test"]["split"] == "test"
    assert card["metrics"]["test"]["teacher_forced"]["accuracy"] > card["metrics"]["test"]["baseline_bigram"]["accuracy"]
    melodies = sample(None if decoder == "hierarchical" or bars == 2 else path, n=2, seed=0, bars=bars)
    assert all(len(m) == bars * 16 and m.n_notes > 0 for m in melodies)  # without a model: the default for the length


def test_vae_sample_with_a_tvae_bundle_takes_a_composer(tmp_path):
    from partita.pretrained import ROOT

    tvae = ROOT / "tvae-small"
    if not (tvae / "config.json").exists():
        pytest.skip("no shipped tvae bundle in this tree")
    main(["vae", "sample", "--model", str(tvae), "--composer", "Bach", "-n", "2", "--seed", "1", "--out", str(tmp_path)])
    files = sorted(tmp_path.glob("sample-*.mid"))
    assert len(files) == 2 and all(load(f).note_num() > 0 for f in files)
