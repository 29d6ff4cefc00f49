"""Using a trained run: the run loaded for inference (one loader for all of them), the predictor
(`har predict`), long-video timelines, the web server (`har serve`, server.html its page, its
request forms, middleware and workload), ONNX / TorchScript export (the graph; the file
formats), explanations and their sanity checks."""
