"""akd-edge: robust compact models for the edge, via adversarial knowledge distillation."""

__version__ = "0.1.0"
