"""Models: the sequence heads over cached features (`heads`, their settings in `head_config`), the
end-to-end video models by family (`cnn3d`: 3D CNNs; `video_transformers`: MViT, Video Swin;
`frame_models`: ConvLSTM and per-frame CNNs with a temporal model) behind one registry
(`video_models`, their spec and weights in `video_spec`), every model's size and cost (`catalog`),
and a run's chain as one differentiable function (`chain`, for explain)."""
