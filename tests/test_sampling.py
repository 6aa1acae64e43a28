"""The sampler by concern: the decoding step object, masks, stop rules, and generations that
share one model."""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import pytest
import torch
from symusic import Note, Score, Tempo, TimeSignature, Track

from partita.generation.filters import banned_ids, parse_time_signatures
from partita.generation.sampling import SamplingConfig, sample
from partita.generation.step import DecodeStep
from partita.generation.stops import ClockStop, SecondsClock
from partita.models import GPT, GPTConfig
from partita.represent import tokens as T
from partita.represent.token_tables import token_tables


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return T.make_tokenizer()


def tiny_gpt(vocab: int, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", **{"vocab_size": vocab, **overrides})).eval()


def sharp_model(tok, **overrides) -> GPT:
    """An untrained tiny GPT whose logits are far apart (greedy choices never hinge on rounding)."""
    model = tiny_gpt(len(tok), n_labels=2, bar_embeddings=True, **overrides)
    with torch.no_grad():
        model.wte.weight.mul_(20.0)
        model.wte.weight[T.special_id(tok, "EOS")] = 0.0
    return model


def random_prompt(tok, length: int, seed: int = 0) -> np.ndarray:
    sampleable = np.flatnonzero(~token_tables(tok).special)
    return np.concatenate([[T.special_id(tok, "BOS")], np.random.default_rng(seed).choice(sampleable, length - 1)])


# --------------------------------------------------------------------------- the decoding step


@pytest.mark.parametrize("options", [{}, {"block": "parallel", "gelu": "none"}, {"bar_embeddings": True},
                                     {"xl_memory": True, "knn_memory": True, "knn_topk": 4, "bar_embeddings": True}])
def test_decoding_step_computes_what_the_blocks_compute(options):
    """``DecodeStep`` (the weights in the decoding layout, read directly) gives the blocks' own
    logits for every step after the first, memories and all, past the context."""
    model = tiny_gpt(40, context=8, **options)
    ids = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(0))
    steps = torch.arange(30).expand(2, 30)
    extra = {"bars": steps // 8, "positions": (steps % 8) * 4} if model.config.bar_embeddings else {}
    step = DecodeStep.of(model)
    assert step is not None
    runs = []
    for fast in (False, True):
        cache = model.new_cache()
        knn = model.new_knn_memory(2) if model.config.knn_memory else None
        out, used = [], 0
        with torch.inference_mode():
            for i in range(30):
                model.slide_window(cache, knn=knn)
                one = {k: v[:, i : i + 1] for k, v in extra.items()}
                x = ids[:, i : i + 1]
                if fast and step.applies(x, cache):
                    out.append(step(x, cache, knn, one.get("bars"), one.get("positions")))
                    used += 1
                else:
                    out.append(model(x, cache=cache, knn=knn, **one)[0])
        runs.append(torch.cat(out, 1))
        assert used == (29 if fast else 0)  # every step after the first
    torch.testing.assert_close(runs[1], runs[0], atol=1e-5, rtol=1e-5)


def test_the_step_leaves_the_model_as_it_was():
    """Building a step copies weights into its own object: the model's modules, parameters and
    attributes are untouched, and a model with learned positions gets no step. The step is kept
    per model while its weights stay as they are."""
    model = tiny_gpt(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    step = DecodeStep.of(model)
    assert step is not None and set(vars(model)) == attrs
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert DecodeStep.of(tiny_gpt(40, positions="learned")) is None

    # made once per model and kept while its weights stay; a changed weight makes a new one
    assert DecodeStep.of(model) is step
    with torch.no_grad():
        model.wte.weight.mul_(2.0)
    again = DecodeStep.of(model)
    assert again is not step and torch.equal(again.head_t, DecodeStep(model).head_t)
    assert DecodeStep.of(tiny_gpt(40)) is not again  # another model, its own


def test_two_generations_on_one_model_at_once_get_their_own_tokens(tok):
    """Two threads sample from one shared model at the same time; each gets exactly the tokens
    it gets alone (the model holds no decoding state)."""
    model = sharp_model(tok, xl_memory=True, knn_memory=True, knn_topk=4)
    prompts = [random_prompt(tok, 90, seed=1), random_prompt(tok, 40, seed=2)]
    jobs = [dict(prompts=prompts[0], n=2, seed=5, temperature=1.0, max_new_tokens=80),
            dict(prompts=prompts[1], n=1, seed=9, temperature=0.8, max_new_tokens=120)]
    alone = [sample(model, tok, **job) for job in jobs]
    together: list = [None, None]
    errors: list = []
    start = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):  # overlap several calls
                together[i] = sample(model, tok, **jobs[i])
                assert all(np.array_equal(a, b) for a, b in zip(together[i], alone[i]))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(together[i], alone[i]))


# --------------------------------------------------------------------------- masks


def test_time_signature_mask_bans_every_other_metre(tok):
    tables = token_tables(tok)
    eos = T.special_id(tok, "EOS")
    song = random_prompt(tok, 10)
    free = banned_ids(tables, eos=eos, ban_eos=False, programs=None, song=song)
    held = banned_ids(tables, eos=eos, ban_eos=False, programs=None, song=song, time_signatures=[(3, 4)])
    strings = {i: s for s, i in tok.vocab.items()}
    metres = {i: s for i, s in strings.items() if s.startswith("TimeSig_")}
    assert len(metres) > 3
    for i, s in metres.items():
        assert not free[i]
        assert held[i] == (s != "TimeSig_3/4")
    assert (held & ~free).sum() == len(metres) - 1  # nothing else is banned


def test_sampling_held_to_a_metre_writes_only_that_metre(tok):
    model = sharp_model(tok)
    with torch.no_grad():  # make TimeSig tokens likely, so a free model would write several
        for s, i in tok.vocab.items():
            if s.startswith("TimeSig_"):
                model.wte.weight[i] *= 1.5
    prompt = random_prompt(tok, 20, seed=3)
    out = sample(model, tok, prompts=prompt, n=3, seed=1, max_new_tokens=200, time_signatures="6/8")
    strings = {i: s for s, i in tok.vocab.items()}
    for ids in out:
        new = [strings[int(i)] for i in ids[len(prompt):]]
        assert {s for s in new if s.startswith("TimeSig_")} <= {"TimeSig_6/8"}


def test_piano_programs_count_as_one_instrument(tok):
    """``programs="auto"`` after a piano track on program 1 (Bright Acoustic) allows every piano
    program, so a model that writes program 0 still adds notes."""
    tables = token_tables(tok)
    eos = T.special_id(tok, "EOS")
    score = Score(480)
    track = Track(program=1)
    track.notes.append(Note(0, 480, 60, 80))
    score.tracks.append(track)
    song = T.encode(tok, score)
    ban = banned_ids(tables, eos=eos, ban_eos=False, programs="auto", song=song)
    ids_of = tables.programs.ids_of
    for p in range(8):
        assert not ban[ids_of[p]].any()
    assert ban[ids_of[40]].all()  # a violin is still another instrument


def test_bad_sampling_values_are_one_line_errors():
    from partita.errors import PartitaError

    for bad in ({"seconds": True}, {"seconds": float("nan")}, {"seconds": -1}, {"bars": 1e400},
                {"max_pause": 0}, {"time_signatures": "3/5"}, {"time_signatures": "x"}, {"bars": True}):
        with pytest.raises(PartitaError):
            SamplingConfig(**bad).checked()
    assert parse_time_signatures("6/8, 3/4") == ((3, 4), (6, 8))


# --------------------------------------------------------------------------- stops


def _score(notes: list[tuple[float, float]], qpm: float = 120.0) -> Score:
    """Notes (onset, duration) in quarters at ``qpm``, 4/4."""
    score = Score(480)
    score.tempos.append(Tempo(0, qpm))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    track = Track(program=0)
    for on, dur in notes:
        track.notes.append(Note(int(on * 480), int(dur * 480), 60, 80))
    score.tracks.append(track)
    return score


def test_the_clock_counts_onsets_not_held_notes(tok):
    """A note held for 8 bars adds no seconds: the clock reads the last onset."""
    held = T.encode(tok, _score([(0, 1), (1, 32)]))  # 120 qpm: onsets at 0 and 0.5 s, held 16 s
    clock = SecondsClock(tok, held)
    assert clock.end(held[clock.anchor:]) == pytest.approx(0.5, abs=0.02)


def test_a_silence_longer_than_max_pause_cuts_the_sample_before_it(tok):
    """ClockStop with ``max_pause`` finds a gap in the new music and cuts the ids right after the
    last note before the gap; a gap within the prompt does not count."""
    prompt = T.encode(tok, _score([(0, 1), (1, 1)]))
    whole = T.encode(tok, _score([(0, 1), (1, 1), (2, 1), (3, 1), (20, 1), (21, 1)]))  # 8 s of silence
    clock = SecondsClock(tok, prompt)

    class Batch:  # the sampler's view the rule reads
        L0 = 1 + len(prompt)
        L = 1 + len(whole)
        n_new = len(whole) - len(prompt)
        seq = torch.from_numpy(np.concatenate([[0], whole]))[None]

    rule = ClockStop([clock], None, 2.0)
    rule.next_check = 0
    ends = rule.check(Batch, [0])
    assert set(ends) == {0} and rule.reason_of(0) == "pause"
    kept = whole[: ends[0] - 1]
    on, _ = clock.notes(kept[clock.anchor:])
    assert on[-1] == pytest.approx(1.5, abs=0.02)  # the note at quarter 3 is the last one kept
    assert len(on) == 4
    calm = ClockStop([clock], None, 10.0)
    calm.next_check = 0
    assert calm.check(Batch, [0]) == {}


def test_seconds_count_new_onsets(tok):
    """``seconds=S`` stops at the first prefix whose last onset is S seconds after the prompt's."""
    model = sharp_model(tok)
    prompt = T.encode(tok, _score([(0, 1), (1, 1)]))
    for out in sample(model, tok, prompts=prompt, n=2, seed=2, seconds=3.0, return_details=True):
        clock = SecondsClock(tok, prompt)
        new = clock.end(out.ids[clock.anchor:]) - clock.prompt_end
        if out.stop == "seconds":
            assert new >= 3.0 - 1e-6
            assert clock.end(out.ids[clock.anchor:-1]) - clock.prompt_end < 3.0


# --------------------------------------------------------------------------- one sampling surface


def test_command_line_options_are_made_from_the_config_fields():
    """``@sampling_options`` offers every ``SamplingConfig`` field with a ``cli`` flag, with the
    field's help text, and passes on only what the user said."""
    import typer
    from typer.testing import CliRunner

    from partita.cli.sampling import SAMPLING_CLI_FIELDS, sampling_options

    got = {}
    app = typer.Typer()

    @app.command()
    @sampling_options(exclude=("threads",))
    def gen(n: int = typer.Option(4, "-n"), name: Optional[str] = typer.Option(None, "--name"), sampling: dict = None):
        got.update(n=n, name=name, sampling=sampling)

    runner = CliRunner()
    r = runner.invoke(app, ["-n", "2", "-t", "0.5", "--bars", "8", "--programs", "0,1", "--allow-early-end"])
    assert r.exit_code == 0, r.output
    assert got == {"n": 2, "name": None, "sampling": {"temperature": 0.5, "bars": 8, "programs": "0,1",
                                                       "allow_early_end": True}}
    r = runner.invoke(app, [])
    assert got["sampling"] == {}  # nothing said: the bundle's and the config's defaults apply
    text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert {"temperature", "seconds", "max_pause", "programs", "seed"} <= set(SAMPLING_CLI_FIELDS)
    for field in SAMPLING_CLI_FIELDS:
        flag = "--" + SamplingConfig.__dataclass_fields__[field].metadata["cli"]
        assert (flag in text) == (field != "threads")
    assert SamplingConfig.help("max_pause").split(";")[0] in " ".join(text.split())
    assert runner.invoke(app, ["--threads", "1"]).exit_code != 0


def test_a_bundle_carries_its_generation_defaults(tmp_path, tok):
    """``generation.json`` is saved and loaded with a bundle; ``SamplingConfig.of_bundle`` starts
    from it; an unknown name is a one-line error naming the file."""
    import json

    import partita
    from partita.bundle import save_bundle
    from partita.errors import PartitaError

    model = tiny_gpt(len(tok), knn_memory=True, knn_max_memory=64)
    save_bundle(model, tmp_path / "b", tok, generation={"max_pause": 2.5, "memory_keys": 16})
    bundle = partita.load(tmp_path / "b")
    assert bundle.generation == {"max_pause": 2.5, "memory_keys": 16}
    config = SamplingConfig.of_bundle(bundle)
    assert config.max_pause == 2.5 and config.memory_keys == 16 and config.temperature == 1.0
    (tmp_path / "b" / "generation.json").write_text(json.dumps({"temprature": 0.5}))
    with pytest.raises(PartitaError, match="generation.json.*temprature"):
        SamplingConfig.of_bundle(partita.load(tmp_path / "b"))
    assert partita.load("gpt-piano").generation["memory_keys"] == 4096


def test_memory_keys_bound_the_knn_memory_while_decoding(tok):
    model = sharp_model(tok, knn_memory=True, knn_topk=4, knn_max_memory=256, context=16)
    prompt = random_prompt(tok, 200, seed=7)
    seen = []
    real = GPT.new_knn_memory

    def spy(self, batch_size, **kw):
        memory = real(self, batch_size, **kw)
        seen.append(memory)
        return memory

    GPT.new_knn_memory = spy
    try:
        sample(model, tok, prompts=prompt, n=1, seed=0, max_new_tokens=40, memory_keys=32)
    finally:
        GPT.new_knn_memory = real
    assert seen and max(seen[-1].sizes()) <= 32


def test_prompt_reading_in_bf16_follows_the_cpu_and_can_be_forced(tok, monkeypatch):
    """``prompt_bf16=None`` reads prompt windows under bf16 autocast exactly where the CPU has
    bf16 instructions (PARTITA_CPU_BF16 forces each path); the tokens are those of fp32
    reading or close to them, and a forced value wins over the CPU."""
    from partita.generation import sampling as S

    model = sharp_model(tok)
    chosen = {}
    for forced, want in (("0", False), ("avx512_bf16", True)):
        monkeypatch.setenv("PARTITA_CPU_BF16", forced)
        batch = S._Batch(model, tok, SamplingConfig().checked(), cap=1, label_id=model.label_token(None),
                         eos=T.special_id(tok, "EOS"), progress=None, n_rows=1)
        chosen[forced] = batch.bf16_prompt
        assert batch.bf16_prompt is want
        forced_off = S._Batch(model, tok, SamplingConfig(prompt_bf16=False).checked(), cap=1,
                              label_id=model.label_token(None), eos=T.special_id(tok, "EOS"), progress=None, n_rows=1)
        assert forced_off.bf16_prompt is False
    assert chosen == {"0": False, "avx512_bf16": True}


def test_generate_and_infill_start_from_the_bundles_generation_defaults(tmp_path, tok):
    """The CLI passes only what the user said; the rest comes from the bundle's generation.json."""
    import json

    from partita.bundle import save_bundle
    from partita.cli import main

    save_bundle(tiny_gpt(len(tok)), tmp_path / "b", tok, generation={"max_pause": 2.5, "top_k": 7})
    for extra, pause, top_k in (([], 2.5, 7), (["--max-pause", "1.5"], 1.5, 7), (["--top-k", "3"], 2.5, 3)):
        out = tmp_path / f"g{len(extra)}{top_k}.json"
        main(["generate", "--model", str(tmp_path / "b"), "-n", "1", "--max-tokens", "4", "--out",
              str(tmp_path / "o"), "--json", str(out), *extra])
        settings = json.loads(out.read_text())["settings"]
        assert (settings["max_pause"], settings["top_k"], settings["temperature"]) == (pause, top_k, 1.0)


def test_a_model_is_held_only_to_metres_it_writes_bars_of():
    """held_metres keeps a file's metres when the model's BPE merged bar lines of each (it met
    them often), else leaves the metre free; a vocabulary without such merges cannot tell: held."""
    import partita
    from partita.generation.filters import bar_metres, held_metres
    from partita.represent.token_tables import token_tables

    piano = token_tables(partita.load("gpt-piano").tokenizer)
    small = token_tables(partita.load("gpt-small").tokenizer)
    assert bar_metres(piano) == {(4, 4)} and {(3, 4), (6, 8), (4, 4)} <= bar_metres(small)
    assert held_metres(piano, [(4, 4)]) == ((4, 4),) and held_metres(piano, [(3, 4)]) is None
    assert held_metres(piano, [(4, 4), (2, 4)]) is None
    assert held_metres(small, [(6, 8), (3, 4)]) == ((3, 4), (6, 8))


def test_an_untrained_vocabulary_holds_the_file_metre(tok):
    from partita.generation.filters import bar_metres, held_metres
    from partita.represent.token_tables import token_tables

    tables = token_tables(tok)
    if bar_metres(tables) is None:
        assert held_metres(tables, [(3, 4)]) == ((3, 4),)
    else:  # the test tokenizer merged bar lines: held exactly to those it knows
        known = sorted(bar_metres(tables))
        assert held_metres(tables, known) == tuple(known)
