"""Using a trained run: the predictor (`har predict`), long-video timelines, the web server
(`har serve`, server.html its page), ONNX / TorchScript export and explanations."""
