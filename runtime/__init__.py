"""The runtime worker: queue, batch and run requests on ONNX Runtime or PyTorch."""
