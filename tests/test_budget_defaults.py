"""Defaults of a run in a budget (issue 28, point 1): the preset chosen from the corpus and the
machine, run defaults per preset, warmup and cosine as shares of the run, a short run that
validates once, and the size of a validation known before the first one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, labelled_folder, tokenize

from partita.data.prepare import prepare
from partita.data.streams import SongStream
from partita.train.common import RunConfig, TimeBudget
from partita.train.gpt import (BASE_FROM_TOKENS, PRESET_RUN_DEFAULTS, RUN_DEFAULTS, TINY_BELOW_TOKENS,
                               choose_preset)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget") / "midi"
    labelled_folder(root, {"Pop": sorted((FIXTURES / "multitrack").glob("POP909_*.mid"))[:3]})
    out = root.parent / "corpus"
    prepare(root, out, workers=1, valid=0.34, test=0.0)
    return tokenize(out)


def test_the_preset_follows_the_corpus_and_the_machine():
    assert choose_preset(TINY_BELOW_TOKENS - 1, gpu=True)[0] == "tiny"
    assert choose_preset(TINY_BELOW_TOKENS, gpu=False)[0] == "small"
    name, why = choose_preset(BASE_FROM_TOKENS * 10, gpu=False)
    assert name == "small" and "CPU" in why and f"{BASE_FROM_TOKENS * 10:,}" in why
    name, why = choose_preset(10**6, gpu=False, max_time=600.0)  # minutes on a CPU: the model that makes more steps
    assert name == "mini" and "budget" in why
    assert choose_preset(10**6, gpu=False, max_time=2 * 3600.0)[0] == "small"
    assert choose_preset(10**6, gpu=True, max_time=600.0)[0] == "small"
    assert choose_preset(BASE_FROM_TOKENS, gpu=True)[0] == "base"
    assert choose_preset(BASE_FROM_TOKENS - 1, gpu=True)[0] == "small"


def test_the_mini_preset_is_between_tiny_and_small():
    import torch

    from partita.models.gpt import GPT, GPTConfig

    with torch.device("meta"):
        sizes = {name: GPT(GPTConfig.preset(name)).num_parameters() for name in ("tiny", "mini", "small")}
    assert sizes["tiny"] < sizes["mini"] < sizes["small"] / 2
    assert GPTConfig.preset("mini").context < GPTConfig.preset("small").context


def test_warmup_steps_given_replace_the_default_share():
    family = {**RUN_DEFAULTS, **PRESET_RUN_DEFAULTS["small"]}
    assert RunConfig().with_defaults(**family).warmup_fraction == PRESET_RUN_DEFAULTS["small"]["warmup_fraction"]
    steps = RunConfig(warmup=50).with_defaults(**family)
    assert steps.warmup == 50 and steps.warmup_fraction is None
    both = RunConfig(warmup=50, warmup_fraction=0.2).with_defaults(**family)
    assert both.warmup_fraction == 0.2


class _Streams:
    def __init__(self, lengths):
        self._pieces = [np.arange(n) for n in lengths]

    def piece(self, i):
        return self._pieces[i]

    bars = positions = piece


@pytest.mark.parametrize("lengths,batch", [([5, 40, 17, 3, 90, 33], 2), ([100], 4), ([9, 9, 9], 3), ([2, 64, 65], 1)])
def test_a_finite_stream_knows_how_many_batches_it_plays(lengths, batch):
    streams = _Streams(lengths)
    pieces = list(range(len(lengths)))
    make = lambda: SongStream(streams, pieces, [0] * len(pieces), batch_size=batch, seq_len=16, loop=False,  # noqa: E731
                              shuffle=False)
    assert make().batches_once() == sum(1 for _ in make())


def test_the_budget_counts_a_gpt_validation_before_the_first_one():
    class Module:
        def val_batches(self):
            return 150

    class Trainer:
        num_val_batches = []
        lightning_module = Module()

    class Counted(Trainer):
        num_val_batches = [float("inf")]  # what Lightning counts for an iterable loader

    budget = TimeBudget(600.0)
    budget.step_seconds = 2.0
    assert budget.reserve(Trainer()) == pytest.approx(1.1 * 150 * 2.0 * TimeBudget.VAL_BATCH_PER_STEP + TimeBudget.EXPORT_SECONDS)
    assert budget.reserve(Counted()) == pytest.approx(1.1 * 150 * 2.0 * TimeBudget.VAL_BATCH_PER_STEP + TimeBudget.EXPORT_SECONDS)


def test_a_run_with_no_options_chooses_its_preset_and_says_why(corpus, tmp_path, capsys):
    from partita.train.gpt import train_gpt

    card = train_gpt(corpus, tmp_path / "r", seq_len=32, max_steps=2, max_time=600.0, progress="none")
    said = capsys.readouterr().out
    assert "preset tiny (none given)" in said and "training tokens" in said
    run = card["run"]
    assert card["preset"] == "tiny"
    assert run["batch_size"] == PRESET_RUN_DEFAULTS["tiny"]["batch_size"]
    assert run["lr"] == PRESET_RUN_DEFAULTS["tiny"]["lr"]
    assert run["warmup_fraction"] == PRESET_RUN_DEFAULTS["tiny"]["warmup_fraction"]
    assert run["val_every"] == 2  # a short budget validates once, at the end
    assert card["best_step"] == 2


def test_a_run_from_a_named_preset_takes_its_defaults_and_flags_win(corpus, tmp_path):
    from partita.train.gpt import train_gpt

    card = train_gpt(corpus, tmp_path / "r", preset="tiny", seq_len=32, max_steps=2, batch_size=3, warmup=1,
                     val_every=1, progress="none")
    run = card["run"]
    assert run["batch_size"] == 3 and run["warmup"] == 1 and run["warmup_fraction"] is None
    assert run["val_every"] == 1 and run["lr"] == PRESET_RUN_DEFAULTS["tiny"]["lr"]


def test_a_short_run_validates_on_whole_songs_up_to_its_token_cap():
    from partita.train.gpt import validation_pieces

    class Streams:
        lengths = np.array([400, 300, 250, 100, 50, 900])

    pieces = [0, 1, 2, 3, 4, 5]
    kept = validation_pieces(Streams, pieces, 700)
    assert kept == sorted(kept) and set(kept) <= set(pieces)
    assert Streams.lengths[kept].sum() <= 700 and len(kept) >= 2
    assert kept == validation_pieces(Streams, pieces, 700)  # the same songs every time
    assert validation_pieces(Streams, pieces, None) == pieces
    assert validation_pieces(Streams, pieces, 10**6) == pieces
    assert len(validation_pieces(Streams, [5], 10)) == 1  # at least one song, even over the cap


def test_a_resumed_run_keeps_the_preset_it_chose(corpus, tmp_path, capsys):
    from partita.train.gpt import train_gpt

    out = tmp_path / "r"
    first = train_gpt(corpus, out, seq_len=32, max_steps=2, progress="none")
    assert "preset tiny (none given)" in capsys.readouterr().out
    card = train_gpt(corpus, out, resume=True, max_steps=3, override=True, progress="none")
    assert card["preset"] == first["preset"] == "tiny" and card["steps"] == 3
    assert "none given" not in capsys.readouterr().out  # nothing is chosen again
    assert card["run"]["batch_size"] == first["run"]["batch_size"] and card["run"]["lr"] == first["run"]["lr"]
