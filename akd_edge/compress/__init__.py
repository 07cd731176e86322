"""Compression: pruning (torch-pruning, robust fine-tune) and int8 quantization (onnxruntime)."""
