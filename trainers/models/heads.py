"""Sequence heads over cached frame features: (B, T, D) float -> (B, C) logits. One registry.

- `lstm`, `gru`, `rnn`: recurrent layers, classified from the last time step's hidden state
  (the LRCN head of the seed studies; the plain RNN one of them compared it with).
- `late-fusion`: the T frame features concatenated -> MLP (another seed's baseline).
- `mean`: the average over time -> linear. A bag of frames: it cannot tell a clip from the
  same clip played backwards, which is the point of keeping it.
- `attention`: a small temporal transformer (self-attention with learned positions) -> mean pool.
- `attentive-probe`: V-JEPA 2's probe of frozen features: (layers - 1) self-attention blocks, then
  a learned query cross-attends over every position (attentive pooling) -> linear.

Every head is preceded by `Standardize`: per-dimension mean and std of the training features,
kept as buffers in the checkpoint, so heads see unit-scale features whatever the backbone (the
change over time that `centred` keeps is smaller, a median 0.16-0.76 of that per dimension on the
stores of BENCHMARKS.md; scaling it to unit size instead was measured and lost). Then the
head's temporal input (`--temporal-input`, TEMPORAL_INPUTS), what it is shown of the sequence:
`raw` the standardised features; `centred` each clip's own mean over time removed (what changes,
not how the clip looks: a group's appearance is constant over its clips, its motion is not);
`deltas` the differences of consecutive frames (the first is zero); `centred+deltas` both,
concatenated (twice the width). The default `auto` (DEFAULT_TEMPORAL_INPUT) is `centred` for
every head that reads the order (on the demo's `har synth` store under the group split it lifted
lstm from 0.88 to 0.98 test top-1 over 3 seeds) and `raw` for `mean` (whose average over time
would be zero after centring). `deltas` won on a second synth set (leave-one-group-out) but lost
on the independent generator, so it is not the default: BENCHMARKS.md "Heads that learn motion"
has every figure.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.core.registry import Registry
from trainers.models.head_config import HeadConfig
from trainers.training import limits

Builder = Callable[[int, int, int, HeadConfig], nn.Module]  # (dim, classes, frames, cfg) -> module
HEADS: Registry[Builder] = Registry("head")
register = HEADS.register   # @register(name, about)

# the recurrent cells a name chooses (the heads here, and the recurrent video models of video_models)
CELLS: Registry[type[nn.RNNBase]] = Registry("recurrent cell")
CELLS.add("lstm", nn.LSTM, "long short-term memory (Hochreiter & Schmidhuber)")
CELLS.add("gru", nn.GRU, "gated recurrent unit (Cho et al.)")
CELLS.add("rnn", nn.RNN, "plain tanh RNN (Elman)")


def check(name: str) -> None:
    HEADS.get(name)


def check_options(name: str, cfg: HeadConfig) -> None:
    """The options of head `name` in their allowed ranges (ValueError naming the value)."""
    check(name)
    cfg.validate(TEMPORAL_INPUTS)
    if name in ("attention", "attentive-probe"):
        check_width(name, cfg)


def check_width(name: str, cfg: HeadConfig) -> None:
    """An attention head splits --hidden into --heads equal parts."""
    if cfg.hidden % cfg.heads:
        raise ValueError(f"--hidden {cfg.hidden} must be a multiple of --heads {cfg.heads} for the {name} head")


def param_count(name: str, dim: int, classes: int, frames: int, cfg: HeadConfig) -> int:
    """Parameters of head `name` with these options, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build(name, dim, classes, frames, cfg)
    return sum(p.numel() for p in model.parameters())


def training_bytes(name: str, dim: int, classes: int, frames: int, cfg: HeadConfig, batch: int) -> tuple[int, int]:
    """(parameters, bytes to train them): weights, gradients and Adam's moments (16 bytes a
    parameter) plus a rough batch: its (B, T, D) input and the activations kept for backward,
    bounded by a few (B, T, hidden) tensors per layer and direction (fp32)."""
    params = param_count(name, dim, classes, frames, cfg)
    dirs = 2 if cfg.bidirectional else 1
    batch_bytes = 4 * batch * frames * (dim + 8 * cfg.hidden * cfg.layers * dirs)
    return params, params * limits.BYTES_PER_TRAINED_PARAM + batch_bytes


def build(name: str, dim: int, classes: int, frames: int, cfg: HeadConfig,
          mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> nn.Module:
    """Standardize(mean, std) and the temporal input, followed by the head `name`."""
    check(name)
    cfg.validate()
    temporal = temporal_input(name, cfg.temporal_input)
    width = dim * (2 if temporal == "centred+deltas" else 1)
    return nn.Sequential(Standardize(dim, mean, std, temporal), HEADS.get(name)(width, classes, frames, cfg))


# `--temporal-input auto`: each head's input as chosen on `har synth` under the group split
# (BENCHMARKS.md "Heads that learn motion"); a training run records the concrete name
# (HeadTrainConfig.resolved), so a later change here never changes what a finished run was.
DEFAULT_TEMPORAL_INPUT = {"mean": "raw"}   # every head that reads the order: centred


def default_temporal_input(head: str) -> str:
    return DEFAULT_TEMPORAL_INPUT.get(head, "centred")


def temporal_input(head: str, asked: str) -> str:
    """The temporal input head `head` gets for `asked`. A run records the concrete name; `auto` in
    a config.json is a run of the first version of auto (2026-12-02, before runs recorded it):
    centred, raw for the bag of frames."""
    if asked != "auto":
        return asked
    return "raw" if head == "mean" else "centred"


# what a head is shown of the feature sequence (after standardisation): name -> (B, T, D) -> (B, T, D')
TEMPORAL_INPUTS: Registry[Callable[[torch.Tensor], torch.Tensor] | None] = Registry("temporal input")


# a choice, not a function: each head's default, made concrete by temporal_input() before a head is built
TEMPORAL_INPUTS.add("auto", None, "the head's default: centred, raw for mean")


@TEMPORAL_INPUTS.register("raw", "the standardised features")
def _raw(x):
    return x


@TEMPORAL_INPUTS.register("centred", "each clip's mean over time removed: the change, not the look")
def _centred(x):
    return x - x.mean(dim=1, keepdim=True)


@TEMPORAL_INPUTS.register("deltas", "differences of consecutive frames (the first is zero)")
def _deltas(x):
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)


@TEMPORAL_INPUTS.register("centred+deltas", "centred features and deltas side by side (2 x D)")
def _both(x):
    return torch.cat([_centred(x), _deltas(x)], dim=2)


class Standardize(nn.Module):
    """Unit scale per dimension (the training features' mean and std), then the temporal input."""

    def __init__(self, dim: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 temporal: str = "raw"):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float().clone())
        self.register_buffer("inv_std", torch.ones(dim) if std is None else 1.0 / std.float().clamp_min(1e-6))
        self.temporal = TEMPORAL_INPUTS.get(temporal)
        if self.temporal is None:
            raise ValueError(f"temporal input {temporal!r} is a choice resolved per head (heads.temporal_input); "
                             "build with the concrete name")

    def forward(self, x):  # (B, T, D)
        return self.temporal((x - self.mean) * self.inv_std)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], dim: int, classes: int, cfg: HeadConfig):
        super().__init__()
        self.rnn = cell(dim, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
                        dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), classes)

    def forward(self, x):  # (B, T, D)
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h          # LSTM returns (h_n, c_n); (layers * dirs, B, hidden)
        return self.fc(self.drop(_last_layer(h, self.rnn.bidirectional)))


def _last_layer(h: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """(layers * dirs, B, hidden) final states -> (B, hidden * dirs) of the last layer: forward after
    t=T-1, backward after t=0."""
    return torch.cat([h[-2], h[-1]], dim=1) if bidirectional else h[-1]


class LSTMHead(Recurrent):
    """nn.LSTM's parameters and results (to float rounding), computed so that training on frozen
    features is fast on a CPU: each layer's input projection is one large matrix product over all
    time steps (bf16 under autocast), and as the features need no gradient, its backward computes
    the weight gradient only, a third less work than nn.LSTM's, which always returns the input's.
    The forget gates start biased open (+1, Jozefowicz et al. 2015), so early training keeps memory."""

    def __init__(self, cell: type[nn.RNNBase], dim: int, classes: int, cfg: HeadConfig):
        super().__init__(cell, dim, classes, cfg)
        h = cfg.hidden
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[h:2 * h] = 1.0                      # gate order: input, forget, cell, output
                elif name.startswith("bias_hh"):
                    p[h:2 * h] = 0.0

    def forward(self, x):  # (B, T, D)
        rnn = self.rnn
        dirs = 2 if rnn.bidirectional else 1
        finals = []
        for layer in range(rnn.num_layers):
            outs = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
                gx = nn.functional.linear(x, w_ih).float() + (getattr(rnn, "bias_ih" + sfx) + getattr(rnn, "bias_hh" + sfx))
                seq, h = _lstm_scan(gx, w_hh.float(), reverse=bool(d))  # (B, T, H), (B, H)
                outs.append(seq)
                finals.append(h)
            x = torch.cat(outs, dim=2) if dirs == 2 else outs[0]
            if layer + 1 < rnn.num_layers and rnn.dropout > 0:
                x = nn.functional.dropout(x, rnn.dropout, self.training)
        return self.fc(self.drop(_last_layer(torch.stack(finals), rnn.bidirectional)))


def _lstm_scan(gx: torch.Tensor, w_hh: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM recurrence over precomputed input gates gx (B, T, 4H) in PyTorch's gate order
    (input, forget, cell, output): (outputs (B, T, H), final hidden state (B, H))."""
    b, t_len, four_h = gx.shape
    h = gx.new_zeros(b, four_h // 4)
    c = h
    w = w_hh.t()
    outs = [h] * t_len
    for t in (range(t_len - 1, -1, -1) if reverse else range(t_len)):
        i, f, g, o = torch.addmm(gx[:, t], h, w).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs[t] = h
    return torch.stack(outs, dim=1), h


@register("lstm", "LSTM, last hidden state (LRCN head)")
def _lstm(dim, classes, frames, cfg):
    return LSTMHead(CELLS.get("lstm"), dim, classes, cfg)


@register("gru", "GRU, last hidden state")
def _gru(dim, classes, frames, cfg):
    return Recurrent(CELLS.get("gru"), dim, classes, cfg)


@register("rnn", "plain RNN")
def _rnn(dim, classes, frames, cfg):
    return Recurrent(CELLS.get("rnn"), dim, classes, cfg)


class LateFusion(nn.Module):
    def __init__(self, dim: int, classes: int, frames: int, cfg: HeadConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(1), nn.Dropout(cfg.dropout)]
        width = dim * frames
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        layers.append(nn.Linear(width, classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):  # (B, T, D) -> (B, T*D) -> MLP
        return self.mlp(x)


@register("late-fusion", "frame features concatenated -> MLP")
def _late_fusion(dim, classes, frames, cfg):
    return LateFusion(dim, classes, frames, cfg)


class MeanPool(nn.Module):
    def __init__(self, dim: int, classes: int, cfg: HeadConfig):
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):  # (B, T, D) -> (B, D): order is lost here, on purpose
        return self.fc(self.drop(x.mean(dim=1)))


@register("mean", "mean over time -> linear (bag of frames)")
def _mean(dim, classes, frames, cfg):
    return MeanPool(dim, classes, cfg)


def sinusoid(frames: int, width: int) -> torch.Tensor:
    """(1, frames, width) sine/cosine position table (Vaswani et al.), unit amplitude."""
    pos = torch.arange(frames, dtype=torch.float32)[:, None]
    freq = torch.exp(-torch.arange(0, width, 2, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / width))
    table = torch.zeros(frames, width)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return table[None]


class TemporalTransformer(nn.Module):
    """Project to `hidden`, add position embeddings (learned, from a sine table; without them
    attention is a bag of frames too), `layers` pre-norm transformer encoder layers, mean over time, classify."""

    def __init__(self, dim: int, classes: int, frames: int, cfg: HeadConfig):
        super().__init__()
        check_width("attention", cfg)
        self.proj = nn.Linear(dim, cfg.hidden)
        self.pos = nn.Parameter(sinusoid(frames, cfg.hidden))  # learned, starting from the sine table
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=2 * cfg.hidden,
                                           dropout=min(cfg.dropout, 0.1), batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden, classes)

    def forward(self, x):  # (B, T, D)
        h = self.proj(x) + self.pos[:, : x.shape[1]]      # (B, T, hidden)
        h = self.norm(self.encoder(h)).mean(dim=1)        # (B, hidden)
        return self.fc(self.drop(h))


@register("attention", "temporal transformer with position embeddings")
def _attention(dim, classes, frames, cfg):
    return TemporalTransformer(dim, classes, frames, cfg)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention then MLP: queries (B, Q, H) read keys/values (B, T, H) -> (B, Q, H)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, q, x):
        kv = self.norm_kv(x)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class AttentiveProbe(nn.Module):
    """The attentive probe V-JEPA 2 evaluates frozen features with (Assran et al. 2025): project to
    `hidden`, `layers - 1` pre-norm self-attention blocks over the feature positions, then one
    cross-attention block in which a learned query token reads every position (attentive
    pooling instead of a mean), a linear classifier on that token. Position embeddings (learned,
    from a sine table) are added first: a video backbone's tokens carry their place already, a
    2D backbone's per-frame features do not, and without them the probe is a bag of frames."""

    def __init__(self, dim: int, classes: int, frames: int, cfg: HeadConfig):
        super().__init__()
        check_width("attentive-probe", cfg)
        drop = min(cfg.dropout, 0.1)
        self.proj = nn.Linear(dim, cfg.hidden)
        self.pos = nn.Parameter(sinusoid(frames, cfg.hidden))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=4 * cfg.hidden, dropout=drop,
                                       batch_first=True, norm_first=True, activation="gelu")
            for _ in range(cfg.layers - 1))
        self.query = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.pool = CrossAttentionBlock(cfg.hidden, cfg.heads, drop)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden, classes)

    def forward(self, x):  # (B, T, D)
        h = self.proj(x) + self.pos[:, : x.shape[1]]                 # (B, T, hidden)
        for block in self.blocks:
            h = block(h)
        q = self.query + torch.zeros_like(h[:, :1])                    # (B, 1, hidden); traces for any batch
        q = self.pool(q, h)[:, 0]                                      # (B, hidden): the query's reading
        return self.fc(self.drop(self.norm(q)))


@register("attentive-probe", "V-JEPA 2's attentive probe: a learned query cross-attends over the positions")
def _attentive_probe(dim, classes, frames, cfg):
    return AttentiveProbe(dim, classes, frames, cfg)


def cost(name: str, options: HeadConfig, dim: int = 2048, frames: int = 16, classes: int = 101) -> dict:
    """Parameters and GFLOPs of one clip of ResNet-152 features (T x 2048) with these options."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(name, dim, classes, frames, options)
        x = torch.zeros(1, frames, dim)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "gflops": counter.get_total_flops() / 1e9, "input": f"{frames}x{dim} features",
            "pretrained": ("-",), "about": HEADS.about(name)}
