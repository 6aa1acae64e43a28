"""A faster weight layout for decoding on a CPU, and the CPU's bf16 instructions.

Decoding one token at a time multiplies a handful of rows by every weight matrix: the step is a
matrix-vector product, bound by reading the weights. ``nn.Linear`` stores ``W`` as
``[out, in]`` and computes ``x @ W.T``; for one to four rows CPU BLAS does that more slowly
than ``x @ Wt`` with ``Wt = W.T`` stored contiguous as ``[in, out]`` (Hugging Face's GPT-2
stores its weights that way), and it runs a single product on one core. ``decode_weight``
stores ``Wt`` as contiguous column blocks, ``[P, in, out/P]`` (``P`` from the matrix size
alone, never from the thread count: ``split_blocks``), and ``rows_linear`` multiplies them in one
batched product, which runs blocks on every core and sums each column in the same order
whatever the number of threads (the same seed gives the same tokens on 1 or 16 threads). For
the 25 matrices of the ``small`` GPT and one row, on 2 cores of an AMD EPYC, transposed is 1.2x
and transposed and split 1.7x ``F.linear`` (``benchmarks/gpt_breakdown.py``). From eight rows on,
the usual layout is as fast.

The sampler's decoding step (``partita.generation.step``) holds these copies for the duration of
one generation call, on its own object: the model's modules are never changed, so several
generations can share one model.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

__all__ = ["BF16_CPU_FLAGS", "FEW_ROWS", "MAX_BLOCKS", "MIN_BLOCK_COLUMNS", "cpu_bf16_flag", "cpuinfo_bf16_flag", "decode_weight", "rows_linear", "split_blocks"]

#: Linux cpuinfo flags of bf16 matrix or dot-product instructions: Intel AMX (Sapphire Rapids
#: and later), AVX-512 BF16 (Cooper Lake, AMD Zen 4 and later). bf16 autocast trains the GPT about
#: 2x faster than fp32 on both (benchmarks/RESULTS.md); without them bf16 is emulated and slower.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flag() -> Optional[str]:
    """The first of ``BF16_CPU_FLAGS`` this CPU has, or None; chosen at run time.

    ``PARTITA_CPU_BF16`` overrides what the CPU says: ``0`` (or ``off``) forces the fp32 paths, a
    flag name (``amx_bf16``, ``avx512_bf16``) forces the bf16 ones, so each path can be tested on
    any machine."""
    forced = os.environ.get("PARTITA_CPU_BF16", "").strip().lower()
    if forced in ("0", "off", "none", "false"):
        return None
    if forced in BF16_CPU_FLAGS:
        return forced
    return cpuinfo_bf16_flag()


@functools.lru_cache(maxsize=None)
def cpuinfo_bf16_flag(path: str = "/proc/cpuinfo") -> Optional[str]:
    """The first of ``BF16_CPU_FLAGS`` in the Linux cpuinfo file ``path``, or None."""
    try:
        with open(path) as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


#: Inputs of at most this many rows use the transposed layout.
FEW_ROWS = 4


def rows_linear(x: Tensor, weight_t: Tensor, n_out: int, bias: Optional[Tensor] = None) -> Tensor:
    """``x @ W.T (+ bias)`` over the last dimension of ``x [..., in]`` for ``W [n_out, in]`` given
    as ``decode_weight(W)``."""
    if weight_t.dim() == 2:
        rows = x.reshape(-1, weight_t.shape[0])
        y = rows @ weight_t if bias is None else torch.addmm(bias, rows, weight_t)
        return y.view(*x.shape[:-1], n_out)
    P, n_in, block = weight_t.shape
    rows = x.reshape(1, -1, n_in)
    if rows.shape[1] == 1:  # one row: the blocks' outputs lie in column order already
        y = torch.bmm(rows.expand(P, 1, n_in), weight_t).view(*x.shape[:-1], P * block)
    else:
        y = torch.bmm(rows.expand(P, -1, -1), weight_t).transpose(0, 1).reshape(*x.shape[:-1], P * block)
    if P * block != n_out:
        y = y[..., :n_out]
    return y if bias is None else y + bias


def decode_weight(weight: Tensor, blocks: Optional[int] = None) -> Tensor:
    """``weight [out, in]`` in the decoding layout: transposed, as ``blocks`` contiguous column
    blocks ``[blocks, in, ceil(out / blocks)]`` (zero columns pad the last one), or ``[in, out]``
    for one block. ``blocks`` defaults to ``split_blocks(out)``."""
    blocks = split_blocks(weight.shape[0]) if blocks is None else max(1, int(blocks))
    wt = weight.detach().t()
    if blocks == 1:
        return wt.contiguous()
    n_in, n_out = wt.shape
    block = -(-n_out // blocks)
    if block * blocks != n_out:
        wt = torch.cat([wt, wt.new_zeros(n_in, block * blocks - n_out)], dim=1)
    return wt.reshape(n_in, blocks, block).permute(1, 0, 2).contiguous()


#: Fewer columns than this in a block and the products get less efficient than they gain.
MIN_BLOCK_COLUMNS = 64
#: At most this many column blocks (cores a one-row product can use).
MAX_BLOCKS = 4


def split_blocks(n_out: int) -> int:
    """Column blocks for a weight of ``n_out`` rows: ``n_out // MIN_BLOCK_COLUMNS`` between 2 and
    ``MAX_BLOCKS``, whatever the thread count. A batched product runs each block's columns on
    one core, every column summed in the same order, so results do not depend on the number of
    threads (a single product of one row, with MKL, splits the sum over threads, and 1 and 2
    threads gave different logits and different samples); a layout that followed the thread
    count changed results with it too."""
    return max(1, min(n_out, max(2, min(MAX_BLOCKS, n_out // MIN_BLOCK_COLUMNS))))
