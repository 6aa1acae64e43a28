"""MusicVAE (Roberts et al. 2018): a recurrent VAE over melody events, flat or hierarchical decoder.

Inputs are melody windows from ``partita.represent.melody``: ``x [B, T]`` long tensors of events
in [0, 130) (0..127 note-on, 128 note-off, 129 hold), ``T = bars * 16``.

* **Encoder**: event embedding -> bidirectional LSTM; the last forward and first backward hidden
  states of the top layer, concatenated, give ``mu`` (a Linear) and ``sigma`` (a Linear then
  softplus), the posterior ``q(z|x) = N(mu, sigma^2)``; ``z = mu + sigma * eps``. With
  ``encoder="hierarchical"`` the BiLSTM reads each bar on its own and a second BiLSTM reads the
  bars' summaries in order (8 times shorter recurrences for 16 bars: faster on a CPU).
* **Flat decoder** (``decoder="flat"``): one LSTM over all T steps; its initial state is
  ``tanh(Linear(z))`` and each step reads ``[embedding of the previous event, z]``.
* **Hierarchical decoder** (``decoder="hierarchical"``): a *conductor* LSTM, started from
  ``tanh(Linear(z))`` and reading z (and, with ``bar_position``, a one-hot of the bar's index: a
  conductor reading only a constant z learns slowly to tell its bars apart), emits one embedding
  ``c_k`` per 16-step bar; a *bottom*
  LSTM decodes each bar's 16 steps from ``c_k`` alone: its state starts from ``tanh(Linear(c_k))``,
  each step reads ``[previous event of this bar, c_k]``, and every bar starts from the start
  token. So bar k depends only on ``c_k`` (tested), whatever the other bars hold: the bottom LSTM
  cannot carry a long melody by itself and has to use the latent code, which is the point of the
  hierarchy (the paper's fix for "posterior collapse" on 16-bar sequences). All bars of a batch
  are decoded at once as a batch of ``B * bars`` rows.

* **Segment codes** (``segment_bars > 0``, hierarchical only): the window is cut into
  ``segment_bars``-bar segments, and a whole flat ``segment_bars``-bar MusicVAE (``self.segment``:
  trained first on short windows, where a flat VAE learns fast and well) encodes and decodes each
  of them. The 16-bar model is a VAE over the sequence of segment codes: a BiLSTM reads the
  segments' posterior means (``top_size`` units) into z, the conductor writes one vector per
  segment and a Linear turns it into that segment's code, which the segment model's decoder
  decodes. Trained with the segment model frozen (``freeze_segments``), the reconstruction term
  is the negative log-likelihood of each segment's posterior mean under
  ``N(written code, segment sigma^2)``: the conductor has to hit the codes the segment decoder
  reads, closely along the dimensions the segment posterior is sure of, loosely along the ones
  it ignores. Unfrozen, it is the event cross-entropy as in the other models.

Loss (Magenta's ``MusicVAE._compute_model_loss``): reconstruction cross-entropy summed over the
steps of a window, plus ``beta * max(KL - free_bits, 0)``, both averaged over the batch. Free bits
(given in bits, as in Magenta) let the first ``free_bits`` of information through for free, so
the KL term stops squeezing the code once it carries that much; ``beta`` rises towards
``max_beta`` as ``(1 - beta_rate ** step) * max_beta``.

Teacher forcing or scheduled sampling: with ``sampling_schedule="inverse_sigmoid"`` and rate k,
at training step s each decoder input is the model's own sample with probability
``1 - k / (k + exp(s / k))`` (Bengio et al. 2015, Magenta's schedule), else the true event;
``"constant"`` uses ``sampling_rate`` itself as the probability; ``"none"`` is teacher forcing.
With probability 0 the decoder runs over the whole sequence at once (fast); otherwise step by step.

Sampling noise is Gumbel noise drawn from a ``torch.Generator`` independently of the logits, so a
seed fixes the output, and a row's noise does not depend on what other rows computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partita.errors import PartitaError
from partita.models.config import ModelConfig
from partita.represent.melody import HOLD, NOTE_OFF, NUM_CLASSES, STEPS_PER_BAR

__all__ = [
    "MusicVAE",
    "MusicVAEConfig",
    "PRESETS",
    "beta_at",
    "free_bits_kl",
    "kl_divergence",
    "sampling_probability",
    "slerp",
]

START = NUM_CLASSES  # embedding row of the start token (the input before a window's, or a bar's, first step)
DECODERS = ("flat", "hierarchical")
ENCODERS = ("flat", "hierarchical")
SCHEDULES = ("none", "constant", "inverse_sigmoid")


@dataclass
class MusicVAEConfig(ModelConfig):
    """Everything that defines a MusicVAE; ``MusicVAEConfig.preset("small", bars=16, decoder="hierarchical")``."""

    kind: ClassVar[str] = "MusicVAE"

    bars: int = 2  # window length in 16-step bars (2 and 16 in the paper)
    decoder: str = "flat"  # "flat" | "hierarchical"
    encoder: str = "flat"  # "flat": one BiLSTM over all steps | "hierarchical": per bar, then over bars
    z_size: int = 512
    embed_size: int = 64  # event embedding (Magenta feeds one-hot vectors; an embedding is the same map, cheaper)
    enc_size: int = 2048  # encoder LSTM units per direction
    enc_layers: int = 1
    dec_size: int = 2048  # (bottom) decoder LSTM units
    dec_layers: int = 3
    conductor_size: int = 1024
    conductor_layers: int = 2
    bar_position: bool = False  # the conductor also reads which bar it is at (one-hot), not only z
    dropout: float = 0.0  # between stacked LSTM layers
    word_dropout: float = 0.0  # training: share of decoder inputs replaced by the start token
    free_bits: float = 48.0  # KL bits per window let through for free
    max_beta: float = 0.2
    beta_rate: float = 0.99999  # beta = (1 - beta_rate ** step) * max_beta; 0 = max_beta from the start
    sampling_schedule: str = "none"  # "none" (teacher forcing) | "constant" | "inverse_sigmoid"
    sampling_rate: float = 1000.0  # k of the inverse sigmoid (steps), or the constant probability
    segment_bars: int = 0  # > 0: a segment_bars-bar MusicVAE codes each segment; z codes the segment codes
    segment_z: int = 128  # the segment model's z_size
    top_size: int = 256  # units per direction of the BiLSTM over the segment codes
    freeze_segments: bool = True  # train only the top; loss: segment codes' likelihood, not events
    prior_components: int = 0  # 0: sample z from N(0, I); K: from a K-Gaussian mixture fitted to the training codes

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise PartitaError(f"decoder must be 'flat' or 'hierarchical', got {self.decoder!r}")
        if self.encoder not in ENCODERS:
            raise PartitaError(f"encoder must be 'flat' or 'hierarchical', got {self.encoder!r}")
        if self.sampling_schedule not in SCHEDULES:
            raise PartitaError(f"sampling_schedule must be one of {', '.join(SCHEDULES)}, got {self.sampling_schedule!r}")
        for name in ("bars", "z_size", "embed_size", "enc_size", "enc_layers", "dec_size", "dec_layers",
                     "conductor_size", "conductor_layers"):
            if int(getattr(self, name)) < 1:
                raise PartitaError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.word_dropout < 1:
            raise PartitaError(f"word_dropout is a probability in [0, 1), got {self.word_dropout}")
        if self.free_bits < 0 or self.max_beta < 0 or not 0 <= self.beta_rate <= 1:
            raise PartitaError("free_bits and max_beta must be >= 0 and beta_rate in [0, 1]")
        if self.sampling_schedule == "constant" and not 0 <= self.sampling_rate <= 1:
            raise PartitaError(f"a constant sampling_rate is a probability in [0, 1], got {self.sampling_rate}")
        if self.sampling_schedule == "inverse_sigmoid" and self.sampling_rate < 1:
            raise PartitaError(f"the inverse-sigmoid sampling_rate k must be >= 1, got {self.sampling_rate}")
        if self.prior_components < 0:
            raise PartitaError(f"prior_components must be >= 0, got {self.prior_components}")
        if self.segment_bars < 0 or (self.segment_bars and (self.segment_z < 1 or self.top_size < 1)):
            raise PartitaError("segment_bars must be >= 0, segment_z and top_size >= 1")
        if self.segment_bars:
            if self.decoder != "hierarchical":
                raise PartitaError("segment codes (segment_bars > 0) need the hierarchical decoder")
            if self.bars % self.segment_bars or self.bars == self.segment_bars:
                raise PartitaError(f"{self.bars} bars do not split into several {self.segment_bars}-bar segments")

    @property
    def units(self) -> int:
        """How many vectors the conductor writes: one per bar, or one per segment."""
        return self.bars // self.segment_bars if self.segment_bars else self.bars

    def segment_config(self) -> "MusicVAEConfig":
        """The flat short-window MusicVAE inside a segment-code model."""
        if not self.segment_bars:
            raise PartitaError("this MusicVAE has no segment model (segment_bars = 0)")
        return MusicVAEConfig(bars=self.segment_bars, decoder="flat", encoder="flat", z_size=self.segment_z,
                              embed_size=self.embed_size, enc_size=self.enc_size, enc_layers=self.enc_layers,
                              dec_size=self.dec_size, dec_layers=self.dec_layers, dropout=self.dropout)

    @property
    def steps(self) -> int:
        return self.bars * STEPS_PER_BAR


#: Named configurations. ``tiny``: tests (~50k parameters). ``small``: trains on one CPU thread in
#: minutes (~2M parameters, under 5 MB in float16). ``base``: the paper's sizes (2-bar: a 2048-unit
#: encoder and a 3 x 2048 decoder; hierarchical: 2 x 1024 conductor), a GPU model.
PRESETS: dict[str, MusicVAEConfig] = {
    "tiny": MusicVAEConfig(z_size=16, embed_size=16, enc_size=32, dec_size=32, dec_layers=1, conductor_size=32,
                           conductor_layers=1, free_bits=0.0, max_beta=0.01, beta_rate=0.0),
    "small": MusicVAEConfig(z_size=128, embed_size=32, enc_size=256, dec_size=256, dec_layers=2, conductor_size=256,
                            conductor_layers=1, free_bits=48.0, max_beta=0.2, beta_rate=0.999,
                            sampling_schedule="inverse_sigmoid", sampling_rate=1000.0),
    "base": MusicVAEConfig(),
}
MusicVAEConfig.presets = PRESETS


# --- the arithmetic of the loss and the schedules (module functions: tested on their own) --------


def kl_divergence(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) in nats, summed over the last axis: one value per example."""
    return 0.5 * (sigma.pow(2) + mu.pow(2) - 1.0 - 2.0 * torch.log(sigma)).sum(-1)


def free_bits_kl(kl: Tensor, free_bits: float) -> Tensor:
    """The KL cost of each example after ``free_bits`` bits (``free_bits * ln 2`` nats) go free."""
    return torch.clamp(kl - free_bits * math.log(2.0), min=0.0)


def beta_at(step: int, max_beta: float, beta_rate: float) -> float:
    """The KL weight at a training step: ``(1 - beta_rate ** step) * max_beta`` (rate 0: constant)."""
    if beta_rate == 0:
        return float(max_beta)
    return float((1.0 - beta_rate ** max(step, 0)) * max_beta)


def sampling_probability(step: int, schedule: str, rate: float) -> float:
    """Probability that a decoder input is the model's own sample at a training step.

    ``inverse_sigmoid``: ``1 - k / (k + exp(step / k))`` with ``k = rate``: about ``1 / (k + 1)`` at
    step 0, one half at ``step = k ln k``, and towards 1 after that.
    """
    if schedule == "none":
        return 0.0
    if schedule == "constant":
        return float(rate)
    if schedule == "inverse_sigmoid":
        k = float(rate)
        x = step / k
        if x > 700:  # exp would overflow; the probability is 1 to double precision long before
            return 1.0
        return 1.0 - k / (k + math.exp(x))
    raise PartitaError(f"unknown sampling schedule {schedule!r}")


def slerp(z0: Tensor, z1: Tensor, t: float) -> Tensor:
    """Spherical interpolation between latent vectors (last axis), exactly ``z0`` at 0 and ``z1`` at 1.

    In high dimensions a Gaussian's mass lies on a shell; a straight line between two codes cuts
    inside it (through codes the decoder never saw), a great-circle arc stays near the shell.
    Nearly parallel vectors fall back to linear interpolation.
    """
    if t == 0:
        return z0.clone()
    if t == 1:
        return z1.clone()
    n0, n1 = z0 / z0.norm(dim=-1, keepdim=True).clamp_min(1e-12), z1 / z1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    omega = torch.arccos((n0 * n1).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    arc = (torch.sin((1 - t) * omega) / so) * z0 + (torch.sin(t * omega) / so) * z1
    line = (1 - t) * z0 + t * z1
    return torch.where(so.abs() < 1e-6, line, arc)


def _gumbel(shape, generator: Optional[torch.Generator], device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device if generator is None else generator.device)
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10))).to(device)


def pick(logits: Tensor, temperature: float, generator: Optional[torch.Generator]) -> Tensor:
    """One event per row: argmax at temperature 0, else a sample (Gumbel-max) at that temperature."""
    if temperature <= 0:
        return logits.argmax(-1)
    return (logits / temperature + _gumbel(logits.shape, generator, logits.device)).argmax(-1)


def _ends(out: Tensor, hidden: int) -> Tensor:
    """A BiLSTM's summary of each row: the forward state after the last step and the backward
    state after the first one, ``[N, 2 * hidden]``, read from the output sequence rather than
    ``h_n``: same values, but on CPU torch's LSTM backward through ``h_n`` alone is ~10x slower."""
    return torch.cat([out[:, -1, :hidden], out[:, 0, hidden:]], dim=-1)


class _InitState(nn.Module):
    """``tanh(Linear(v))`` split into the (h, c) initial state of a stacked LSTM."""

    def __init__(self, in_size: int, hidden: int, layers: int):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.proj = nn.Linear(in_size, 2 * hidden * layers)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.tanh(self.proj(v)).view(v.shape[0], 2, self.layers, self.hidden)
        return s[:, 0].transpose(0, 1).contiguous(), s[:, 1].transpose(0, 1).contiguous()


class _Decoder(nn.Module):
    """An autoregressive LSTM over events, conditioned on one vector per row (z, or a bar's c_k)."""

    def __init__(self, cond_size: int, embed_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(NUM_CLASSES + 1, embed_size)  # + the start token
        self.init = _InitState(cond_size, hidden, layers)
        self.lstm = nn.LSTM(embed_size + cond_size, hidden, layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, NUM_CLASSES)

    def _inputs(self, prev: Tensor, cond: Tensor) -> Tensor:
        e = self.embed(prev)
        return torch.cat([e, cond[:, None, :].expand(-1, e.shape[1], -1)], dim=-1)

    def forced(self, cond: Tensor, x: Tensor, p_sample: float = 0.0,
               generator: Optional[torch.Generator] = None, word_dropout: float = 0.0) -> Tensor:
        """Logits ``[N, L, 130]`` for targets ``x [N, L]``: teacher forcing, or scheduled sampling
        (each input is the model's own sample, drawn at temperature 1, with probability ``p_sample``).
        ``word_dropout``: each teacher-forced input becomes the start token with that probability,
        so the decoder has to find those steps' context in its condition (Bowman et al. 2016)."""
        start = torch.full_like(x[:, :1], START)
        state = self.init(cond)
        self.sampled_share = 0.0
        if p_sample <= 0:
            prev = torch.cat([start, x[:, :-1]], 1)
            if word_dropout > 0:
                coin = torch.rand(prev.shape, generator=generator,
                                  device=prev.device if generator is None else generator.device).to(prev.device)
                prev = torch.where(coin < word_dropout, torch.full_like(prev, START), prev)
            h, _ = self.lstm(self._inputs(prev, cond), state)
            return self.out(h)
        logits, prev, took = [], start, 0
        for t in range(x.shape[1]):
            h, state = self.lstm(self._inputs(prev, cond), state)
            step = self.out(h)
            logits.append(step)
            with torch.no_grad():
                own = pick(step[:, 0].detach(), 1.0, generator)
                coin = torch.rand(own.shape, generator=generator,
                                  device=own.device if generator is None else generator.device).to(own.device)
                prev = torch.where(coin < p_sample, own, x[:, t])[:, None]
                if t + 1 < x.shape[1]:
                    took += int((coin < p_sample).sum())
        # Share of the inputs after the first that were the model's own samples (tests read it).
        self.sampled_share = took / max(1, x.shape[0] * (x.shape[1] - 1))
        return torch.cat(logits, 1)

    def generate(self, cond: Tensor, length: int, temperature: float,
                 generator: Optional[torch.Generator]) -> Tensor:
        """Events ``[N, length]`` decoded one step at a time from the decoder's own outputs."""
        state = self.init(cond)
        prev = torch.full((cond.shape[0], 1), START, dtype=torch.long, device=cond.device)
        out = []
        for _ in range(length):
            h, state = self.lstm(self._inputs(prev, cond), state)
            prev = pick(self.out(h)[:, 0], temperature, generator)[:, None]
            out.append(prev)
        return torch.cat(out, 1)


class MusicVAE(nn.Module):
    """Recurrent VAE over melody windows (see the module doc)."""

    family = "musicvae"
    config_class = MusicVAEConfig

    def __init__(self, config: MusicVAEConfig):
        super().__init__()
        self.config = c = config
        if c.prior_components:  # filled by fit_prior after training (partita.train.vae)
            k = c.prior_components
            self.register_buffer("prior_weights", torch.full((k,), 1.0 / k))
            self.register_buffer("prior_means", torch.zeros(k, c.z_size))
            self.register_buffer("prior_scales", torch.eye(c.z_size).repeat(k, 1, 1))
        if c.segment_bars:
            self.segment = MusicVAE(c.segment_config())
            self.top_encoder = nn.LSTM(c.segment_z, c.top_size, 1, batch_first=True, bidirectional=True)
            self.to_mu = nn.Linear(2 * c.top_size, c.z_size)
            self.to_sigma = nn.Linear(2 * c.top_size, c.z_size)
            self._conductor(c)
            self.to_segment = nn.Linear(c.conductor_size, c.segment_z)
            if c.freeze_segments:
                self.segment.requires_grad_(False)
            return
        self.embed = nn.Embedding(NUM_CLASSES, c.embed_size)
        self.encoder = nn.LSTM(c.embed_size, c.enc_size, c.enc_layers, batch_first=True, bidirectional=True,
                               dropout=c.dropout if c.enc_layers > 1 else 0.0)
        if c.encoder == "hierarchical":  # a second BiLSTM over the bars' summaries
            self.bar_encoder = nn.LSTM(2 * c.enc_size, c.enc_size, 1, batch_first=True, bidirectional=True)
        self.to_mu = nn.Linear(2 * c.enc_size, c.z_size)
        self.to_sigma = nn.Linear(2 * c.enc_size, c.z_size)
        if c.decoder == "flat":
            self.decoder = _Decoder(c.z_size, c.embed_size, c.dec_size, c.dec_layers, c.dropout)
        else:
            self._conductor(c)
            self.decoder = _Decoder(c.conductor_size, c.embed_size, c.dec_size, c.dec_layers, c.dropout)

    def _conductor(self, c: MusicVAEConfig) -> None:
        self.conductor_init = _InitState(c.z_size, c.conductor_size, c.conductor_layers)
        self.conductor = nn.LSTM(c.z_size + (c.units if c.bar_position else 0), c.conductor_size,
                                 c.conductor_layers, batch_first=True,
                                 dropout=c.dropout if c.conductor_layers > 1 else 0.0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` codes ``[n, z_size]`` to decode into new melodies: from N(0, I), or from the mixture
        fitted to the training windows' codes (``prior_components``; ex-post density estimation,
        Ghosh et al. 2020). With free bits the codes a model uses can sit far from N(0, I): it then
        reconstructs and interpolates well and decodes random N(0, I) codes badly."""
        device = next(self.parameters()).device
        eps = torch.randn(n, self.config.z_size, generator=generator)
        if not self.config.prior_components:
            return eps.to(device)
        k = torch.multinomial(self.prior_weights.float().cpu(), n, replacement=True, generator=generator)
        means, scales = self.prior_means.float().cpu()[k], self.prior_scales.float().cpu()[k]
        return (means + (scales @ eps[..., None])[..., 0]).to(device)

    # --- encoder -----------------------------------------------------------------------------

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.steps:
            raise PartitaError(
                f"this MusicVAE reads {self.config.bars}-bar windows ([batch, {self.config.steps}] events), got {tuple(x.shape)}"
            )
        return x.long()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, each ``[B, z_size]``, of the posterior of windows ``x [B, T]``."""
        x = self._check(x)
        c = self.config
        if c.segment_bars:
            return self._encode_codes(self.encode_segments(x)[0])
        if c.encoder == "hierarchical":  # each bar on its own (B * bars rows), then the bars in order
            top = _ends(self.encoder(self.embed(x.reshape(-1, STEPS_PER_BAR)))[0], c.enc_size)
            top = _ends(self.bar_encoder(top.reshape(x.shape[0], c.bars, -1))[0], c.enc_size)
        else:
            top = _ends(self.encoder(self.embed(x))[0], c.enc_size)
        return self.to_mu(top), F.softplus(self.to_sigma(top)) + 1e-6

    def _segments(self, x: Tensor) -> Tensor:
        """Windows ``[B, T]`` as segment rows ``[B * units, segment steps]``, each spelt as a window of
        its own: a NOTE_OFF before the segment's first note-on (the end of a note from the segment
        before) reads as HOLD, as in the short windows the segment model learnt from."""
        rows = x.reshape(-1, self.config.segment_bars * STEPS_PER_BAR)
        started = torch.cumsum((rows < NOTE_OFF).long(), 1) > 0
        return torch.where((rows == NOTE_OFF) & ~started, torch.full_like(rows, HOLD), rows)

    def encode_segments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The segment model's posterior ``(mu, sigma)`` of each segment, each ``[B, units, segment_z]``."""
        c = self.config
        mu, sigma = self.segment.encode(self._segments(self._check(x)))
        return mu.view(x.shape[0], c.units, -1), sigma.view(x.shape[0], c.units, -1)

    def _encode_codes(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        top = _ends(self.top_encoder(codes)[0], self.config.top_size)
        return self.to_mu(top), F.softplus(self.to_sigma(top)) + 1e-6

    def segment_codes(self, z: Tensor) -> Tensor:
        """The codes the conductor writes for the segments, ``[B, units, segment_z]``."""
        return self.to_segment(self.conduct(z))

    # --- decoders ----------------------------------------------------------------------------

    def conduct(self, z: Tensor) -> Tensor:
        """The conductor's bar embeddings ``[B, bars, conductor_size]`` (hierarchical decoder only)."""
        if self.config.decoder != "hierarchical":
            raise PartitaError("conduct() belongs to the hierarchical decoder; this model's decoder is flat")
        c = self.config
        inputs = z[:, None, :].expand(-1, c.units, -1)
        if c.bar_position:
            where = torch.eye(c.units, dtype=z.dtype, device=z.device)[None].expand(z.shape[0], -1, -1)
            inputs = torch.cat([inputs, where], -1)
        out, _ = self.conductor(inputs, self.conductor_init(z))
        return out

    def decode_bars(self, c: Tensor, x: Optional[Tensor] = None, *, temperature: float = 0.0,
                    generator: Optional[torch.Generator] = None, p_sample: float = 0.0,
                    word_dropout: float = 0.0) -> Tensor:
        """The bottom decoder on bar embeddings ``c [B, U, H]``, all bars at once as ``B * U`` rows.

        With targets ``x [B, U * 16]``: logits ``[B, U * 16, 130]`` (teacher forcing, or scheduled
        sampling with ``p_sample``); without: events ``[B, U * 16]`` decoded at ``temperature``.
        """
        B, U, H = c.shape
        rows = c.reshape(B * U, H)
        if x is None:
            return self.decoder.generate(rows, STEPS_PER_BAR, temperature, generator).reshape(B, U * STEPS_PER_BAR)
        logits = self.decoder.forced(rows, x.reshape(B * U, STEPS_PER_BAR), p_sample, generator, word_dropout)
        return logits.reshape(B, U * STEPS_PER_BAR, NUM_CLASSES)

    def decode_logits(self, z: Tensor, x: Tensor, *, p_sample: float = 0.0,
                      generator: Optional[torch.Generator] = None, word_dropout: float = 0.0) -> Tensor:
        """Logits ``[B, T, 130]`` of targets ``x`` given codes ``z`` (teacher forcing unless ``p_sample``)."""
        x = self._check(x)
        if self.config.segment_bars:
            rows = self.segment_codes(z).reshape(-1, self.config.segment_z)
            logits = self.segment.decoder.forced(rows, x.reshape(rows.shape[0], -1), p_sample, generator, word_dropout)
            return logits.reshape(x.shape[0], self.config.steps, NUM_CLASSES)
        if self.config.decoder == "flat":
            return self.decoder.forced(z, x, p_sample, generator, word_dropout)
        return self.decode_bars(self.conduct(z), x, p_sample=p_sample, generator=generator, word_dropout=word_dropout)

    @torch.no_grad()
    def decode(self, z: Tensor, *, temperature: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """Events ``[B, T]`` from codes ``z [B, z_size]``: greedy at temperature 0, else sampled."""
        c = self.config
        if c.segment_bars:
            rows = self.segment_codes(z).reshape(-1, c.segment_z)
            events = self.segment.decoder.generate(rows, c.segment_bars * STEPS_PER_BAR, temperature, generator)
            return events.reshape(z.shape[0], c.steps)
        if self.config.decoder == "flat":
            return self.decoder.generate(z, self.config.steps, temperature, generator)
        return self.decode_bars(self.conduct(z), temperature=temperature, generator=generator)

    # --- training ----------------------------------------------------------------------------

    def forward(self, x: Tensor, *, step: int = 0, sample_z: bool = True, p_sample: Optional[float] = None,
                generator: Optional[torch.Generator] = None,
                segment_posterior: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Optional[Tensor], dict[str, Tensor]]:
        """``(logits [B, T, 130], losses)`` for windows ``x [B, T]`` at training step ``step``.

        ``losses``: ``loss`` (what to minimise), ``recon`` (cross-entropy per window, nats),
        ``kl`` (nats per window), ``kl_cost`` (after free bits), ``beta``, ``p_sample`` and
        ``accuracy`` (per step, argmax vs target). ``sample_z=False`` decodes from ``mu`` (evaluation);
        ``p_sample`` overrides the scheduled-sampling probability of the config's schedule.
        With frozen segments, ``segment_posterior`` may give ``encode_segments(x)`` already computed,
        and in training mode no logits are computed (``None``; no ``accuracy``): the loss does not
        read them, and the decoder pass would cost 5x the rest of the step.
        """
        c = self.config
        x = self._check(x)
        codes_only = c.segment_bars and c.freeze_segments  # the loss is the segment codes' likelihood
        if codes_only:
            if segment_posterior is None:
                with torch.no_grad():
                    segment_posterior = self.encode_segments(x)
            seg_mu, seg_sigma = segment_posterior
            mu, sigma = self._encode_codes(seg_mu)
        else:
            mu, sigma = self.encode(x)
        if sample_z:
            eps = torch.randn(mu.shape, generator=generator,
                              device=mu.device if generator is None else generator.device).to(mu.device)
            z = mu + sigma * eps
        else:
            z = mu
        if p_sample is None:
            p_sample = sampling_probability(step, c.sampling_schedule, c.sampling_rate) if self.training else 0.0
        if codes_only:
            codes = self.segment_codes(z)
            recon = (0.5 * ((codes - seg_mu) / seg_sigma).pow(2)).sum((1, 2)).mean()
            logits = None
            if not self.training:  # for the accuracy only: the frozen decoder, teacher-forced
                with torch.no_grad():
                    rows = codes.reshape(-1, c.segment_z)
                    logits = self.segment.decoder.forced(rows, x.reshape(rows.shape[0], -1)).reshape(*x.shape, NUM_CLASSES)
        else:
            logits = self.decode_logits(z, x, p_sample=p_sample, generator=generator,
                                        word_dropout=c.word_dropout if self.training else 0.0)
            recon = F.cross_entropy(logits.reshape(-1, NUM_CLASSES), x.reshape(-1), reduction="none")
            recon = recon.view(x.shape).sum(1).mean()
        kl = kl_divergence(mu, sigma)
        kl_cost = free_bits_kl(kl, c.free_bits).mean()
        beta = beta_at(step, c.max_beta, c.beta_rate)
        losses = {
            "loss": recon + beta * kl_cost,
            "recon": recon,
            "kl": kl.mean(),
            "kl_cost": kl_cost,
            "beta": torch.tensor(beta),
            "p_sample": torch.tensor(float(p_sample)),
        }
        if logits is not None:
            with torch.no_grad():
                losses["accuracy"] = (logits.argmax(-1) == x).float().mean()
        return logits, losses
