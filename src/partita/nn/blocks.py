"""Transformer blocks: pre-norm sequential (GPT-2) and parallel (GPT-J, TchAIkovsky), GELU MLP.

sequential:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
parallel:    h = ln(x);  x = x + attn(h) + mlp(h)

The parallel form runs attention and MLP on the same normalized input (one LayerNorm), which
shortens the critical path and, at scale, trains about as well (GPT-J, PaLM). Both take the same
keyword arguments as ``CausalSelfAttention.forward`` (rotary tables, cache, memories, window)
and pass them through.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from partita.nn.attention import CausalSelfAttention

__all__ = ["BLOCKS", "MLP", "ParallelBlock", "SequentialBlock", "init_gpt2", "make_block"]


class MLP(nn.Module):
    """Linear -> GELU -> Linear -> dropout, hidden size ``d_ff`` (4 x d_model by default).
    ``gelu="tanh"``: the tanh approximation (GPT-2's and JAX's default; 3-8x cheaper on a CPU)."""

    def __init__(self, d_model: int, d_ff: Optional[int] = None, *, dropout: float = 0.0, bias: bool = False,
                 gelu: str = "none"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.gelu = nn.GELU(approximate=gelu)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(self.gelu(self.fc(x)))
        return self.dropout(y) if self.training else y


class SequentialBlock(nn.Module):
    """Pre-norm block: attention, then MLP, each on its own residual branch."""

    def __init__(self, d_model: int, n_head: int, *, d_ff: Optional[int] = None, dropout: float = 0.0,
                 attn_dropout: Optional[float] = None, bias: bool = False, knn: bool = False, gelu: str = "none"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_head, dropout=dropout, attn_dropout=attn_dropout, bias=bias, knn=knn)
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, d_ff, dropout=dropout, bias=bias, gelu=gelu)

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        x = x + self.attn(self.ln_1(x), **attn_kwargs)
        return x + self.mlp(self.ln_2(x))


class ParallelBlock(nn.Module):
    """GPT-J block: ``x + attn(ln(x)) + mlp(ln(x))`` with one shared LayerNorm."""

    def __init__(self, d_model: int, n_head: int, *, d_ff: Optional[int] = None, dropout: float = 0.0,
                 attn_dropout: Optional[float] = None, bias: bool = False, knn: bool = False, gelu: str = "none"):
        super().__init__()
        self.ln = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_head, dropout=dropout, attn_dropout=attn_dropout, bias=bias, knn=knn)
        self.mlp = MLP(d_model, d_ff, dropout=dropout, bias=bias, gelu=gelu)

    def forward(self, x: Tensor, **attn_kwargs) -> Tensor:
        h = self.ln(x)
        return x + self.attn(h, **attn_kwargs) + self.mlp(h)


#: Block kinds by config name.
BLOCKS = {"sequential": SequentialBlock, "parallel": ParallelBlock}


def make_block(kind: str, d_model: int, n_head: int, **kwargs) -> nn.Module:
    """A ``"sequential"`` or ``"parallel"`` block (``kwargs``: d_ff, dropout, attn_dropout, bias, knn, gelu)."""
    if kind not in BLOCKS:
        raise ValueError(f"unknown block kind {kind!r}: choose one of {', '.join(BLOCKS)}")
    return BLOCKS[kind](d_model, n_head, **kwargs)


def init_gpt2(module: nn.Module) -> None:
    """GPT-2's initialisation of one module: Linear and Embedding weights ~ N(0, 0.02), zero biases.
    (``model.apply(init_gpt2)``; the depth-scaled residual projections are each family's own.)"""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
