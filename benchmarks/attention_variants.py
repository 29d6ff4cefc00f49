"""Variants of the `attention` head, scored by leave-one-group-out like the defaults (head_defaults.py).

    .venv/bin/python benchmarks/attention_variants.py VARIANT [head_defaults.py's arguments]
    e.g. .venv/bin/python benchmarks/attention_variants.py tokdrop=0.3 --features motion/r18none.zarr \
             --recipes demo --heads attention --threads 1 --rules best --json tokdrop.json

A study, not a head: each variant patches `heads.TemporalTransformer` (or the loop) in this
process only, then runs `head_defaults.main` with the remaining arguments, which prints its JSON
(per fold: the test top-1 of the epoch a rule picks, the curves). Settings that are already
options (`--set hidden=64`, `--set layers=2`, `--set temporal_input=raw`) need no variant: `base`.

Variants (P a probability, D a decay):
    base          the head as it is
    tokdrop=P     dropout on the tokens after the projection and the position embedding
    framedrop=P   whole time steps dropped while training (masked from attention and the pooling)
    indrop=P      dropout on the standardised input features
    fixedpos      the position table kept at its sine values (not learned)
    cls           a learned class token read out instead of the mean over time
    conv          a depthwise temporal convolution (kernel 3, residual) before the encoder
    ema=D         after every epoch the weights averaged (w_avg = D w_avg + (1 - D) w), validated and saved
    flat          the classifier reads the T output tokens side by side (T x hidden) instead of their mean
    segpool=K     the mean over each of K equal stretches of time, side by side (K x hidden; TSN's segments)
    relbias       a learned bias per attention head and relative offset (T5, Shaw et al.) on top of the
                  absolute positions: attending to a neighbour needs no learned position match
    rms           each clip's (centred) input divided by its own root mean square over time and features:
                  a low-contrast look's motion as loud as a high-contrast one's against the positions
    tokennorm     each frame's input vector scaled to unit root mean square (the direction of the change)
    ff4gelu       the encoder's MLP 4 x hidden wide with GELU (the usual transformer's; now 2 x with ReLU)
    posscale=S    the position table starts at S times the sine table (1 now): less position against content
    postnorm      the encoder layers post-norm (the original transformer's; pre-norm now)
    projnorm      a LayerNorm on the projected tokens before the positions are added (ViT-style embedding
                  norm): content at unit scale against the positions, its size kept only through the bias
    dirsize       tokennorm's unit-RMS frame direction plus the log of that frame's RMS as one more input
                  feature: the direction as loud as the positions, the size still there to read
    actnorm=S     the input times one learned gain, set from the first training batch so that its root mean
                  square is S (data-dependent init, ActNorm of Kingma & Dhariwal 2018, one scalar): the
                  typical change as loud as the positions, one clip's size against another's kept
    tcrop=F       temporal scale jitter while training (any head, the loop's change): each clip a random
                  stretch of F..1 of its length, resampled to all T steps (nearest), order kept
    tstd          Standardize's per-dimension scale from the training set's centred features (each clip's
                  mean over time removed) instead of from the raw ones: the `centred` input at unit scale
                  per dimension. Every caller of views.feature_stats in this process gets it, whatever its
                  temporal input (run it for heads on `centred`, the default of every order-reading head).
                  The scale is set once from the data, so one clip's size against another's is kept
                  (unlike `rms`/`tokennorm`), and it is per dimension (unlike `actnorm`)
    causal        each time step attends only to itself and the steps before it (a causal mask), and the
                  last step's output is classified: attention read in order, as the lstm reads, its last
                  state the summary (the mask breaks the symmetry of time even without the positions)
    causalmean    the causal mask, the mean over time read out as now
    mixup=A       each training batch mixed with a shuffled copy of itself, x = l x + (1 - l) x', the loss
                  l CE(y) + (1 - l) CE(y'), l ~ Beta(A, A) (Zhang et al. 2018); any head, the loop's change
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainers.models import heads  # noqa: E402
from trainers.training import loop  # noqa: E402

KINDS = ("base", "tokdrop", "framedrop", "indrop", "fixedpos", "cls", "conv", "ema", "flat", "segpool", "relbias", "rms", "tokennorm", "ff4gelu", "posscale", "mixup", "postnorm", "projnorm", "dirsize", "actnorm", "tcrop", "tstd", "causal", "causalmean")


def patch(kind: str, value: float) -> None:
    """Replace TemporalTransformer's __init__/forward (or the loop's epoch) for this process."""
    T = heads.TemporalTransformer
    base_init = T.__init__

    def init(self, dim, classes, frames, cfg):
        base_init(self, dim, classes, frames, cfg)
        if kind == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        if kind == "conv":
            self.conv = nn.Conv1d(cfg.hidden, cfg.hidden, 3, padding=1, groups=cfg.hidden)
        if kind == "fixedpos":
            self.pos.requires_grad_(False)
        if kind == "ff4gelu":
            layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=4 * cfg.hidden,
                                               dropout=min(cfg.dropout, 0.1), batch_first=True, norm_first=True,
                                               activation="gelu")
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        if kind == "postnorm":
            layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=2 * cfg.hidden,
                                               dropout=min(cfg.dropout, 0.1), batch_first=True, norm_first=False)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        if kind == "posscale":
            with torch.no_grad():
                self.pos.mul_(value)
        if kind == "flat":
            self.fc = nn.Linear(frames * cfg.hidden, classes)
        if kind == "segpool":
            self.fc = nn.Linear(int(value) * cfg.hidden, classes)
        if kind == "projnorm":
            self.embed_norm = nn.LayerNorm(cfg.hidden)
        if kind == "dirsize":
            self.proj = nn.Linear(dim + 1, cfg.hidden)
        if kind == "actnorm":
            self.gain = nn.Parameter(torch.ones(()))
            self.gain_set = False
        if kind == "relbias":
            self.rel = nn.Parameter(torch.zeros(cfg.heads, 2 * frames - 1))
            self.n_heads = cfg.heads

    def forward(self, x):  # (B, T, D)
        if kind == "rms":
            x = x / x.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(0.05)
        if kind == "tokennorm":
            x = x / x.pow(2).mean(dim=2, keepdim=True).sqrt().clamp_min(1e-6)
        if kind == "actnorm":
            if self.training and not self.gain_set:
                with torch.no_grad():
                    self.gain.fill_(value / float(x.pow(2).mean().sqrt().clamp_min(1e-6)))
                self.gain_set = True
            x = x * self.gain
        if kind == "dirsize":
            size = x.pow(2).mean(dim=2, keepdim=True).sqrt().clamp_min(1e-6)
            x = torch.cat([x / size, size.log()], dim=2)
        if kind == "indrop":
            x = nn.functional.dropout(x, value, self.training)
        h = self.proj(x)
        if kind == "projnorm":
            h = self.embed_norm(h)
        h = h + self.pos[:, : x.shape[1]]
        if kind == "tokdrop":
            h = nn.functional.dropout(h, value, self.training)
        if kind == "conv":
            h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        if kind == "cls":
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1)
            return self.fc(self.drop(self.norm(self.encoder(h))[:, 0]))
        if kind == "framedrop" and self.training:
            drop = torch.rand(h.shape[:2], device=h.device) < value
            drop[drop.all(1)] = False                  # every clip keeps a frame
            keep = (~drop).float()[..., None]
            h = (self.norm(self.encoder(h, src_key_padding_mask=drop)) * keep).sum(1) / keep.sum(1)
            return self.fc(self.drop(h))
        if kind == "flat":
            return self.fc(self.drop(self.norm(self.encoder(h)).flatten(1)))
        if kind == "segpool":
            out = self.norm(self.encoder(h))
            return self.fc(self.drop(torch.cat([s.mean(1) for s in out.chunk(int(value), dim=1)], 1)))
        if kind == "relbias":
            t = h.shape[1]
            idx = torch.arange(t)[None, :] - torch.arange(t)[:, None] + self.pos.shape[1] - 1   # j - i, shifted
            bias = self.rel[:, idx]                                                              # (heads, T, T)
            mask = bias[None].expand(h.shape[0], -1, -1, -1).reshape(-1, t, t)
            return self.fc(self.drop(self.norm(self.encoder(h, mask=mask)).mean(dim=1)))
        if kind in ("causal", "causalmean"):
            t = h.shape[1]
            mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
            out = self.norm(self.encoder(h, mask=mask, is_causal=True))
            return self.fc(self.drop(out[:, -1] if kind == "causal" else out.mean(dim=1)))
        return self.fc(self.drop(self.norm(self.encoder(h)).mean(dim=1)))

    T.__init__, T.forward = init, forward
    if kind == "mixup":
        mix_batches(value)
    if kind == "tcrop":
        temporal_crops(value)
    if kind in ("relbias", "causal", "causalmean"):   # the encoder's inference fast path turns a per-head (B * heads, T, T) bias into NaN
        torch.backends.mha.set_fastpath_enabled(False)
    if kind == "tstd":
        temporal_scale()
    if kind == "ema":
        epoch = loop.train_one_epoch

        def averaged_epoch(model, *args, **kwargs):
            state = getattr(model, "_ema", None)
            if state is not None:
                model.load_state_dict(state["raw"])    # train on the raw weights
            out = epoch(model, *args, **kwargs)
            raw = {n: t.detach().clone() for n, t in model.state_dict().items()}
            avg = raw if state is None else {n: value * state["avg"][n] + (1 - value) * t if t.is_floating_point()
                                             else t for n, t in raw.items()}
            model._ema = {"raw": raw, "avg": {n: t.clone() for n, t in avg.items()}}
            model.load_state_dict(avg)                 # validate and save the average
            return out

        loop.train_one_epoch = averaged_epoch


def mix_batches(alpha: float) -> None:
    """Mixup in the training loop: the task's `prepare` mixes each batch (seeded by the loop's crop
    generator) and remembers the partner order and weight; the loss the loop calls reads them."""
    from trainers.training import head_task

    mixed = {}

    def prepare(self, x, generator):
        lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
        perm = torch.randperm(len(x), generator=generator)
        mixed.update(lam=lam, perm=perm)
        return lam * x + (1 - lam) * x[perm]

    head_task.FeatureTask.prepare = prepare
    epoch = loop.train_one_epoch

    class MixedLoss(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, y):
            lam, perm = mixed["lam"], mixed["perm"]
            return lam * self.inner(logits, y) + (1 - lam) * self.inner(logits, y[perm])

        def correct(self, logits, y):
            return self.inner.correct(logits, y)

    def mixed_epoch(model, task, videos, cfg, ep, opt, loss_fn, *args, **kwargs):
        return epoch(model, task, videos, cfg, ep, opt, MixedLoss(loss_fn), *args, **kwargs)

    loop.train_one_epoch = mixed_epoch


def temporal_crops(shortest: float) -> None:
    """Each training clip (B, T, D) replaced by a random stretch of `shortest`..1 of its T steps,
    resampled to T by nearest index (seeded by the loop's crop generator)."""
    from trainers.training import head_task

    def prepare(self, x, generator):
        b, t = x.shape[:2]
        span = shortest + (1 - shortest) * torch.rand(b, generator=generator)         # (B,) fraction kept
        length = (span * t).clamp(min=2.0)
        start = torch.rand(b, generator=generator) * (t - length)
        idx = (start[:, None] + torch.linspace(0, 1, t)[None] * (length[:, None] - 1)).round().long().clamp(0, t - 1)
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))

    head_task.FeatureTask.prepare = prepare


def temporal_scale() -> None:
    """views.feature_stats returns the raw features' mean and the centred features' std (per dimension,
    over every training sample): Standardize's centring is linear, so (x - mean) / std then centred is
    the centred features over their own std."""
    import numpy as np
    from trainers.data import views

    def stats(fs, videos):
        mean, _ = raw_stats(fs, videos)
        sq = np.zeros(fs.dim)
        count = 0
        for a in range(0, len(videos), 256):
            x = fs.features[np.sort(videos[a:a + 256])].astype(np.float64)        # (n, S, T, D)
            x = x - x.mean(axis=2, keepdims=True)
            sq += (x * x).reshape(-1, fs.dim).sum(0)
            count += x.shape[0] * x.shape[1] * x.shape[2]
        return mean, torch.from_numpy(np.sqrt(sq / max(1, count))).float()

    raw_stats = views.feature_stats
    views.feature_stats = stats


def main(argv: list[str]) -> int:
    if not argv or argv[0].partition("=")[0] not in KINDS:
        print(f"usage: attention_variants.py VARIANT [head_defaults args]; VARIANT one of {', '.join(KINDS)} "
              "(with =VALUE where it takes one)", file=sys.stderr)
        return 2
    kind, _, value = argv[0].partition("=")
    patch(kind, float(value) if value else 0.0)
    import head_defaults

    return head_defaults.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
