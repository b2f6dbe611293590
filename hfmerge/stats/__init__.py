"""Data-driven statistics for merging, computed from ONE model at a time and saved as safetensors keyed by
tensor name (so merges stream them like weights): diagonal Fisher, RegMean Gram matrices, trained
Localize-and-Stitch masks."""
