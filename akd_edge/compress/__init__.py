"""Compression: pruning (``prune``: torch-pruning; ``search``: ratio for a budget; ``measure``: size, speed,
robustness; ``command``: ``akd-edge compress``) and int8 quantization (``quantize``: onnxruntime)."""

FINETUNE_EPOCHS = 6
"""Default robust fine-tuning epochs after pruning (``compress --epochs``, ``run --prune-epochs``). Measured by
``benchmarks/prune_robustness.py`` on the quickstart student, a 50% channel cut: one epoch left it 4.5 points
of AutoAttack (fast) behind the unpruned student, three epochs 1.6, six epochs none (70.2% against 69.0%)."""
