"""Training the GPT: streams, schedule, interrupt + resume equal to an uninterrupted run, DDP."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from partita.data.prepare import prepare
from partita.train.common import warmup_cosine
from partita.train.gpt import train_gpt
from partita.data.streams import IGNORE, SongStream
from conftest import FIXTURES, FakeStreams, labelled_folder, tokenize


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request):
    fixtures = FIXTURES
    root = tmp_path_factory.mktemp("train") / "midi"
    labelled_folder(root, {
        "Pop": sorted((fixtures / "multitrack").glob("POP909_*.mid"))[:3],
        "Piano": sorted((fixtures / "performance").glob("Maestro_[134].mid")),
    })
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.34, test=0.34)
    return tokenize(out)


def test_stream_predicts_every_token_once_and_flags_song_starts():
    streams = FakeStreams([10, 3, 7])
    s = SongStream(streams, [0, 1, 2], [900, 901, 902], batch_size=1, seq_len=4, loop=False, shuffle=False)
    batches = list(s)
    targets = [t for b in batches for t in b["targets"][0].tolist() if t != IGNORE]
    expected = [t for d in streams.data for t in d[1:].tolist()]
    assert targets == expected
    starts = [bool(b["reset"][0]) for b in batches]
    assert starts == [True, False, False, True, True, False]  # 10 tokens: 3 segments, 3: 1, 7: 2
    assert all(int(b["ids"][0, 0]) in (900, 901, 902) for b in batches)
    # input t is followed by target t+1 within a segment
    b = batches[0]
    assert b["ids"][0, 1:].tolist() == [0, 1, 2] and b["targets"][0, 1:].tolist() == [1, 2, 3]


def test_stream_skip_equals_playing():
    streams = FakeStreams([10, 3, 7, 12, 5])
    make = lambda: SongStream(streams, [0, 1, 2, 3, 4], [1, 2, 3, 4, 5], batch_size=2, seq_len=3, seed=4)
    a = make()
    played = [next(a) for _ in range(9)]
    b = make()
    b.skip(6)
    for x, y in zip(played[6:], [next(b) for _ in range(3)]):
        assert torch.equal(x["ids"], y["ids"]) and torch.equal(x["reset"], y["reset"])


def test_stream_shards_rows_across_ranks():
    streams = FakeStreams([5] * 8)
    seen = []
    for rank in range(2):
        s = SongStream(streams, list(range(8)), [0] * 8, batch_size=2, seq_len=8, loop=False, rank=rank, world_size=2)
        seen += [int(b["ids"][r, 1]) for b in s for r in range(2) if b["piece"][r] >= 0]
    assert sorted(seen) == sorted(1000 * i for i in range(8))


def test_warmup_cosine():
    assert warmup_cosine(0, warmup=10, total=100) == pytest.approx(0.1)
    assert warmup_cosine(9, warmup=10, total=100) == pytest.approx(1.0)
    assert warmup_cosine(100, warmup=10, total=100, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(55, warmup=10, total=100, min_ratio=0.0) == pytest.approx(0.5)


def test_warmup_cosine_as_a_fraction_of_the_run():
    """Warmup and decay in shares of the run: by steps, or by the time budget when it ends first."""
    f = dict(warmup=10_000, total=100, min_ratio=0.0, warmup_fraction=0.1)  # the step count is not used
    assert warmup_cosine(0, **f) == pytest.approx(0.1)
    assert warmup_cosine(9, **f) == pytest.approx(1.0)
    assert warmup_cosine(54, **f) == pytest.approx(0.5)  # halfway through the decay (55% of the run)
    assert warmup_cosine(99, **f) == pytest.approx(0.0)
    # a 2000-step run whose clock ends first: 5% of the time is half the warmup, 55% half the decay
    t = dict(warmup=100, total=2000, min_ratio=0.0, warmup_fraction=0.1)
    assert warmup_cosine(3, time_fraction=0.05, **t) == pytest.approx(0.5)
    assert warmup_cosine(30, time_fraction=0.55, **t) == pytest.approx(0.5)
    assert warmup_cosine(30, time_fraction=1.0, **t) == pytest.approx(0.0)
    assert warmup_cosine(5, time_fraction=0.3, warmup=0, total=100, min_ratio=0.0, warmup_fraction=0.0) == \
        pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_run_config_warmup_fraction_drives_the_scheduler():
    """``--warmup-fraction`` reaches the optimizer's schedule: 20% of a 10-step run is 2 steps."""
    from types import SimpleNamespace

    from partita.train.common import RunConfig, warmup_cosine_optimizer

    config = RunConfig(max_steps=10, lr=1.0, warmup=100, warmup_fraction=0.2, min_lr_ratio=0.0).with_defaults()
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=1.0)
    sched = warmup_cosine_optimizer(opt, SimpleNamespace(run_config=config))["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_warmup_fraction_out_of_range_is_an_error(value):
    from partita.errors import PartitaError
    from partita.train.common import RunConfig

    with pytest.raises(PartitaError, match="--warmup-fraction"):
        RunConfig(warmup_fraction=value).with_defaults()


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


ARGS = dict(preset="tiny", overrides={"xl_memory": True, "dropout": 0.1}, batch_size=2, seq_len=32, max_steps=8,
            val_every=4, checkpoint_every=100, warmup=2, progress=False)


def test_interrupted_and_resumed_equals_uninterrupted(corpus, tmp_path):
    card = train_gpt(corpus, tmp_path / "a", **ARGS)
    assert card["steps"] == 8 and np.isfinite(card["metrics"]["valid"]["val/bits_per_note"])
    with pytest.raises(KeyboardInterrupt):
        train_gpt(corpus, tmp_path / "b", callbacks=[StopAt(5)], **ARGS)
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
    train_gpt(corpus, tmp_path / "b", resume=True, **ARGS)
    a = load_file(tmp_path / "a" / "bundle" / "model.safetensors")
    b = load_file(tmp_path / "b" / "bundle" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_loss_falls(corpus, tmp_path):
    args = {**ARGS, "max_steps": 40, "overrides": {}, "val_every": 40}
    card = train_gpt(corpus, tmp_path / "run", lr=3e-3, **args)
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "run" / "logs").glob("csv-*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0] - 1.0
    assert card["labels"] == ["Piano", "Pop"]


def test_refuses_to_overwrite_or_resume_nothing(corpus, tmp_path):
    from partita.errors import PartitaError

    with pytest.raises(PartitaError, match="nothing to resume"):
        train_gpt(corpus, tmp_path / "x", resume=True, **ARGS)


def test_ddp_with_two_cpu_processes(corpus, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "partita", "train", "gpt", "--data", str(corpus), "--out", str(tmp_path / "ddp"),
         "--preset", "tiny", "--max-steps", "4", "--val-every", "4", "-b", "1", "--seq-len", "32",
         "--devices", "2", "--strategy", "ddp", "--warmup", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "bundle" / "model.safetensors").exists()
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr  # a second process trained


def test_finite_stream_with_fewer_pieces_than_rows_plays_each_once():
    streams = FakeStreams([5, 9])
    s = SongStream(streams, [0, 1], [7, 8], batch_size=4, seq_len=4, loop=False, shuffle=False)
    targets = sorted(t for b in s for t in b["targets"].flatten().tolist() if t != IGNORE)
    assert targets == sorted(t for d in streams.data for t in d[1:].tolist())


def test_eval_gpt_reports_transformer_with_and_without_memory_and_ngram(corpus, tmp_path):
    from partita.evaluate.gpt import evaluate_gpt

    train_gpt(corpus, tmp_path / "run", **{**ARGS, "max_steps": 4})
    calls = []
    results = evaluate_gpt(tmp_path / "run" / "bundle", corpus, split="test", orders=(1, 2),
                           progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 3 and calls[-1][0] == calls[-1][1]  # progress through the passes, to the end
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    names = [k for k, v in results.items() if isinstance(v, dict)]
    assert names[:2] == ["transformer, no memory", "transformer, with memory"]
    assert any("gram" in n for n in names)
    for n in names:
        assert np.isfinite(results[n]["bits_per_token"]) and results[n]["bits_per_note"] > 0
    assert results["transformer, no memory"]["bits_per_token"] != results["transformer, with memory"]["bits_per_token"]
