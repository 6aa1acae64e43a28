"""Building blocks shared by partita's model families: attention (SDPA, RoPE, KV cache, XL and
kNN memory), transformer blocks, and a Linear whose weights take a faster layout while decoding
on a CPU (``linear.py``). See ``attention.py`` for how positions and memories work."""

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
from partita.nn.linear import Linear, decode_layout

__all__ = [
    "BLOCKS",
    "MLP",
    "CausalSelfAttention",
    "KNNMemory",
    "KVCache",
    "Linear",
    "ParallelBlock",
    "Rotary",
    "SequentialBlock",
    "XLMemory",
    "apply_rotary",
    "causal_mask",
    "decode_layout",
    "make_block",
]
