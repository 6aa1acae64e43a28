"""partita.models.gpt and partita.bundle: shapes, causality, cache, memories, labels, bundles."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_score

import partita
from partita.bundle import BundleError, load_bundle, register_family, save_bundle
from partita.errors import PartitaError
from partita.models import GPT, GPTConfig
from partita.represent import tokens as T

V = 40  # a small vocabulary for synthetic ids
SRC = Path(__file__).resolve().parents[1] / "src" / "partita"


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", **{"vocab_size": V, **overrides})
    return GPT(cfg).eval()


def rand_ids(b: int, t: int, seed: int = 0, high: int = V) -> torch.Tensor:
    return torch.randint(0, high, (b, t), generator=torch.Generator().manual_seed(seed))


def timing(b: int, t: int) -> dict:
    """Plausible bar / position-in-bar inputs: 8 tokens a bar."""
    steps = torch.arange(t).expand(b, t)
    return {"bars": steps // 8, "positions": (steps % 8) * 4}


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# --------------------------------------------------------------------------- config and shapes


def test_presets_sizes():
    counts = {}
    for name in ("tiny", "small", "base"):
        with torch.device("meta"):  # no memory, no init time: just count
            counts[name] = GPT(GPTConfig.preset(name)).num_parameters()
    assert counts["tiny"] < 1_000_000
    assert 4_000_000 <= counts["small"] <= 6_000_000
    assert 90_000_000 <= counts["base"] <= 110_000_000
    assert GPTConfig.preset("small").context == 512
    assert GPTConfig.preset("base").block == "parallel"
    assert GPTConfig.preset("tiny", n_layer=3).n_layer == 3
    with pytest.raises(PartitaError):
        GPTConfig.preset("huge")
    with pytest.raises(PartitaError):
        GPTConfig(positions="alibi")
    with pytest.raises(PartitaError):
        GPTConfig(d_model=65, n_head=2)
    with pytest.raises(PartitaError):
        GPTConfig(n_layer=2, knn_memory=True, knn_layer=5)
    assert GPTConfig(n_layer=6, knn_memory=True).knn_layer_index == 4
    assert GPTConfig(n_layer=6, knn_memory=True, knn_layer=-1).knn_layer_index == 5


def test_forward_shapes_loss_and_flops():
    model = tiny(bar_embeddings=True)
    ids = rand_ids(2, 16)
    logits, loss = model(ids, **timing(2, 16))
    assert logits.shape == (2, 16, V) and loss is None
    targets = rand_ids(2, 16, seed=1)
    targets[0, :4] = model.config.ignore_index
    logits, loss = model(ids, targets, **timing(2, 16))
    assert loss.ndim == 0 and 2.0 < loss.item() < 6.0  # about log(V) at init
    last, _ = model(ids, last_only=True, **timing(2, 16))
    close(last[:, 0], logits[:, -1])
    with pytest.raises(PartitaError, match="bars="):
        model(ids)
    n, n_body = model.num_parameters(), model.num_parameters(non_embedding=True)
    assert n_body < n
    assert model.estimate_flops_per_token() == pytest.approx(
        6 * (n_body + V * 64) + 12 * 2 * 64 * 64
    )
    assert model.estimate_flops_per_token(training=False) == pytest.approx(model.estimate_flops_per_token() / 3)


def test_bars_wrap_and_positions_clip():
    model = tiny(bar_embeddings=True, max_bars=4, positions_per_bar=8)
    ids = rand_ids(1, 6)
    bars = torch.tensor([[0, 1, 2, 3, 4, 5]])
    pos = torch.tensor([[0, 1, 2, 3, 4, 5]])
    a, _ = model(ids, bars=bars, positions=pos)
    close(a, model(ids, bars=bars % 4, positions=pos)[0])  # bar 4 is bar 0 again
    clipped, _ = model(ids, bars=bars, positions=torch.tensor([[0, 1, 2, 3, 4, 9]]))
    close(clipped, model(ids, bars=bars, positions=torch.tensor([[0, 1, 2, 3, 4, 7]]))[0])  # 9 -> 7
    assert not torch.allclose(clipped[:, 5], a[:, 5])


@pytest.mark.parametrize("block", ["sequential", "parallel"])
@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_causality(block, positions):
    model = tiny(block=block, positions=positions, bar_embeddings=True)
    ids = rand_ids(2, 20)
    t = timing(2, 20)
    before, _ = model(ids, **t)
    for j in (7, 19):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % V
        after, _ = model(changed, **t)
        close(after[:, :j], before[:, :j], tol=0)
        assert not torch.allclose(after[:, j:], before[:, j:])


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("block", ["sequential", "parallel"])
@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_cache_decoding_equals_full(block, positions):
    model = tiny(block=block, positions=positions, bar_embeddings=True)
    ids = rand_ids(2, 24)
    t = timing(2, 24)
    full, _ = model(ids, **t)
    cache = model.new_cache()
    out = [model(ids[:, :10], cache=cache, bars=t["bars"][:, :10], positions=t["positions"][:, :10])[0]]
    for i in range(10, 24):  # then one token at a time
        sl = slice(i, i + 1)
        out.append(model(ids[:, sl], cache=cache, bars=t["bars"][:, sl], positions=t["positions"][:, sl])[0])
    close(torch.cat(out, 1), full)
    assert len(cache) == 24 and cache.next_position == 24


def decode_sliding(model: GPT, ids: torch.Tensor, window: int) -> torch.Tensor:
    """Token-by-token decoding that keeps at most ``window - 1`` cached positions before a step."""
    cache = model.new_cache()
    out = []
    for i in range(ids.shape[1]):
        model.crop_cache(cache, window - 1)
        out.append(model(ids[:, i : i + 1], cache=cache)[0])
    return torch.cat(out, 1)


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_sliding_cache_equals_sliding_window_attention(block):
    """Cropping the cache (RoPE keys keep their rotation) computes sliding-window attention:
    exactly ``forward(window=W)`` over the whole sequence, for any depth, past the context."""
    model = tiny(block=block, context=12)
    ids = rand_ids(2, 30)  # 2.5 times the context
    W = 8
    close(decode_sliding(model, ids, W), model(ids, window=W)[0])
    full, _ = model(ids)
    close(model(ids, window=64)[0], full)  # a window longer than the input is plain causal


def test_rope_window_is_translation_invariant():
    """A window recomputed at positions 0.. gives the logits of the same tokens at positions
    1000.. (RoPE scores depend on distances only): sliding never needs re-rotation."""
    model = tiny()
    ids = rand_ids(2, 12)
    at_zero, _ = model(ids)
    at_1000, _ = model(ids, cache=model.new_cache(offset=1000))
    close(at_1000, at_zero, tol=1e-4)


def test_crop_then_step_vs_recomputing_the_window():
    """With one layer, crop + next token == recomputing the window from scratch. With more layers
    the cached keys still carry the context they were computed in, so the two differ (module doc)."""
    ids = rand_ids(1, 20)
    W = 8
    for n_layer, equal in ((1, True), (2, False)):
        model = tiny(n_layer=n_layer)
        cache = model.new_cache()
        model(ids[:, :19], cache=cache)
        model.crop_cache(cache, W - 1)
        assert cache.offset == 12 and len(cache) == 7
        step, _ = model(ids[:, 19:20], cache=cache)  # token at absolute position 19
        recomputed, _ = model(ids[:, 12:20])  # the same 8 tokens at positions 0..7
        assert torch.allclose(step[:, 0], recomputed[:, -1], atol=1e-4) is equal


def test_learned_positions_refuse_to_run_past_the_context():
    model = tiny(positions="learned", context=8)
    cache = model.new_cache()
    model(rand_ids(1, 8), cache=cache)
    with pytest.raises(PartitaError, match="context"):
        model(rand_ids(1, 1), cache=cache)
    model.crop_cache(cache, 4)
    logits, _ = model(rand_ids(1, 1), cache=cache)  # index 4 in the window: fine again
    assert logits.shape == (1, 1, V)


# --------------------------------------------------------------------------- XL memory


def test_xl_memory_segments_and_reset():
    model = tiny(xl_memory=True, context=8)
    seg1, seg2 = rand_ids(3, 8, seed=1), rand_ids(3, 8, seed=2)
    fresh, _ = model(seg2)
    xl = model.new_xl_memory(3)
    first, _ = model(seg1, xl=xl)
    close(first, model(seg1)[0])  # nothing in memory yet
    assert len(xl) == 8 and xl.next_position == 8
    with_mem, _ = model(seg2, xl=xl)
    assert not torch.allclose(with_mem, fresh, atol=1e-4)
    assert len(xl) == 8 and xl.next_position == 16  # capped at xl_length (= context)

    xl2 = model.new_xl_memory(3)
    model(seg1, xl=xl2)
    xl2.reset(torch.tensor([False, True, False]))  # row 1's song ended
    out, _ = model(seg2, xl=xl2)
    close(out[1], fresh[1], tol=1e-4)  # row 1 is a fresh run (at other absolute positions: RoPE)
    close(out[[0, 2]], with_mem[[0, 2]])  # rows 0 and 2 kept their memory

    # loss and gradients flow through the segment, not into the memory
    model.train()
    _, loss = model(seg2, seg2, xl=xl2)
    loss.backward()
    assert all(not k.requires_grad for k in xl2.k)
    with pytest.raises(PartitaError):
        tiny().new_xl_memory(2)
    with pytest.raises(PartitaError):
        tiny()(seg1, xl=xl)


def test_xl_memory_with_cache_matches_segments():
    """Decoding token by token, moving the full window into the XL memory (crop_cache), gives
    the logits of segment-wise processing."""
    model = tiny(xl_memory=True, context=8)
    seg1, seg2 = rand_ids(2, 8, seed=1), rand_ids(2, 8, seed=2)
    xl = model.new_xl_memory(2)
    model(seg1, xl=xl)
    expected, _ = model(seg2, xl=xl)

    xl_gen = model.new_xl_memory(2)
    cache = model.new_cache()
    steps = []
    for seg in (seg1, seg2):
        model.crop_cache(cache, 0, xl=xl_gen)  # the finished segment becomes the memory
        steps = [model(seg[:, i : i + 1], cache=cache, xl=xl_gen)[0] for i in range(8)]
    close(torch.cat(steps, 1), expected, tol=1e-4)
    assert xl_gen.next_position == 8 and cache.offset == 8


@pytest.mark.parametrize("memory", [{"xl_memory": True}, {"xl_memory": True, "xl_length": 5},
                                    {"knn_memory": True, "knn_topk": 4},
                                    {"xl_memory": True, "knn_memory": True, "knn_topk": 4}])
def test_slide_window_equals_moving_the_window_into_the_memories(memory):
    """Decoding far past the context with the XL memory kept in the cache (``slide_window``)
    gives the logits of ``crop_cache`` into separate XL/kNN memories before every token."""
    model = tiny(context=8, **memory).eval()
    ids = rand_ids(2, 40)
    new_knn = (lambda: model.new_knn_memory(2)) if model.config.knn_memory else (lambda: None)
    xl = model.new_xl_memory(2) if model.config.xl_memory else None
    knn_a, knn_b = new_knn(), new_knn()
    cache_a, cache_b = model.new_cache(), model.new_cache()
    with torch.inference_mode():
        a, b = [], []
        for i in range(40):
            if len(cache_a) >= 8:
                model.crop_cache(cache_a, 7, xl=xl, knn=knn_a)
            a.append(model(ids[:, i : i + 1], cache=cache_a, xl=xl, knn=knn_a)[0])
            model.slide_window(cache_b, knn=knn_b)
            b.append(model(ids[:, i : i + 1], cache=cache_b, knn=knn_b)[0])
    close(torch.cat(b, 1), torch.cat(a, 1), tol=1e-4)
    if knn_a is not None:
        assert knn_b.sizes() == knn_a.sizes() == [32, 32]


# --------------------------------------------------------------------------- kNN memory


def test_knn_memory_in_the_model():
    model = tiny(knn_memory=True, knn_topk=4, context=8)
    assert model.knn_layer == 0 and model.blocks[0].attn.knn_gate.shape == (2,)
    assert model.blocks[1].attn.knn_gate is None
    seg1, seg2, seg3 = rand_ids(2, 8, seed=1), rand_ids(2, 8, seed=2), rand_ids(2, 8, seed=3)
    fresh, _ = model(seg3)
    memories = [model.new_knn_memory(2), model.new_knn_memory(2)]
    for knn in memories:
        close(model(seg1, knn=knn)[0], model(seg1)[0])  # empty memory: plain model
        model(seg2, knn=knn)
        assert knn.sizes() == [16, 16]
    out, _ = model(seg3, knn=memories[0])
    assert not torch.allclose(out, fresh, atol=1e-4)
    memories[1].reset(torch.tensor([True, False]))  # row 0's song ended
    out2, _ = model(seg3, knn=memories[1])
    close(out2[0], fresh[0], tol=1e-4)
    close(out2[1], out[1])
    assert memories[1].sizes() == [8, 24]
    with pytest.raises(PartitaError):
        tiny()(seg1, knn=knn)


def test_knn_memory_fed_from_the_cache_holds_unrotated_keys():
    """Keys that leave the cache enter the kNN memory un-rotated, as a segment pass stores them."""
    model = tiny(knn_memory=True, context=8)
    ids = rand_ids(1, 12)
    by_segment = model.new_knn_memory(1)
    model(ids, knn=by_segment)
    by_cache = model.new_knn_memory(1)
    cache = model.new_cache()
    model(ids, cache=cache, knn=by_cache)
    assert by_cache.sizes() == [0]  # a cached pass only reads the memories
    model.crop_cache(cache, 5, knn=by_cache)
    model.crop_cache(cache, 0, knn=by_cache)
    close(by_cache.keys[0], by_segment.keys[0], tol=1e-5)
    close(by_cache.values[0], by_segment.values[0])


# --------------------------------------------------------------------------- labels


def test_label_tokens_condition_and_are_never_predicted():
    model = tiny(n_labels=3)
    assert model.label_token(0) == V and model.label_token(2) == V + 2 and model.label_token(None) == V + 3
    assert model.wte.weight.shape[0] == V + 4
    with pytest.raises(PartitaError):
        model.label_token(3)
    ids = rand_ids(2, 10)
    a = torch.cat([torch.full((2, 1), model.label_token(0)), ids], 1)
    b = torch.cat([torch.full((2, 1), model.label_token(1)), ids], 1)
    la, _ = model(a)
    lb, _ = model(b)
    assert la.shape[-1] == V  # logits over tokenizer ids only
    assert not torch.allclose(la[:, 1:], lb[:, 1:], atol=1e-4)


# --------------------------------------------------------------------------- learning


def piece() -> tuple[T.MusicTokenizer, np.ndarray, np.ndarray, np.ndarray]:
    tok = T.make_tokenizer()
    score = make_score([(i * 240, 240, 60 + (i * 5) % 12, 80) for i in range(14)])
    ids = T.encode(tok, score, bos_eos=True)
    bars, pos = T.token_timing(tok, ids)
    return tok, ids, bars, pos


def test_tiny_model_overfits_one_piece():
    tok, ids, bars, pos = piece()
    n = min(len(ids), 65)
    assert n > 40
    model = tiny(vocab_size=len(tok), bar_embeddings=True, n_labels=2).train()
    label = model.label_token(1)
    x = torch.tensor(np.concatenate([[label], ids[: n - 1]]))[None]
    y = torch.tensor(ids[:n])[None]
    b = torch.tensor(np.concatenate([[0], bars[: n - 1]]))[None]
    p = torch.tensor(np.concatenate([[0], pos[: n - 1]]))[None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(x, y, bars=b, positions=p)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 5.0 and losses[-1] < 0.05


# --------------------------------------------------------------------------- bundles


def test_bundle_round_trip(tmp_path):
    tok, ids, bars, pos = piece()
    model = tiny(vocab_size=len(tok), bar_embeddings=True, n_labels=2, knn_memory=True, block="parallel")
    x = torch.tensor(ids[:30])[None]
    kw = {"bars": torch.tensor(bars[:30])[None], "positions": torch.tensor(pos[:30])[None]}
    expected, _ = model(x, **kw)
    out = save_bundle(model, tmp_path / "b", tokenizer=tok, card={"data": "one piece", "command": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "config.json", "model.safetensors", "tokenizer.json"]
    doc = json.loads((out / "config.json").read_text())
    assert doc["family"] == "gpt" and doc["config"]["vocab_size"] == len(tok)
    bundle = load_bundle(out)
    assert isinstance(bundle.model, GPT) and not bundle.model.training
    assert bundle.config == model.config and bundle.family == "gpt"
    assert bundle.card["data"] == "one piece" and bundle.card["parameters"] == model.num_parameters()
    assert bundle.tokenizer is not None and len(bundle.tokenizer) == len(tok)
    assert np.array_equal(T.encode(bundle.tokenizer, T.decode(tok, ids)), T.encode(tok, T.decode(tok, ids)))
    got, _ = bundle.model(x, **kw)
    assert torch.equal(got, expected)
    assert torch.equal(partita.load(out).model(x, **kw)[0], expected)

    # fp16: half the weights file, loads back as float32 with close logits
    half = save_bundle(model, tmp_path / "h", fp16=True)
    assert not (half / "tokenizer.json").exists()
    assert (half / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size
    hb = load_bundle(half)
    assert hb.tokenizer is None and hb.model.wte.weight.dtype == torch.float32
    close(hb.model(x, **kw)[0], expected, tol=2e-2)
    assert load_bundle(half, dtype=torch.float16).model.wte.weight.dtype == torch.float16

    # saving again without a tokenizer removes the stale one
    save_bundle(model, out)
    assert not (out / "tokenizer.json").exists()


def one_line_error(path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(path)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, PartitaError)
    return msg


def test_bundle_errors_are_one_line(tmp_path):
    one_line_error(tmp_path / "nowhere", "no such bundle")
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "no config.json")

    good = save_bundle(tiny(), tmp_path / "good")
    bad = tmp_path / "bad"

    def fresh_copy() -> Path:
        import shutil

        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(good, bad)
        return bad

    (fresh_copy() / "config.json").write_text("{not json")
    one_line_error(bad, "corrupt bundle config")
    cfg = json.loads((good / "config.json").read_text())
    (fresh_copy() / "config.json").write_text(json.dumps({**cfg, "family": "wavenet"}))
    one_line_error(bad, "unknown model family 'wavenet'")
    (fresh_copy() / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "n_wings": 2}}))
    one_line_error(bad, "n_wings")
    (fresh_copy() / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "d_model": 32}}))
    one_line_error(bad, "do not fit")
    (fresh_copy() / "model.safetensors").write_bytes(b"\x00" * 5 + b"garbage")
    one_line_error(bad, "corrupt weights")
    data = (good / "model.safetensors").read_bytes()
    (fresh_copy() / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    one_line_error(bad, "corrupt weights")
    (fresh_copy() / "model.safetensors").unlink()
    one_line_error(bad, "no model.safetensors")
    (fresh_copy() / "tokenizer.json").write_text("{}")
    one_line_error(bad, "tokenizer")
    with pytest.raises(BundleError, match="partita model"):
        save_bundle(torch.nn.Linear(2, 2), tmp_path / "lin")


def test_register_family(tmp_path):
    class Wide(GPT):
        family = "wide-gpt-test"

    register_family("wide-gpt-test", Wide)
    torch.manual_seed(0)
    m = Wide(GPTConfig.preset("tiny", vocab_size=V)).eval()
    b = load_bundle(save_bundle(m, tmp_path / "w"))
    assert type(b.model) is Wide and b.family == "wide-gpt-test"


def test_import_partita_does_not_import_torch():
    code = "import sys, partita; assert callable(partita.load); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_unsafe_deserialization_in_these_files():
    pattern = re.compile("torch" + r"\.load\(|" + "pick" + "le")
    files = [SRC / "bundle.py", SRC / "__init__.py", *(SRC / "nn").glob("*.py"), *(SRC / "models").glob("*.py")]
    assert len(files) >= 6
    for f in files:
        assert not pattern.search(f.read_text(encoding="utf-8")), f
