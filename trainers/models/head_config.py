"""A sequence head's settings (trainers.models.heads builds the head from them), as a frozen
dataclass: what `head_options` in a head run's config.json holds.

Light on purpose (no torch): trainers.training.config and the command line read it. The values
that need the heads' registries (the head's name, --temporal-input) are checked by
`heads.check_options`, which hands `validate` the allowed temporal inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainers.training import limits


@dataclass(frozen=True)
class HeadConfig:
    """A head's width, depth, dropout and what it is shown of the sequence."""
    hidden: int = 256            # recurrent state / MLP / transformer width (LRCN seed: 256)
    layers: int = 1              # stacked recurrent or transformer layers
    bidirectional: bool = False  # recurrent heads only: also read the clip backwards
    dropout: float = 0.5         # before the classifier (and between stacked layers)
    heads: int = 4               # attention heads (attention only)
    temporal_input: str = "auto" # what the head sees of the sequence (trainers.models.heads.TEMPORAL_INPUTS); auto:
                                 # the head's default (heads.DEFAULT_TEMPORAL_INPUT), made concrete when a
                                 # run starts (HeadTrainConfig.resolved) so config.json records what it trained on
    ADDED_LATER = {"temporal_input": "raw"}   # runs from before the field trained on raw features

    # whole-number settings: (field, lowest, highest). A wide head is refused by its memory
    # (`training_bytes`), not by a range; the highest values are what torch's sizes can hold
    RANGES = (("hidden", 1, 2**31 - 1), ("layers", 1, 256), ("heads", 1, 1024))

    def validate(self, temporal_inputs=None) -> None:
        """Every value in its range; `temporal_input` too when given the allowed names
        (heads.check_options passes heads.TEMPORAL_INPUTS)."""
        for name, lo, hi in self.RANGES:
            limits.whole(name, getattr(self, name), lo, hi)
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"--bidirectional {self.bidirectional!r} is not supported; allowed: true, false")
        if temporal_inputs is not None and self.temporal_input not in temporal_inputs:
            raise ValueError(f"--temporal-input {self.temporal_input!r} is not supported; allowed: "
                             f"{', '.join(temporal_inputs)}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:  # nan too
            raise ValueError(f"--dropout {d!r} is out of range; allowed: 0 <= dropout < 1")
