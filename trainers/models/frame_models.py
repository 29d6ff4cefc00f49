"""Video networks that read frames one by one: `convlstm` (a conv encoder and two ConvLSTM layers,
Shi et al. 2015), and a 2D CNN per frame then a temporal model: `lrcn` (ResNet-18 + LSTM, end to
end, Donahue et al. 2015), `late-fusion-e2e` (frame features averaged), `small-cnn-lstm` /
`small-cnn-rnn` (the seed study's three-block CNN at 64x64). `SPECS` lists them;
trainers.models.video_models registers them.
"""
from __future__ import annotations

import torch
from torch import nn

from trainers.models.heads import CELLS
from trainers.models.video_spec import IMAGENET_MEAN, IMAGENET_STD, VideoModelSpec, load_weights

SPECS: list[VideoModelSpec] = []

# ---- ConvLSTM ---------------------------------------------------------------------------------------

class ConvLSTMCell(nn.Module):
    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(channels + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x, state):  # x (B, C, H, W); state (h, c) each (B, hidden, H, W)
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMNet(nn.Module):
    """A strided conv encoder per frame (to 1/8 size), two ConvLSTM layers over time, the last
    hidden map pooled and classified. Memory grows with T x H x W x hidden (a seed study ran out
    of it): keep clips small or the batch low."""

    def __init__(self, classes: int, hidden: int = 64):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 64))
        self.cells = nn.ModuleList([ConvLSTMCell(64, hidden), ConvLSTMCell(hidden, hidden)])
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(hidden, classes))

    def forward(self, x):  # (B, 3, T, H, W)
        b, _, t = x.shape[:3]
        feats = self.encoder(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, t))  # (B, T, 64, h, w)
        states = [None] * len(self.cells)
        for step in range(t):
            inp = feats[:, step]
            for k, cell in enumerate(self.cells):
                if states[k] is None:
                    z = inp.new_zeros(b, cell.hidden, *inp.shape[2:])
                    states[k] = (z, z)
                states[k] = cell(inp, states[k])
                inp = states[k][0]
        return self.fc(inp.mean(dim=(2, 3)))


SPECS.append(VideoModelSpec("convlstm", lambda classes, pretrained, clip: ConvLSTMNet(classes), classifier="fc.1",
                        about="conv encoder + 2 ConvLSTM layers (Shi et al.)"))


# ---- 2D CNN per frame + temporal model ---------------------------------------------------------------

class FrameCNN(nn.Module):
    """A 2D network applied to every frame: (B, 3, T, H, W) -> (B, T, D)."""

    def __init__(self, net: nn.Module, dim: int):
        super().__init__()
        self.net, self.dim = net, dim

    def forward(self, x):
        b, _, t = x.shape[:3]
        return self.net(x.transpose(1, 2).flatten(0, 1)).view(b, t, -1)


def _resnet18_frames(pretrained: str) -> FrameCNN:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    if pretrained == "imagenet":
        load_weights(net, "ResNet18_Weights.IMAGENET1K_V1")
    net.fc = nn.Identity()
    return FrameCNN(net, 512)


def _small_cnn() -> FrameCNN:
    """The seed study's three conv blocks (32, 64, 128 channels) at 64x64, global pooling."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return FrameCNN(nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(1)), 128)


class SequenceOverFrames(nn.Module):
    """FrameCNN -> recurrent layer (lstm | rnn) -> last hidden state -> linear; or `mean` fusion."""

    def __init__(self, frames: FrameCNN, classes: int, temporal: str, hidden: int = 256):
        super().__init__()
        self.frames, self.temporal = frames, temporal
        if temporal == "mean":
            self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(frames.dim, classes))
        else:
            self.rnn = CELLS.get(temporal)(frames.dim, hidden, batch_first=True)
            self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(hidden, classes))

    def forward(self, x):  # (B, 3, T, H, W)
        f = self.frames(x)                                   # (B, T, D)
        if self.temporal == "mean":
            return self.fc(f.mean(dim=1))
        _, h = self.rnn(f)
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(h[-1])


SPECS.append(VideoModelSpec("lrcn", lambda classes, pretrained, clip: SequenceOverFrames(_resnet18_frames(pretrained), classes, "lstm"),
                        pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="ResNet-18 per frame + LSTM, end to end (LRCN)"))
SPECS.append(VideoModelSpec("late-fusion-e2e",
                        lambda classes, pretrained, clip: SequenceOverFrames(_resnet18_frames(pretrained), classes, "mean"),
                        pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="shared ResNet-18 per frame, features averaged over time"))
SPECS.append(VideoModelSpec("small-cnn-lstm", lambda classes, pretrained, clip: SequenceOverFrames(_small_cnn(), classes, "lstm"),
                        size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="three-block CNN at 64x64 + LSTM"))
SPECS.append(VideoModelSpec("small-cnn-rnn", lambda classes, pretrained, clip: SequenceOverFrames(_small_cnn(), classes, "rnn"),
                        size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="three-block CNN at 64x64 + RNN"))
