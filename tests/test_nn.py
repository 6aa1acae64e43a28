"""partita.nn: rotary positions, SDPA attention, KV cache, XL and kNN memory, blocks."""

from __future__ import annotations

import pytest
import torch

from partita.nn import attention
from partita.nn.attention import SEARCH_SCORES
from partita.nn import (
    CausalSelfAttention,
    KNNMemory,
    KVCache,
    ParallelBlock,
    Rotary,
    SequentialBlock,
    XLMemory,
    apply_rotary,
    causal_mask,
    make_block,
)

D, H = 32, 4
DH = D // H


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- rotary


def test_rotary_is_a_rotation_and_relative():
    rot = Rotary(DH)
    q = torch.randn(2, H, 1, DH, generator=gen())
    k = torch.randn(2, H, 1, DH, generator=gen(1))

    def score(i: int, j: int) -> torch.Tensor:
        ci, si = rot(torch.tensor([i]))
        cj, sj = rot(torch.tensor([j]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum(-1)

    cos, sin = rot(torch.arange(5))
    x = torch.randn(3, 5, DH, generator=gen(2))
    y = apply_rotary(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps norms
    torch.testing.assert_close(apply_rotary(y, cos, -sin), x)  # and -sin undoes it
    # the score depends on i - j only, also far into a song (float64 angles)
    torch.testing.assert_close(score(3, 1), score(100_003, 100_001), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))
    with pytest.raises(ValueError):
        Rotary(7)


def test_rotary_span_is_the_table_of_forward():
    rot = Rotary(DH)
    with torch.inference_mode():  # a table made while sampling...
        rot.span(5, 3)
    for start, n in [(0, 1), (5, 3), (1500, 40), (Rotary.TABLE_POSITIONS - 2, 5), (10**6, 2)]:
        want = rot(torch.arange(start, start + n))
        got = rot.span(start, n)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    x = torch.randn(3, DH, requires_grad=True)  # ...serves training too
    (apply_rotary(x, *rot.span(5, 3)) ** 2).sum().backward()
    assert x.grad is not None


def test_causal_mask_with_offsets_and_window():
    m = causal_mask(2, 2, 0, 4)  # queries at 2, 3; keys at 0..3
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    w = causal_mask(0, 4, 0, 4, window=2)
    assert w.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


# --------------------------------------------------------------------------- attention


def attn_module(knn: bool = False) -> CausalSelfAttention:
    torch.manual_seed(0)
    return CausalSelfAttention(D, H, knn=knn).eval()


@pytest.mark.parametrize("use_rope", [True, False])
def test_attention_is_causal(use_rope):
    attn = attn_module()
    x = torch.randn(2, 8, D, generator=gen())
    rope = Rotary(DH)(torch.arange(8)) if use_rope else None
    y = attn(x, rope=rope)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 5] += 1.0
    y2 = attn(x2, rope=rope)
    torch.testing.assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


def test_attention_cache_equals_full():
    attn = attn_module()
    rot = Rotary(DH)
    x = torch.randn(2, 9, D, generator=gen())
    full = attn(x, rope=rot(torch.arange(9)))
    cache = KVCache(1)
    parts = []
    for a, b in [(0, 4), (4, 5), (5, 9)]:  # a chunk, one token, a chunk after the cache
        start = cache.next_position
        parts.append(attn(x[:, a:b], rope=rot(torch.arange(start, start + b - a)), start=start, cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert len(cache) == 9 and cache.k[0].shape == (2, H, 9, DH)


# --------------------------------------------------------------------------- KV cache


def test_kv_cache_append_and_crop():
    cache = KVCache(2)
    assert len(cache) == 0 and cache.next_position == 0
    for layer in range(2):
        k = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 2, 5, 3)
        out_k, out_v = cache.append(layer, k, k + 10)
        assert out_k.shape == (1, 2, 5, 3)
    assert len(cache) == 5 and cache.next_position == 5
    dropped = cache.crop(2)
    assert len(dropped) == 2 and dropped[0][0].shape[2] == 3
    assert cache.offset == 3 and len(cache) == 2 and cache.next_position == 5
    assert cache.k[1][0, 0, :, 0].tolist() == [3.0, 4.0] and cache.v[1][0, 0, :, 0].tolist() == [13.0, 14.0]
    nothing = cache.crop(10)  # keeping more than there is drops nothing
    assert all(k.shape[2] == 0 for k, _ in nothing) and cache.offset == 3 and len(cache) == 2
    cache.reset(offset=7)
    assert len(cache) == 0 and cache.next_position == 7


def test_cache_and_xl_memory_select_rows_like_a_fresh_batch():
    """Dropping finished rows (select) leaves the other rows' cache and memory as if they ran alone."""
    attn = attn_module()
    rot = Rotary(DH)
    seg1 = torch.randn(3, 6, D, generator=gen(3))
    seg2 = torch.randn(3, 6, D, generator=gen(4))
    xl = XLMemory(1, 3, length=4)
    run_segments(attn, [seg1], xl, rot)
    xl.reset(torch.tensor([False, True, False]))
    xl.select([2, 1])
    assert xl.batch_size == 2 and xl.k[0].shape[0] == 2 and xl.valid.shape[0] == 2 and not xl.valid[1].any()
    alone = XLMemory(1, 2, length=4)
    run_segments(attn, [seg1[[2, 1]]], alone, rot)
    alone.reset(torch.tensor([False, True]))
    (got,) = run_segments(attn, [seg2[[2, 1]]], xl, rot)
    (want,) = run_segments(attn, [seg2[[2, 1]]], alone, rot)
    torch.testing.assert_close(got, want)

    cache = KVCache(1)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 5)
    cache.append(0, k, k + 10)
    cache.select([2, 0])
    assert cache.k[0][:, 0, 0, 0].tolist() == [2.0, 0.0] and cache.v[0][:, 0, 0, 0].tolist() == [12.0, 10.0]
    cache.append(0, k[:2, :, :1], k[:2, :, :1])  # appending after select re-lays the buffer
    assert len(cache) == 5 and cache.k[0][:, 0, :4, 0].tolist() == [[2.0] * 4, [0.0] * 4]


def test_kv_cache_writes_in_place_and_matches_a_list():
    """A long mix of appends, crops, prepends, row selection and outside assignment keeps the
    window a plain list would keep; a one-token append or prepend writes into the buffer
    (no copy of the window) except when the buffer is re-laid."""
    cache = KVCache(1)
    ref: list[float] = []  # position values, oldest first
    g = torch.Generator().manual_seed(0)
    value = 0.0
    relaid = 0
    for step in range(400):
        action = int(torch.randint(0, 10, (1,), generator=g))
        before = cache._buffers[0]
        if action < 6 or not ref:  # append 1-3 positions
            t = 1 + action % 3
            new = torch.arange(value, value + t).view(1, 1, t, 1).expand(2, 2, t, 3).contiguous()
            cache.append(0, new, -new)
            ref += [value + i for i in range(t)]
            value += t
        elif action < 8:  # crop to keep the last few
            keep = int(torch.randint(0, len(ref) + 1, (1,), generator=g))
            dropped = cache.crop(keep)
            assert dropped[0][0][0, 0, :, 0].tolist() == ref[: len(ref) - keep]
            ref = ref[len(ref) - keep :]
        elif action == 8 and ref:  # prepend one position (the sampler's label)
            cache.prepend(0, torch.full((2, 2, 1, 3), -1.0), torch.full((2, 2, 1, 3), 1.0))
            ref = [-1.0] + ref
        else:  # outside code replaces the window (row selection): a new buffer follows
            cache.k[0], cache.v[0] = cache.k[0][[1, 0]], cache.v[0][[1, 0]]
        if before is not None and cache._buffers[0] is not None and cache._buffers[0][0] is not before[0]:
            relaid += 1
        assert cache.k[0][1, 1, :, 2].tolist() == ref and cache.v[0][0, 0, :, 0].tolist() == [-x for x in ref]
    assert relaid < 100  # most writes went into spare room


# --------------------------------------------------------------------------- XL memory


def run_segments(attn, segments, xl, rot):
    outs = []
    for seg in segments:
        start = xl.next_position
        outs.append(attn(seg, rope=rot(torch.arange(start, start + seg.shape[1])), start=start, xl=xl))
        xl.commit()
    return outs


def test_xl_memory_changes_output_and_resets_per_row():
    attn = attn_module()
    rot = Rotary(DH)
    seg1 = torch.randn(3, 6, D, generator=gen(1))
    seg2 = torch.randn(3, 6, D, generator=gen(2))
    fresh = attn(seg2, rope=rot(torch.arange(6)))

    xl = XLMemory(1, 3, length=4)
    out1, out2 = run_segments(attn, [seg1, seg2], xl, rot)
    torch.testing.assert_close(out1, attn(seg1, rope=rot(torch.arange(6))))  # empty memory: as fresh
    assert not torch.allclose(out2, fresh)  # memory of seg1 changes seg2
    assert len(xl) == 4 and xl.k[0].shape == (3, H, 4, DH) and xl.next_position == 12

    xl2 = XLMemory(1, 3, length=4)
    run_segments(attn, [seg1], xl2, rot)
    xl2.reset(torch.tensor([False, True, False]))
    assert xl2.valid[1].sum() == 0 and xl2.valid[0].all()
    (out2b,) = run_segments(attn, [seg2], xl2, rot)
    torch.testing.assert_close(out2b[1], fresh[1], atol=1e-5, rtol=1e-5)  # row 1 forgot seg1
    torch.testing.assert_close(out2b[[0, 2]], out2[[0, 2]])  # the others kept it
    with pytest.raises(ValueError):
        xl2.reset(torch.tensor([True]))


def test_xl_memory_attends_to_the_previous_segment_exactly():
    """Memory = keys/values of the previous segment: same as attending over both at once."""
    attn = attn_module()
    rot = Rotary(DH)
    x = torch.randn(2, 10, D, generator=gen(3))
    xl = XLMemory(1, 2, length=5)
    _, out2 = run_segments(attn, [x[:, :5], x[:, 5:]], xl, rot)
    full = attn(x, rope=rot(torch.arange(10)))
    # the second segment sees the first through memory exactly as in one causal pass (one layer)
    torch.testing.assert_close(out2, full[:, 5:], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- kNN memory


def brute_topk(q, keys, k):
    s = torch.einsum("htd,hnd->htn", q, keys)
    return s.topk(min(k, keys.shape[1]), dim=-1)


@pytest.mark.parametrize("scores", [SEARCH_SCORES, 45])  # 45: one query per block
def test_knn_retrieval_is_the_true_topk(scores, monkeypatch):
    monkeypatch.setattr(attention, "SEARCH_SCORES", scores)
    mem = KNNMemory(2, H, DH, topk=5, max_memory=50)
    k1 = torch.randn(2, H, 30, DH, generator=gen(1))
    v1 = torch.randn(2, H, 30, DH, generator=gen(2))
    mem.add(k1, v1)
    mem.add(k1[:, :, :10] * 2, v1[:, :, :10])  # a second add
    assert mem.sizes() == [40, 40]
    q = torch.randn(2, H, 7, DH, generator=gen(3))
    scores, idx = mem.topk_indices(q)
    assert scores.shape == idx.shape == (2, H, 7, 5)
    for b in range(2):
        ref = brute_topk(q[b], mem.keys[b], 5)
        torch.testing.assert_close(scores[b], ref.values, atol=1e-4, rtol=1e-4)
        assert torch.equal(idx[b], ref.indices)
    k_ret, v_ret, valid = mem.search(q)
    assert k_ret.shape == v_ret.shape == (2, H, 7, 5, DH) and valid.all()
    b, h, t, j = 1, 2, 3, 0
    torch.testing.assert_close(k_ret[b, h, t, j], mem.keys[b][h, idx[b, h, t, j]])
    torch.testing.assert_close(v_ret[b, h, t, j], mem.values[b][h, idx[b, h, t, j]])

    # the cap drops the oldest keys
    mem.add(k1[:, :, :20] * 3, v1[:, :, :20])
    assert mem.sizes() == [50, 50]
    torch.testing.assert_close(mem.keys[0][:, -20:], k1[0, :, :20] * 3)
    torch.testing.assert_close(mem.keys[0][:, :30], torch.cat([k1[0, :, 10:], k1[0, :, :10] * 2], 1))
    scores, idx = mem.topk_indices(q)
    assert torch.equal(idx[0], brute_topk(q[0], mem.keys[0], 5).indices)


def test_knn_memory_stores_float32_whatever_it_is_given():
    """Keys from a bf16 prompt window are converted once when stored, so that a later search
    (always in float32) does not convert the whole memory again at every decoding step."""
    mem = KNNMemory(1, H, DH, topk=3, max_memory=20)
    k = torch.randn(1, H, 6, DH, generator=gen(1))
    mem.add(k.bfloat16(), k.bfloat16())
    assert mem.keys[0].dtype == mem.values[0].dtype == torch.float32
    mem.add(k[:, :, :2], k[:, :, :2])  # a float32 step after the bf16 window
    assert mem.keys[0].dtype == mem.values[0].dtype == torch.float32 and mem.sizes() == [8]
    torch.testing.assert_close(mem.keys[0][:, :6], k[0].bfloat16().float())
    torch.testing.assert_close(mem.keys[0][:, 6:], k[0, :, :2])


def test_knn_attend_is_attention_over_what_search_finds():
    mem = KNNMemory(3, H, DH, topk=5, max_memory=40)
    mem.add(torch.randn(3, H, 30, DH, generator=gen(1)), torch.randn(3, H, 30, DH, generator=gen(2)))
    mem.add(torch.randn(3, H, 25, DH, generator=gen(3)), torch.randn(3, H, 25, DH, generator=gen(4)))  # drops 15
    mem.reset(torch.tensor([False, True, False]))  # row 1 empty
    mem.add(torch.randn(3, H, 3, DH, generator=gen(5)), torch.randn(3, H, 3, DH, generator=gen(6)))  # row 1: 3 < topk
    q = torch.randn(3, H, 4, DH, generator=gen(7))
    y, has = mem.attend(q, 0.25)
    k, v, valid = mem.search(q)
    assert has.all()
    ref = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(-2), k, v, attn_mask=valid.unsqueeze(-2), scale=0.25)
    torch.testing.assert_close(y, ref.squeeze(-2))
    empty = KNNMemory(2, H, DH, topk=5)
    assert empty.attend(q[:2], 0.25) is None
    empty.add(torch.randn(2, H, 2, DH, generator=gen(8)), torch.randn(2, H, 2, DH, generator=gen(9)))
    empty.reset(torch.tensor([True, False]))
    y, has = empty.attend(q[:2], 0.25)
    assert not has[0].any() and has[1].all() and torch.equal(y[0], torch.zeros_like(y[0]))


def test_knn_memory_keeps_the_last_keys_of_each_row():
    mem = KNNMemory(2, H, DH, topk=4, max_memory=20)
    ref_k = [torch.zeros(H, 0, DH), torch.zeros(H, 0, DH)]
    g = gen(5)
    for step in range(60):
        t = 1 + step % 5
        k, v = torch.randn(2, H, t, DH, generator=g), torch.randn(2, H, t, DH, generator=g)
        mem.add(k, v)
        ref_k = [torch.cat([r, k[b]], 1)[:, -20:] for b, r in enumerate(ref_k)]
        if step == 30:
            mem.reset(torch.tensor([True, False]))
            ref_k[0] = torch.zeros(H, 0, DH)
        if step == 40:
            mem.select([1, 0])
            ref_k = ref_k[::-1]
        assert mem.sizes() == [r.shape[1] if r.shape[1] else 0 for r in ref_k]
        for b in range(2):
            if ref_k[b].shape[1]:
                assert torch.equal(mem.keys[b], ref_k[b])
    assert torch.equal(mem.values[0][:, -1], v[0][:, -1])


def test_knn_fewer_keys_than_topk_and_reset_per_row():
    mem = KNNMemory(3, H, DH, topk=4)
    q = torch.randn(3, H, 2, DH, generator=gen(6))
    assert mem.search(q) is None  # empty everywhere
    mem.add(torch.randn(3, H, 2, DH, generator=gen(7)), torch.randn(3, H, 2, DH, generator=gen(8)))
    _, idx = mem.topk_indices(q)
    assert (idx[..., :2] >= 0).all() and (idx[..., 2:] == -1).all()
    mem.reset(torch.tensor([False, True, False]))
    assert mem.sizes() == [2, 0, 2]
    _, _, valid = mem.search(q)
    assert not valid[1].any() and valid[0, ..., :2].all()
    mem.reset()
    assert mem.sizes() == [0, 0, 0]


def test_knn_attention_gate_and_reset():
    attn = attn_module(knn=True)
    assert attn.knn_gate.shape == (H,)
    rot = Rotary(DH)
    seg1 = torch.randn(2, 5, D, generator=gen(1))
    seg2 = torch.randn(2, 5, D, generator=gen(2))
    local = attn(seg2, rope=rot(torch.arange(5)))

    mem = KNNMemory(2, H, DH, topk=3)
    out1 = attn(seg1, rope=rot(torch.arange(5)), knn=mem)
    torch.testing.assert_close(out1, attn(seg1, rope=rot(torch.arange(5))))  # nothing to retrieve yet
    assert mem.sizes() == [0, 0]  # staged, not yet committed: a segment never retrieves itself
    mem.commit()
    assert mem.sizes() == [5, 5]
    out2 = attn(seg2, rope=rot(torch.arange(5, 10)), start=5, knn=mem)
    mem.commit()
    assert not torch.allclose(out2, local, atol=1e-4)
    # the gate decides: closed (sigmoid -> 0) gives local attention back
    with torch.no_grad():
        attn.knn_gate.fill_(-1e4)
    torch.testing.assert_close(attn(seg2, rope=rot(torch.arange(5)), knn=mem), local, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        attn.knn_gate.zero_()
    mem.reset(torch.tensor([True, False]))
    out3 = attn(seg2, rope=rot(torch.arange(5)), knn=mem)
    torch.testing.assert_close(out3[0], local[0], atol=1e-5, rtol=1e-5)  # row 0 forgot
    assert not torch.allclose(out3[1], local[1], atol=1e-4)


def test_knn_gate_gets_gradients():
    attn = CausalSelfAttention(D, H, knn=True)
    mem = KNNMemory(1, H, DH, topk=2)
    mem.add(torch.randn(1, H, 4, DH, generator=gen(1)), torch.randn(1, H, 4, DH, generator=gen(2)))
    attn(torch.randn(1, 3, D, generator=gen(3)), knn=mem).sum().backward()
    assert attn.knn_gate.grad is not None and attn.knn_gate.grad.abs().sum() > 0


# --------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("kind", ["sequential", "parallel"])
def test_blocks_shapes_and_causality(kind):
    torch.manual_seed(0)
    block = make_block(kind, D, H, dropout=0.1).eval()
    assert isinstance(block, SequentialBlock if kind == "sequential" else ParallelBlock)
    x = torch.randn(2, 7, D, generator=gen())
    rope = Rotary(DH)(torch.arange(7))
    y = block(x, rope=rope)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, -1] = 0
    torch.testing.assert_close(block(x2, rope=rope)[:, :-1], y[:, :-1])
    with pytest.raises(ValueError):
        make_block("diagonal", D, H)


def test_parallel_block_is_x_plus_attn_plus_mlp():
    torch.manual_seed(0)
    block = ParallelBlock(D, H).eval()
    x = torch.randn(1, 4, D, generator=gen())
    h = block.ln(x)
    torch.testing.assert_close(block(x), x + block.attn(h) + block.mlp(h))


# --------------------------------------------------------------------------- decoding layout


@pytest.mark.parametrize("bias", [False, True])
def test_decode_weight_products_equal_nn_linear(bias):
    from partita.nn.linear import MAX_BLOCKS, MIN_BLOCK_COLUMNS, decode_weight, rows_linear, split_blocks

    torch.manual_seed(0)
    ref = torch.nn.Linear(24, 30, bias=bias)
    for blocks in (1, 2, 4, 7, None):  # 30 columns: 4 and 7 blocks need zero padding
        wt = decode_weight(ref.weight, blocks)
        for shape in [(1, 24), (3, 1, 24), (2, 2, 24), (9, 24)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(rows_linear(x, wt, 30, ref.bias), ref(x))
    assert split_blocks(MIN_BLOCK_COLUMNS - 1) == 2  # never one block: a single product splits its sums over threads
    assert split_blocks(10**6) == MAX_BLOCKS
    n = torch.get_num_threads()
    try:  # the layout never follows the thread count (results would follow it)
        layouts = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            layouts.append([split_blocks(c) for c in (64, 256, 768, 1000, 4096)])
        assert layouts[0] == layouts[1] == layouts[2] == [2, 4, 4, 4, 4]
    finally:
        torch.set_num_threads(n)


def test_cpu_bf16_paths_are_chosen_at_run_time_and_can_be_forced(tmp_path, monkeypatch):
    """The bf16 paths (training precision on a CPU, prompt windows read under autocast) follow
    the CPU's flags, read at run time, and PARTITA_CPU_BF16 forces either path on any machine."""
    from partita.nn.linear import cpu_bf16_flag, cpuinfo_bf16_flag
    from partita.train.common import default_precision

    for flags, want in (("fpu sse avx512f", None), ("fpu avx512f avx512_bf16", "avx512_bf16"),
                        ("fpu amx_bf16 amx_tile avx512_bf16", "amx_bf16")):
        info = tmp_path / f"cpuinfo-{len(flags)}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpuinfo_bf16_flag(str(info)) == want
    assert cpuinfo_bf16_flag(str(tmp_path / "missing")) is None
    if not torch.cuda.is_available():
        monkeypatch.setenv("PARTITA_CPU_BF16", "0")
        assert cpu_bf16_flag() is None and default_precision(cpu_bf16=True) == "32-true"
        monkeypatch.setenv("PARTITA_CPU_BF16", "avx512_bf16")
        assert cpu_bf16_flag() == "avx512_bf16" and default_precision(cpu_bf16=True) == "bf16-mixed"
        assert default_precision(cpu_bf16=False) == "32-true"
