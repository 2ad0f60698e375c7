"""Feed-forward style networks: a Johnson-style transformer trained with this project's own
objective (the grid's JobSpec losses), so a setting chosen from a grid applies to a whole
collection in one forward pass per image. Pure PyTorch: no Ray, no files."""

from .network import NetConfig, TransformerNet
from .objective import StyleObjective

__all__ = ["NetConfig", "StyleObjective", "TransformerNet"]
