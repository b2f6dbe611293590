"""hfmerge: merge fine-tuned checkpoints of one base model, tensor by tensor, with bounded memory."""

from hfmerge.errors import HfMergeError

__version__ = "0.1.0"
__all__ = ["HfMergeError", "__version__"]
