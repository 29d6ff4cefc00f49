"""What a task trains with and is scored by: `Loss` (the loss and its count of correct answers),
`CrossEntropy` (every single-store task's loss), and `loss_and_accuracy` (validation: the loss and
accuracy of predicted probabilities). The loop and the task base (`tasks.Task`) both use these;
neither imports the other for them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Loss(nn.Module):
    """What a task trains with (`Task.loss`): forward(logits (B, C) float, y (B,)) -> the batch's
    mean loss; correct(logits, y) -> how many of the batch the model gets right (training accuracy),
    by default the argmax."""

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == y).sum()


class CrossEntropy(Loss):
    """Cross-entropy with optional class weights and label smoothing, exactly as torch's
    nn.CrossEntropyLoss computes it: every task's loss but a joint one's."""

    def __init__(self, weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)   # (C,) or None; moves with .to(device)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y, weight=self.weight, label_smoothing=self.smoothing)


def loss_and_accuracy(probs: np.ndarray, y: np.ndarray, weight: torch.Tensor | None) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    logp = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    loss = nn.functional.nll_loss(logp, torch.from_numpy(y), weight=weight)
    return float(loss), float((probs.argmax(1) == y).mean())
