"""Sampling from the composer-conditioned transformer VAE (``partita.models.tvae``).

::

    from partita.generation.tvae import sample_tvae
    scores = sample_tvae("runs/tvae/bundle", composer="Bach", n=8, seed=0)   # list of symusic.Score

For composer ``y`` a sample draws ``z ~ p(z | y)`` (the prior's component of that composer; its
standard deviation times ``latent_scale``), builds the decoder's memory from ``y`` and ``z``, and
decodes ``[BOS, ...]`` token by token with a KV cache, at most ``context`` tokens, stopping at EOS
(kept). Tokens are drawn with ``partita.generation.sampling.choose`` (temperature, top-k, top-p,
min-p; PAD, BOS and other special tokens except EOS are never drawn). Sample ``j`` uses its own
generator ``row_generator(seed, label, j)`` for its latent and its tokens: the same seed gives
the same samples, and sample ``j`` does not depend on ``n``. The ids are turned into a score with
``decode_safe``, so every sample writes to a MIDI file partita reads back.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from symusic import Score

from partita.errors import PartitaError
from partita.generation.sampling import choose, decode_safe, row_generator

__all__ = ["sample_tvae", "sample_tvae_ids"]


def _bundle(bundle: Any):
    from partita.bundle import load
    from partita.pretrained import TVAE

    bundle = load(bundle, "tvae", default=TVAE)
    if bundle.tokenizer is None:
        raise PartitaError(f"{bundle.path}: the tvae bundle has no tokenizer.json")
    return bundle


def _banned(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Ids never drawn: every special token (PAD, BOS, ...) but EOS, which ends a sample."""
    from partita.represent.token_tables import token_tables
    from partita.represent.tokens import special_id

    banned = torch.from_numpy(np.asarray(token_tables(tokenizer).special, dtype=bool)[:vocab_size].copy())
    banned[special_id(tokenizer, "EOS")] = False
    return banned


@torch.no_grad()
def sample_tvae_ids(
    bundle: Any,
    *,
    composer: Any,
    n: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    latent_scale: float = 1.0,
    max_tokens: Optional[int] = None,
) -> list[np.ndarray]:
    """The token ids of ``n`` samples for ``composer`` (a name of the bundle's labels, any case,
    or an index); see the module doc. ``max_tokens``: at most this many (default: the context)."""
    b = _bundle(bundle)
    model = b.model
    c = model.config
    if int(n) < 1:
        raise PartitaError(f"n must be >= 1, got {n}")
    label = model.label_index(composer)
    steps = c.context if max_tokens is None else int(max_tokens)
    if not 1 <= steps <= c.context:
        raise PartitaError(f"max_tokens must be in 1..{c.context} (the model's context), got {max_tokens}")
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        gens = [row_generator(seed, label, j) for j in range(int(n))]
        labels = torch.full((int(n),), label, dtype=torch.long, device=device)
        z = model.sample_prior(labels, gens, scale=latent_scale)
        memory = model.memory(z, labels)
        banned = _banned(b.tokenizer, c.vocab_size)
        cache = model.new_cache()
        x = torch.full((int(n), 1), c.bos_id, dtype=torch.long, device=device)
        out = torch.zeros((int(n), 0), dtype=torch.long)
        done = torch.zeros(int(n), dtype=torch.bool)
        for _ in range(steps):
            logits = model.decode(x, memory, cache=cache, last_only=True)[:, -1]
            nxt = choose(logits, gens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, banned=banned)
            nxt = nxt.cpu().masked_fill(done, c.pad_id)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == c.eos_id
            if bool(done.all()):
                break
            x = nxt[:, None].to(device)
    finally:
        model.train(was)
    rows = []
    for r in out.numpy():
        end = np.flatnonzero(r == c.eos_id)
        rows.append(r[: end[0] + 1] if len(end) else r)
    return rows


def sample_tvae(
    bundle: Any,
    composer: Any = None,
    n: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    *,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    latent_scale: float = 1.0,
    max_tokens: Optional[int] = None,
) -> list[Score]:
    """``n`` samples in the style of ``composer`` as ``symusic.Score`` objects (module doc).

    ``bundle``: a tvae bundle folder or ``Bundle``. An unknown composer raises ``PartitaError``
    listing the known ones.
    """
    b = _bundle(bundle)
    if composer is None:
        raise PartitaError(f"pass a composer: this model knows {', '.join(b.model.config.labels)}")
    ids = sample_tvae_ids(b, composer=composer, n=n, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                          min_p=min_p, latent_scale=latent_scale, max_tokens=max_tokens)
    return [decode_safe(b.tokenizer, row)[0] for row in ids]
