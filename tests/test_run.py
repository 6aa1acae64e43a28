"""One training run for every family (partita.train.common): RunConfig, time budgets, the best
checkpoint, Ctrl-C / SIGTERM -> bundle + exit 130, --resume after it, progress lines, and
commands that never change a corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, labelled_folder, tokenize
from safetensors.torch import load_file

import partita
from partita.data.prepare import prepare
from partita.errors import PartitaError
from partita.train.common import BestWeights, RunConfig, StopOnSignal, TimeBudget, parse_duration


@pytest.fixture(scope="module")
def raw_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "midi"
    labelled_folder(root, {
        "Pop": sorted((FIXTURES / "multitrack").glob("POP909_*.mid"))[:3],
        "Piano": sorted((FIXTURES / "performance").glob("Maestro_[134].mid")),
    })
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.34, test=0.34)
    return out


@pytest.fixture(scope="module")
def corpus(raw_corpus, tmp_path_factory):
    import shutil

    out = tmp_path_factory.mktemp("tok") / "corpus"
    shutil.copytree(raw_corpus, out)
    return tokenize(out)


SHIPPED_GPT = str(Path(partita.__file__).parent / "pretrained" / "gpt-small")
TINY = ["--preset", "tiny", "-b", "2", "--seq-len", "32"]


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400
    for bad in ("", "abc", "3x", "1h30", "-5m"):
        with pytest.raises(PartitaError, match="duration"):
            parse_duration(bad)


def test_run_config_takes_family_defaults_then_common_ones():
    r = RunConfig(lr=0.5).with_defaults(lr=0.1, batch_size=7)
    assert r.lr == 0.5 and r.batch_size == 7 and r.max_steps == 2000 and r.seed == 0
    assert RunConfig(progress=False).progress == "none"
    with pytest.raises(PartitaError, match="--max-steps"):
        RunConfig(max_steps=0).with_defaults()
    with pytest.raises(TypeError, match="run options are"):
        RunConfig.from_options(max_stepz=3)


class _Trainer:
    sanity_checking = False
    is_global_zero = True

    def __init__(self):
        self.callback_metrics, self.global_step = {}, 0


def test_best_weights_keeps_the_best_validation_and_survives_a_resume(tmp_path):
    module = torch.nn.Module()
    module.model = torch.nn.Linear(3, 2)
    trainer, best = _Trainer(), BestWeights(tmp_path, "val/loss", "min")
    snapshots = {}
    for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5), (40, float("nan"))):
        with torch.no_grad():
            module.model.weight.fill_(step)
        snapshots[step] = module.model.weight.clone()
        trainer.global_step, trainer.callback_metrics = step, {"val/loss": torch.tensor(loss), "val/acc": torch.tensor(0.5)}
        best.on_validation_end(trainer, module)
    assert best.best_step == 20 and best.best_value == 2.0 and best.last_validated_step == 40
    assert torch.equal(best.weights["weight"], snapshots[20])
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 20
    again = BestWeights(tmp_path, "val/loss", "min")
    again.load_state_dict(best.state_dict())
    assert again.best_step == 20 and torch.equal(again.weights["weight"], snapshots[20])
    highest = BestWeights(tmp_path / "h", "val/acc", "max")
    for step, acc in ((1, 0.2), (2, 0.9), (3, 0.4)):
        trainer.global_step, trainer.callback_metrics = step, {"val/acc": torch.tensor(acc)}
        highest.on_validation_end(trainer, module)
    assert highest.best_step == 2


def test_bundle_holds_the_best_checkpoint_and_the_card_says_which(corpus, tmp_path):
    from partita.train.gpt import train_gpt

    card = train_gpt(corpus, tmp_path / "r", preset="tiny", batch_size=2, seq_len=32, max_steps=9, val_every=3,
                     lr=3e-2, warmup=1, progress="none")
    assert card["stopped"] == "max_steps" and card["steps"] == 9
    assert card["best_step"] in (3, 6, 9) and card["selected_by"] == "lowest val/loss"
    import csv

    logged = [(int(r["step"]), float(r["val/loss"])) for r in
              csv.DictReader(open(next((tmp_path / "r" / "logs").glob("csv-*/metrics.csv")))) if r.get("val/loss")]
    best_logged = min(logged, key=lambda x: x[1])
    assert card["metrics"]["valid"]["val/loss"] == pytest.approx(best_logged[1])
    bundle = load_file(tmp_path / "r" / "bundle" / "model.safetensors")
    best = load_file(tmp_path / "r" / "checkpoints" / "best.safetensors")
    for k, v in bundle.items():
        torch.testing.assert_close(v, best[k].float())
    assert json.loads((tmp_path / "r" / "card.json").read_text())["best_step"] == card["best_step"]


def test_time_budget_ends_the_run_cleanly_with_a_bundle(corpus, tmp_path):
    from partita.train.gpt import train_gpt

    card = train_gpt(corpus, tmp_path / "t", preset="tiny", batch_size=2, seq_len=32, max_steps=10**6, val_every=5,
                     max_time=1.0, progress="none")
    assert card["stopped"] == "max_time" and 0 < card["steps"] < 10**6
    assert card["best_step"] is not None and card["run"]["max_time"] == 1.0
    assert (tmp_path / "t" / "bundle" / "model.safetensors").exists()
    assert (tmp_path / "t" / "checkpoints" / "last.ckpt").exists()


def _start(args, out_file):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "partita", *args], stdout=out_file, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for_line(path, needle, proc, limit=300.0):
    """Wait until the run has printed ``needle`` (bounded; fails if the process ends first)."""
    waited = 0.0
    while waited < limit:
        if needle in path.read_text():
            return
        assert proc.poll() is None, path.read_text()
        time.sleep(0.2)
        waited += 0.2
    pytest.fail(f"no {needle!r} in the output: {path.read_text()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_the_bundle_exits_130_and_resume_goes_on(corpus, tmp_path, sig):
    run = tmp_path / "run"
    log = tmp_path / "stdout.txt"
    with open(log, "w") as out:
        proc = _start(["train", "gpt", "--data", str(corpus), "--out", str(run), *TINY, "--max-steps", "100000",
                       "--val-every", "3", "--log-every", "0"], out)
        _wait_for_line(log, "val/loss", proc)  # a validation happened: there is a best checkpoint
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted at step ") and "bundle written from the best checkpoint" in lines[-1]
    assert all("Tip" not in line and "💡" not in line for line in lines + log.read_text().splitlines())
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["stopped"] == "interrupted" and card["best_step"] is not None
    assert "training gpt (" in log.read_text() and " on the CPU (" in log.read_text()  # what it trains on
    printed = [line for line in log.read_text().splitlines() if line.startswith("step ")]
    assert printed and all("tokens/s" in line and "ETA" in line for line in printed)

    steps = card["steps"]
    proc = subprocess.run([sys.executable, "-m", "partita", "train", "gpt", "--data", str(corpus), "--out", str(run),
                           "--max-steps", str(steps + 3), "--resume", "--override", "--progress", "none"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "bundle" / "card.json").read_text())["steps"] == steps + 3


@pytest.mark.parametrize("command", [["train", "gpt"], ["train", "classifier", "--min-pieces", "1"],
                                     ["train", "tvae", "--min-pieces", "1"], ["eval", "gpt", "--model", SHIPPED_GPT]])
def test_commands_never_tokenise_a_corpus_behind_the_users_back(raw_corpus, tmp_path, command):
    proc = subprocess.run([sys.executable, "-m", "partita", *command, "--data", str(raw_corpus),
                           *(["--out", str(tmp_path / "o")] if command[0] == "train" else [])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "partita data tokenize" in lines[0], proc.stderr
    assert not (raw_corpus / "tokens").exists()


@pytest.mark.parametrize("family", ["gpt", "embedder", "featnet", "vae", "classifier", "tvae"])
def test_every_family_takes_every_run_option(family):
    from partita.cli.train import RUN_OPTIONS

    proc = subprocess.run([sys.executable, "-m", "partita", "train", family, "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0
    for _, _, option in RUN_OPTIONS:
        assert option.param_decls[0] in proc.stdout, (family, option.param_decls[0])


@pytest.fixture(scope="module")
def styles_corpus(tmp_path_factory):
    from test_classifier import build_corpus

    return build_corpus(tmp_path_factory.mktemp("styles"))


@pytest.mark.parametrize("family", ["classifier", "tvae", "embedder", "featnet", "vae"])
def test_every_family_stops_on_its_time_budget_with_the_best_bundle(styles_corpus, tmp_path, family):
    from partita.bundle import load_bundle
    from partita.train import classifier, embedder, featnet, tvae, vae

    train = {"classifier": classifier.train_classifier, "tvae": tvae.train_tvae, "embedder": embedder.train_embedder,
             "featnet": featnet.train_featnet, "vae": vae.train_vae}[family]
    extra = {"embedder": dict(labels_per_batch=2, per_label=2, val_windows=2), "vae": dict(bars=2),
             "featnet": dict(works_per_batch=2, per_work=2, crops=2, crop_seconds=(5.0, 10.0), workers=1),
             "classifier": dict(min_pieces=2, evaluate=False), "tvae": dict(min_pieces=2)}[family]
    card = train(styles_corpus, tmp_path / family, preset="tiny", max_steps=10**6, max_time=0.5, val_every=2,
                 batch_size=4, progress="none", **extra)
    assert card["stopped"] == "max_time" and card["best_step"] is not None
    assert load_bundle(tmp_path / family / "bundle").card["best_step"] == card["best_step"]


def test_resume_is_the_run_and_a_contradicting_option_is_an_error(corpus, tmp_path):
    from partita.train.gpt import train_gpt

    out = tmp_path / "r"
    card = train_gpt(corpus, out, preset="tiny", batch_size=2, seq_len=32, max_steps=4, val_every=2, lr=3e-2,
                     warmup=1, progress="none")
    assert card["tokens_seen"] == 4 * 2 * 32
    with pytest.raises(PartitaError, match=r"already ended at its --max-steps 4.*--override"):
        train_gpt(corpus, out, resume=True, progress="none")  # nothing left to do
    with pytest.raises(PartitaError, match=r"--batch-size 4 \(the run's: 2\).*--override"):
        train_gpt(corpus, out, resume=True, batch_size=4, max_steps=6, progress="none")
    with pytest.raises(PartitaError, match=r"--preset small \(the run's: tiny\).*keeps its model"):
        train_gpt(corpus, out, resume=True, preset="small", max_steps=6, override=True, progress="none")
    with pytest.raises(PartitaError, match=r"--set n_layer"):
        train_gpt(corpus, out, resume=True, overrides={"n_layer": 7}, max_steps=6, override=True, progress="none")
    with pytest.raises(PartitaError, match="--override .* with --resume"):
        train_gpt(corpus, tmp_path / "other", override=True, progress="none")
    # Only the new budget: the preset, batch, learning rate, schedule and sequence length come back.
    card = train_gpt(corpus, out, resume=True, max_steps=6, override=True, progress="none")
    assert card["steps"] == 6 and card["preset"] == "tiny"
    assert card["run"]["batch_size"] == 2 and card["run"]["lr"] == 3e-2 and card["run"]["warmup"] == 1
    assert card["tokens_seen"] == 6 * 2 * 32  # counted over both invocations, not recomputed from the new one
    saved = json.loads((out / "run.json").read_text())
    assert saved["state"] == {"steps": 6, "seconds": saved["state"]["seconds"], "stopped": "max_steps"}
    assert saved["family"]["seq_len"] == 32 and saved["run"]["max_steps"] == 6


def test_a_spent_time_budget_is_not_resumed_without_a_new_one(corpus, tmp_path):
    from partita.train.gpt import train_gpt

    out = tmp_path / "t"
    card = train_gpt(corpus, out, preset="tiny", batch_size=2, seq_len=32, max_steps=10**6, max_time=1.0,
                     val_every=5, progress="none")
    assert card["stopped"] == "max_time"
    with pytest.raises(PartitaError, match="spent its --max-time"):
        train_gpt(corpus, out, resume=True, progress="none")
    card2 = train_gpt(corpus, out, resume=True, max_time=card["train_seconds"] + 2.0, override=True, progress="none")
    assert card2["steps"] > card["steps"] and card2["stopped"] == "max_time"
    assert card2["train_seconds"] > card["train_seconds"]  # one clock over both invocations


def test_the_budget_keeps_time_for_the_final_validation():
    class Trainer:
        should_stop = False
        num_val_batches = []

    now = time.monotonic()
    roomy = TimeBudget(10.0, started=now - 2.0)  # 2 s spent
    roomy.validation_seconds = 5.0  # 8 s left hold a 5 s validation and the bundle: go on
    trainer = Trainer()
    roomy.on_train_batch_end(trainer)
    assert not trainer.should_stop and not roomy.stopped_by_time
    tight = TimeBudget(10.0, started=now - 4.5)  # 5.5 s left: not enough for 1.1 x 5 s + the bundle
    tight.validation_seconds = 5.0
    tight.on_train_batch_end(trainer)
    assert trainer.should_stop and tight.stopped_by_time
    unknown = TimeBudget(100.0, started=now)  # before the first validation: a share of the budget is kept
    assert 0 < unknown.reserve() < 100.0
    # before Lightning counts the validation batches, the module's loader says how many there are
    class Module:
        def val_dataloader(self):
            return [None] * 40

    class Counting:
        num_val_batches = []
        lightning_module = Module()

    counted = TimeBudget(600.0, started=now)
    counted.step_seconds = 2.0  # 40 batches of about half a 2 s step: 36 s, not 5% of the budget
    assert counted.reserve(Counting()) == pytest.approx(1.1 * 40 * 2.0 * TimeBudget.VAL_BATCH_PER_STEP
                                                        + TimeBudget.EXPORT_SECONDS)
    assert counted.reserve(Trainer()) == pytest.approx(1.1 * 30 + TimeBudget.EXPORT_SECONDS)
    again = TimeBudget(10.0)
    again.load_state_dict(tight.state_dict())
    assert again.elapsed() >= 4.5 and again.validation_seconds == 5.0  # resumed: the clock goes on


def test_a_signal_cuts_a_validation_short_and_it_chooses_nothing(tmp_path):
    class Trainer(_Trainer):
        should_stop = False

    trainer = Trainer()
    stop = StopOnSignal()
    stop.on_validation_batch_end(trainer)  # no signal: nothing happens
    stop.signal = "SIGINT"
    stop.on_validation_start(trainer, None)
    with pytest.raises(StopIteration):  # Lightning's evaluation loop ends on it
        stop.on_validation_batch_end(trainer)
    assert trainer.should_stop and stop.validation_cut
    module = torch.nn.Module()
    module.model = torch.nn.Linear(3, 2)
    best = BestWeights(tmp_path, "val/loss", "min", stop)
    trainer.global_step, trainer.callback_metrics = 7, {"val/loss": torch.tensor(0.1)}
    best.on_validation_end(trainer, module)  # the figures of a partial validation
    assert best.best_step is None and best.last_validated_step is None
    waits = StopOnSignal(validate_on_stop=True)
    waits.signal = "SIGTERM"
    waits.on_validation_batch_end(trainer)  # --validate-on-stop: the validation goes on
    assert not waits.validation_cut


def test_devices_as_lightning_takes_them():
    from partita.cli.train import parse_devices
    from partita.train.common import _accelerator_and_devices

    assert parse_devices("2") == 2 and parse_devices("0,1") == [0, 1] and parse_devices("1,") == [1]
    assert parse_devices("auto") == "auto" and parse_devices(None) is None
    with pytest.raises(PartitaError, match="--devices"):
        parse_devices("two")
    with pytest.raises(PartitaError, match="--accelerator"):
        RunConfig(accelerator="tpu").check()
    with pytest.raises(PartitaError, match="number of processes"):
        RunConfig(accelerator="cpu", devices=[0, 1]).check()
    assert _accelerator_and_devices(RunConfig(accelerator="cpu", devices=2)) == ("cpu", 2)
    if not torch.cuda.is_available():
        with pytest.raises(PartitaError, match="no GPU"):
            _accelerator_and_devices(RunConfig(accelerator="gpu"))
        with pytest.raises(PartitaError, match="no GPU"):
            _accelerator_and_devices(RunConfig(devices=[0]))


@pytest.mark.parametrize("family", ["classifier", "vae"])
def test_other_families_resume_with_their_preset_and_model(styles_corpus, tmp_path, family):
    from partita.train import classifier, vae

    train = {"classifier": classifier.train_classifier, "vae": vae.train_vae}[family]
    extra = {"classifier": dict(min_pieces=2, evaluate=False), "vae": dict(bars=2)}[family]
    out = tmp_path / family
    train(styles_corpus, out, preset="tiny", max_steps=2, val_every=2, batch_size=4, progress="none", **extra)
    with pytest.raises(PartitaError, match=r"--preset small \(the run's: tiny\)"):
        train(styles_corpus, out, preset="small", resume=True, max_steps=4, override=True, progress="none", **extra)
    card = train(styles_corpus, out, resume=True, max_steps=4, override=True, progress="none", **extra)
    assert card["steps"] == 4 and card["preset"] == "tiny" and card["run"]["batch_size"] == 4
