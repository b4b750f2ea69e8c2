"""The synthetic transfer set: DDPM training batches, DDIM sampling to a datalist, and its quality report."""

from common.generative import quality, sampling

__all__ = ["quality", "sampling"]
