"""Using an exported model: `load_model` and its predictor, `mlic predict` / `mlic evaluate`, ONNX export."""
