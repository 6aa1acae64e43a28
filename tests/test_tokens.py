"""Tokens through miditok: defaults, exact round trips through MIDI files, BPE, timing, streams."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import FIXTURES, make_score
from symusic import Note, Score, Tempo, TimeSignature, Track

from partita.io.midi import load
from partita.represent import tokens as T

MULTITRACK = ["Aicha.mid", "Mr. Blue Sky.mid", "POP909_010.mid", "d8faddb8596fff7abb24d78666f73e4e.mid"]
PERFORMANCE = ["Maestro_1.mid", "Maestro_3.mid", "Chopin, Frédéric, Études, Op.10, g0hoN6_HDVU.mid"]
NAMES = list(T.TOKENIZERS)


# --------------------------------------------------------------------------- helpers


def crop_seconds(score: Score, seconds: float) -> Score:
    """The first ``seconds`` of ``score`` (ticks), following its tempo map."""
    tempos = list(score.tempos) or [Tempo(0, 120.0)]
    elapsed = 0.0
    for i, tempo in enumerate(tempos):
        sec_per_tick = tempo.mspq / 1e6 / score.ticks_per_quarter
        end = tempos[i + 1].time if i + 1 < len(tempos) else None
        span = (end - tempo.time) * sec_per_tick if end is not None else float("inf")
        if elapsed + span >= seconds:
            return score.clip(0, int(tempo.time + (seconds - elapsed) / sec_per_tick))
        elapsed += span
    return score


def fixture_scores() -> dict[str, Score]:
    out = {}
    for name in MULTITRACK:
        out[name] = load(FIXTURES / "multitrack" / name)
    for name in PERFORMANCE:
        out[name] = crop_seconds(load(FIXTURES / "performance" / name), 30)
    return out


def roundtrip(tok, score: Score) -> tuple[np.ndarray, np.ndarray]:
    """ids of ``score``, and ids of (ids -> Score -> MIDI bytes -> partita.io.load)."""
    ids = T.encode(tok, score)
    midi_bytes = T.decode(tok, ids).dumps_midi()
    return ids, T.encode(tok, load(midi_bytes))


def tricky_scores() -> dict[str, Score]:
    """Hand-made scores with what breaks naive round trips."""
    out = {}
    out["melody"] = make_score([(i * 240, 240, 60 + (i % 12), 40 + 5 * i) for i in range(16)])
    out["waltz"] = make_score(
        [(i * 480, 480 if i % 3 else 960, 48 + i % 7, 90) for i in range(24)], time_signature=(3, 4), qpm=90
    )
    # Several instruments listed out of program order, two tracks with one program, drums,
    # simultaneous notes, same-pitch overlaps and nested notes, duplicates, unsorted notes.
    s = Score(480)
    s.tempos.extend([Tempo(0, 100.0), Tempo(1920 * 2, 140.0)])
    s.time_signatures.extend([TimeSignature(0, 4, 4), TimeSignature(1920 * 3, 6, 8), TimeSignature(1920 * 5, 3, 4)])
    rng = np.random.default_rng(7)
    for program, drum in [(48, False), (0, False), (33, False), (0, False), (0, True)]:
        n = 60
        t = np.sort(rng.integers(0, 1920 * 8, n))[::-1].copy()  # deliberately unsorted
        d = rng.integers(30, 1920, n)
        p = rng.integers(58, 64, n) if not drum else rng.integers(35, 50, n)
        tr = Track("t", program, drum)
        tr.notes = Note.from_numpy(
            time=t.astype(np.int32),
            duration=d.astype(np.int32),
            pitch=p.astype(np.int8),
            velocity=rng.integers(1, 128, n).astype(np.int8),
        )
        tr.notes.append(Note(960, 960, 60, 80))  # nested pair of one pitch
        tr.notes.append(Note(1200, 120, 60, 70))
        tr.notes.append(Note(2000, 100, 61, 70))  # same onset and pitch, two durations
        tr.notes.append(Note(2000, 400, 61, 90))
        s.tracks.append(tr)
    out["ensemble"] = s
    # Odd resolution; an x/8 signature that miditok drops when it delays it to the bar line.
    s = Score(220)
    s.tempos.append(Tempo(0, 160.0))
    s.time_signatures.extend([TimeSignature(0, 4, 4), TimeSignature(2000, 12, 8), TimeSignature(2300, 4, 4)])
    tr = Track("p", 0, False)
    tr.notes = Note.from_numpy(
        time=np.arange(0, 9000, 37, dtype=np.int32),
        duration=np.full(244, 50, np.int32),
        pitch=(50 + np.arange(244) % 30).astype(np.int8),
        velocity=np.full(244, 70, np.int8),
    )
    s.tracks.append(tr)
    out["collapsing_metre"] = s
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def remi():
    return T.make_tokenizer()


@pytest.fixture(scope="module")
def scores(fixtures):
    return fixture_scores()


@pytest.fixture(scope="module")
def fixtures():  # module-scoped twin of conftest's fixture
    if not FIXTURES.is_dir():
        pytest.fail(f"the MIDI fixtures are missing: expected them at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="module")
def training_scores(scores):
    return [scores[n] for n in ("Aicha.mid", "POP909_010.mid", "Maestro_1.mid", "Maestro_3.mid")]


@pytest.fixture(scope="module")
def bpe(training_scores):
    return T.train_tokenizer(training_scores, vocab_size=800, model="BPE")


# --------------------------------------------------------------------------- make_tokenizer


def test_defaults(remi):
    cfg = remi.config
    assert type(remi).__name__ == "REMI" and remi.one_token_stream
    assert cfg.use_programs and cfg.one_token_stream_for_programs
    assert cfg.use_tempos and cfg.use_time_signatures
    assert cfg.beat_res == {(0, 4): 8, (4, 12): 4} and cfg.num_velocities == 32
    assert remi.special_tokens == ["PAD_None", "BOS_None", "EOS_None"] and remi.pad_token_id == 0
    types = {t.split("_")[0] for t in remi.vocab}
    assert {"Bar", "Position", "Program", "Tempo", "TimeSig", "Pitch", "PitchDrum", "Velocity", "Duration"} <= types
    assert not remi.is_trained


@pytest.mark.parametrize("name", NAMES)
def test_every_supported_tokenizer_builds(name):
    tok = T.make_tokenizer(name.lower())  # names are case-insensitive
    assert type(tok).__name__ == name and tok.one_token_stream


def test_overrides_and_refusals():
    tok = T.make_tokenizer("REMI", num_velocities=16, max_bar_embedding=None)
    assert sum(t.startswith("Velocity_") for t in tok.vocab) == 16
    with pytest.raises(T.TokenizerError, match="CPWord"):
        T.make_tokenizer("CPWord")
    with pytest.raises(T.TokenizerError, match="use_velocity"):
        T.make_tokenizer(use_velocity=False)  # typo of use_velocities
    with pytest.raises(T.TokenizerError, match="one token stream"):
        T.make_tokenizer(use_programs=False)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_tricky_scores(name):
    tok = T.make_tokenizer(name)
    for key, score in tricky_scores().items():
        ids, again = roundtrip(tok, score)
        assert len(ids) > 10, key
        np.testing.assert_array_equal(again, ids, err_msg=f"{name}: {key}")


def test_roundtrip_fixtures_remi(remi, scores):
    for key, score in scores.items():
        ids, again = roundtrip(remi, score)
        np.testing.assert_array_equal(again, ids, err_msg=key)


def test_roundtrip_fixtures_bpe(bpe, scores):
    for key, score in {**scores, **tricky_scores()}.items():
        ids, again = roundtrip(bpe, score)
        np.testing.assert_array_equal(again, ids, err_msg=key)


def test_encode_inputs_and_decode_specials(remi, fixtures):
    path = fixtures / "multitrack" / "POP909_008.mid"
    ids = T.encode(remi, load(path))
    assert ids.dtype == np.int64 and ids.ndim == 1
    np.testing.assert_array_equal(T.encode(remi, path), ids)
    np.testing.assert_array_equal(T.encode(remi, path.read_bytes()), ids)
    framed = T.encode(remi, path, bos_eos=True)
    assert framed[0] == remi["BOS_None"] and framed[-1] == remi["EOS_None"]
    np.testing.assert_array_equal(framed[1:-1], ids)
    padded = np.concatenate([framed, [remi.pad_token_id] * 5])
    np.testing.assert_array_equal(T.encode(remi, T.decode(remi, padded)), ids)
    assert T.decode(remi, []).note_num() == 0


def test_bpe_compresses_and_decodes_like_base(remi, bpe, scores):
    assert bpe.is_trained and len(bpe) == 800 and len(bpe.vocab) == len(remi.vocab)
    for key, score in scores.items():
        base_ids, bpe_ids = T.encode(remi, score), T.encode(bpe, score)
        assert len(bpe_ids) < len(base_ids), key
        np.testing.assert_array_equal(T.encode(remi, T.decode(bpe, bpe_ids)), base_ids, err_msg=key)
        # Expanding every merged id gives back the base sequence.
        learned = bpe._vocab_learned_bytes_to_tokens
        expanded = [bpe.vocab[t] for i in bpe_ids for t in learned[bpe._model.id_to_token(int(i))]]
        np.testing.assert_array_equal(expanded, base_ids, err_msg=key)
    framed = T.encode(bpe, scores["Maestro_1.mid"], bos_eos=True)
    assert framed[0] == T.special_id(bpe, "BOS") and framed[-1] == T.special_id(bpe, "EOS")


# --------------------------------------------------------------------------- timing


def _check_remi_timing(tok, ids, bars, positions):
    tokens = tok._ids_to_tokens([int(i) for i in ids])
    is_bar = np.array([t.startswith("Bar_") for t in tokens])
    assert bars.dtype == np.int32 and positions.dtype == np.int32 and len(bars) == len(ids)
    assert np.all(np.diff(bars) >= 0)
    assert is_bar[0] and bars[0] == 0
    np.testing.assert_array_equal(np.diff(bars), is_bar[1:].astype(int))  # +1 exactly at Bar tokens
    assert np.all(positions[is_bar] == 0)  # a bar starts at position 0
    current = 0
    for tok_str, pos in zip(tokens, positions):
        if tok_str.startswith("Bar_"):
            current = 0
        elif tok_str.startswith("Position_"):
            current = int(tok_str.split("_")[1])
        assert pos == current


def test_token_timing_remi_rules(remi, scores):
    for key in ("Mr. Blue Sky.mid", "POP909_010.mid", "Maestro_3.mid"):
        ids = T.encode(remi, scores[key])
        _check_remi_timing(remi, ids, *T.token_timing(remi, ids))


def test_token_timing_known_values(remi):
    # 4/4 at 480 ticks a beat: REMI positions are 1/8 beat (8 per beat, 32 a bar).
    score = make_score([(0, 480, 60, 80), (480 * 6, 240, 62, 80), (480 * 9 + 240, 240, 64, 80)])
    ids = T.encode(remi, score)
    bars, positions = T.token_timing(remi, ids)
    tokens = remi._ids_to_tokens(ids.tolist())
    pitch = [i for i, t in enumerate(tokens) if t.startswith("Pitch_")]
    assert [(bars[i], positions[i]) for i in pitch] == [(0, 0), (1, 16), (2, 12)]
    framed = T.encode(remi, score, bos_eos=True)
    fb, fp = T.token_timing(remi, framed)
    assert (fb[0], fp[0]) == (0, 0) and (fb[-1], fp[-1]) == (bars[-1], positions[-1])


def test_token_timing_bpe_equals_base_at_first_base_token(remi, bpe, scores):
    learned = bpe._vocab_learned_bytes_to_tokens
    for key, score in scores.items():
        base_ids, bpe_ids = T.encode(remi, score), T.encode(bpe, score)
        lengths = np.array([len(learned[bpe._model.id_to_token(int(i))]) for i in bpe_ids])
        first = np.cumsum(lengths) - lengths
        bb, bp = T.token_timing(remi, base_ids)
        mb, mp = T.token_timing(bpe, bpe_ids)
        np.testing.assert_array_equal(mb, bb[first], err_msg=key)
        np.testing.assert_array_equal(mp, bp[first], err_msg=key)


@pytest.mark.parametrize("name", ["TSD", "MIDILike"])
def test_time_shift_timing_agrees_with_remi(remi, name, fixtures, scores):
    tok = T.make_tokenizer(name)
    pieces = [load(fixtures / "edge" / "time-signatures.mid"), scores["POP909_010.mid"], scores["Maestro_1.mid"]]
    pieces += [tricky_scores()["ensemble"]]

    def at_onsets(t, score):
        ids = T.encode(t, score)
        bars, positions = T.token_timing(t, ids)
        kinds = [s.split("_")[0] for s in t._ids_to_tokens(ids.tolist())]
        onset = np.array([k in ("Pitch", "PitchDrum", "NoteOn", "DrumOn") for k in kinds])
        return np.stack([bars[onset], positions[onset]], 1)

    for i, score in enumerate(pieces):
        np.testing.assert_array_equal(at_onsets(tok, score), at_onsets(remi, score), err_msg=str(i))


def test_token_timing_refuses_rests_and_bad_ids(remi):
    with pytest.raises(T.TokenizerError, match="Rest"):
        T.token_timing(T.make_tokenizer(use_rests=True), [0, 1])
    with pytest.raises(T.TokenizerError, match="token ids"):
        T.token_timing(remi, [len(remi) + 3])
    bars, positions = T.token_timing(remi, [])
    assert bars.shape == positions.shape == (0,)


# --------------------------------------------------------------------------- save / load / train


def test_save_load_roundtrip(tmp_path, remi, bpe, scores, monkeypatch):
    import huggingface_hub
    import miditok.midi_tokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("load_tokenizer must not reach the Hub")

    monkeypatch.setattr(miditok.midi_tokenizer, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    for tok, fname in ((remi, "remi.json"), (bpe, "sub/bpe.json")):
        path = T.save_tokenizer(tok, tmp_path / fname)
        assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.startswith(".")]
        again = T.load_tokenizer(path)
        assert again == tok and again.is_trained == tok.is_trained and len(again) == len(tok)
        for score in scores.values():
            np.testing.assert_array_equal(T.encode(again, score), T.encode(tok, score))
    (tmp_path / "dir").mkdir()
    T.save_tokenizer(remi, tmp_path / "dir")
    assert T.load_tokenizer(tmp_path / "dir") == remi  # a folder means folder/tokenizer.json


def test_load_errors_are_one_line(tmp_path):
    cases = {
        "missing.json": None,
        "bad.json": "{not json",
        "other.json": json.dumps({"hello": 1}),
        "cpword.json": json.dumps({"tokenization": "CPWord", "config": {}}),
        "damaged.json": json.dumps({"tokenization": "REMI", "config": {"beat_res": 3}}),
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as err:
            T.load_tokenizer(tmp_path / name)
        assert isinstance(err.value, T.TokenizerError)
        assert "\n" not in str(err.value) and name in str(err.value)


def test_training_is_deterministic_and_leaves_base_alone(training_scores, bpe):
    base = T.make_tokenizer()
    again = T.train_tokenizer(iter(training_scores), vocab_size=800, model="BPE", base=base)
    assert not base.is_trained and len(base) == len(base.vocab)
    assert again._model.to_str() == bpe._model.to_str()
    for score in training_scores:
        np.testing.assert_array_equal(T.encode(again, score), T.encode(bpe, score))


def test_training_errors(training_scores):
    with pytest.raises(T.TokenizerError, match="vocab_size"):
        T.train_tokenizer(training_scores, vocab_size=100)
    with pytest.raises(T.TokenizerError, match="BPE"):
        T.train_tokenizer(training_scores, vocab_size=600, model="WordPiece")
    with pytest.warns(UserWarning, match="skipped 1"):
        with pytest.raises(T.TokenizerError, match="no score"):
            T.train_tokenizer([b"not midi"], vocab_size=600)


def test_unigram_roundtrip_and_timing(scores):
    train = [scores["POP909_010.mid"], scores["Maestro_1.mid"]]
    uni = T.train_tokenizer(train, vocab_size=650, model="Unigram")
    remi = T.make_tokenizer()
    assert uni.is_trained and uni._model_name == "Unigram"
    for score in train:
        ids, again = roundtrip(uni, score)
        np.testing.assert_array_equal(again, ids)
        np.testing.assert_array_equal(T.encode(remi, T.decode(uni, ids)), T.encode(remi, score))
        bars, positions = T.token_timing(uni, ids)
        assert len(bars) == len(ids) and np.all(np.diff(bars) >= 0)


# --------------------------------------------------------------------------- corpus streams


def test_write_and_read_token_streams(tmp_path, bpe, scores, fixtures):
    items = [(k, v) for k, v in scores.items()]
    items.insert(2, ("garbage", b"MThd not really"))
    items.insert(4, ("silent", Score(480)))
    items.append(("from-path", fixtures / "multitrack" / "POP909_022.mid"))
    items.append(("Aicha.mid", scores["POP909_010.mid"]))  # duplicate id
    out = tmp_path / "streams"
    streams = T.write_token_streams(items, bpe, out)

    assert {p.name for p in out.iterdir()} == {
        "tokens.bin", "bars.bin", "positions.bin", "offsets.npy", "piece_ids.json", "tokenizer.json", "streams.json"
    }
    assert [p.name for p in tmp_path.iterdir()] == ["streams"]  # no temporary folder left
    assert streams.ids == [*scores, "from-path"] and len(streams) == len(scores) + 1
    assert [s[0] for s in streams.skipped] == ["garbage", "silent", "Aicha.mid"]
    assert all("\n" not in reason for _, reason in streams.skipped)

    meta = json.loads((out / "streams.json").read_text())
    assert meta["dtype"] == "<u2" and meta["vocab_size"] == len(bpe) == streams.vocab_size
    assert meta["tokenizer_sha256"] == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    assert streams.tokenizer() == bpe
    assert isinstance(streams.tokens, np.memmap) and not streams.tokens.flags.writeable
    assert len(streams.tokens) == len(streams.all_bars) == len(streams.all_positions) == streams.offsets[-1]

    for i, pid in enumerate(streams.ids):
        score = scores[pid] if pid in scores else fixtures / "multitrack" / "POP909_022.mid"
        ids = T.encode(bpe, score, bos_eos=True)
        np.testing.assert_array_equal(streams.piece(i), ids)
        bars, positions = T.token_timing(bpe, ids)
        np.testing.assert_array_equal(streams.bars(i), bars)
        np.testing.assert_array_equal(streams.positions(i), positions)
    assert streams.index("from-path") == len(streams) - 1
    np.testing.assert_array_equal(streams.piece(-1), streams.piece(len(streams) - 1))

    # Reopening gives the same; an existing folder is kept unless asked.
    again = T.TokenStreams(out)
    np.testing.assert_array_equal(again.piece(1), streams.piece(1))
    with pytest.raises(FileExistsError):
        T.write_token_streams(items[:2], bpe, out)
    small = T.write_token_streams(items[:2], bpe, out, overwrite=True, dtype=np.uint32, bos_eos=False)
    assert len(small) == 2 and small.meta["dtype"] == "<u4" and small.piece(0).dtype == np.uint32
    np.testing.assert_array_equal(small.piece(0), T.encode(bpe, items[0][1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streams"]
    with pytest.raises(T.TokenizerError, match="dtype"):
        T.write_token_streams(items[:1], bpe, tmp_path / "u8", dtype=np.uint8)


def test_interrupted_write_leaves_nothing(tmp_path, remi, scores):
    def items():
        yield "a", scores["Maestro_1.mid"]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.write_token_streams(items(), remi, tmp_path / "streams")
    assert list(tmp_path.iterdir()) == []


def test_empty_streams_and_bad_folder(tmp_path, remi):
    streams = T.write_token_streams([], remi, tmp_path / "empty")
    assert len(streams) == 0 and len(streams.tokens) == 0
    with pytest.raises(T.TokenizerError, match="streams.json"):
        T.TokenStreams(tmp_path)
    (tmp_path / "empty" / "tokens.bin").write_bytes(b"\x00\x01")
    with pytest.raises(T.TokenizerError, match="tokens.bin"):
        T.TokenStreams(tmp_path / "empty")


class _CrashingScore:
    """A score source that kills the process building it (a segfault's stand-in)."""

    def __call__(self):
        import os

        os._exit(3)


def _stream_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_streams_from_the_worker_pool_are_byte_identical(tmp_path, bpe, scores, fixtures):
    items = [(k, v) for k, v in scores.items()]
    items.insert(2, ("garbage", b"MThd not really"))
    items.insert(4, ("silent", Score(480)))
    items.append(("from-path", fixtures / "multitrack" / "POP909_022.mid"))
    items.append(("Aicha.mid", scores["POP909_010.mid"]))  # duplicate id
    one = T.write_token_streams(items, bpe, tmp_path / "one")
    seen = []
    pooled = T.write_token_streams(items, bpe, tmp_path / "pool", workers=2, progress=lambda d, t: seen.append((d, t)))
    assert _stream_bytes(tmp_path / "one") == _stream_bytes(tmp_path / "pool")
    assert pooled.skipped == one.skipped and len(one) == len(scores) + 1
    assert seen[-1] == (len(items), len(items)) and [d for d, _ in seen] == list(range(1, len(items) + 1))

    # A piece that kills its worker is skipped with its reason; the others are written as before.
    crashed = T.write_token_streams(items[:3] + [("crash", _CrashingScore())] + items[3:], bpe, tmp_path / "crash", workers=2)
    assert crashed.ids == one.ids
    assert ("crash", "crashed: the tokenizer process died on this piece") in crashed.skipped
    np.testing.assert_array_equal(np.asarray(crashed.tokens), np.asarray(one.tokens))


def test_corpus_score_refs_tokenize_like_scores(tmp_path, remi, fixtures):
    from conftest import labelled_folder

    from partita.data.corpus import Corpus
    from partita.data.prepare import prepare

    root = labelled_folder(tmp_path / "midi", {"Pop": sorted((fixtures / "multitrack").glob("POP909_*.mid"))})
    corpus = prepare(root, tmp_path / "corpus", workers=1).corpus
    direct = T.write_token_streams([(r["id"], corpus.score(i)) for i, r in enumerate(corpus.pieces)], remi, tmp_path / "a")
    refs = [(r["id"], corpus.score_ref(i)) for i, r in enumerate(corpus.pieces)]
    pooled = T.write_token_streams(refs, remi, tmp_path / "b", workers=2)
    assert len(pooled) == len(Corpus(tmp_path / "corpus")) == 4
    assert _stream_bytes(tmp_path / "a") == _stream_bytes(tmp_path / "b")
