"""Compression: pruning (``prune``: torch-pruning; ``search``: ratio for a budget; ``measure``: size, speed,
robustness; ``pipeline``: ``akd-edge compress``) and int8 quantization (``quantize``: onnxruntime)."""
