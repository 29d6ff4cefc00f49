"""Models: the sequence heads over cached features (`heads`), the end-to-end video models
(`models3d`: LRCN, ConvLSTM, late fusion, torchvision's 3D CNNs and video transformers), and a run's
chain as one differentiable function (`chain`, for explain)."""
