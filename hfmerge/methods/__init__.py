"""Merge methods: pure functions of fp32 tensors (see registry.METHODS)."""
