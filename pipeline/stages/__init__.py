"""The two stages of the pipeline: `har extract` (videos -> frame store) and `har features`
(frame store -> feature store through a frozen backbone of `backbones`)."""
