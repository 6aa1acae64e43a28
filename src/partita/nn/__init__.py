"""Building blocks shared by partita's model families: attention (SDPA, RoPE, KV cache, XL and
kNN memory), transformer blocks, and a faster weight layout for one-token products on a CPU
(``linear.py``). See ``attention.py`` for how positions and memories work."""

from partita.nn.attention import (
    CausalSelfAttention,
    KNNMemory,
    KVCache,
    Rotary,
    XLMemory,
    apply_rotary,
    causal_mask,
)
from partita.nn.blocks import BLOCKS, MLP, ParallelBlock, SequentialBlock, make_block

__all__ = [
    "BLOCKS",
    "MLP",
    "CausalSelfAttention",
    "KNNMemory",
    "KVCache",
    "ParallelBlock",
    "Rotary",
    "SequentialBlock",
    "XLMemory",
    "apply_rotary",
    "causal_mask",
    "make_block",
]
