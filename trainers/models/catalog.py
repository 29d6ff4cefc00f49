"""Every registered model with its size and cost (`har models`): the frozen backbones of
`har features`, the sequence heads of `har train-head` and the video models of `har train-e2e`."""
from __future__ import annotations

from pipeline.stages import backbones
from trainers.models import heads, video_models
from trainers.models.head_config import HeadConfig

KINDS = (("backbones", "backbones (frozen, har features)"), ("heads", "heads (har train-head)"),
         ("video_models", "video models (end to end)"))


def catalog() -> dict[str, list[dict]]:
    """kind -> one row per registered name: name, params, gflops, input, pretrained, about. Counted
    on PyTorch's meta device: nothing computed, no weights needed."""
    from pipeline.stages import video_backbones

    return {"backbones": [backbones.cost(n) if backbones.get(n).kind == "frame" else video_backbones.cost(n)
                          for n in backbones.BACKBONES.names()],
            "heads": [heads.cost(n, HeadConfig()) for n in heads.HEADS.names()],
            "video_models": [video_models.cost(n) for n in video_models.VIDEO_MODELS.names()]}
