"""The one exception users see: a clear, single-line message naming the culprit and the fix."""


class HfMergeError(Exception):
    """A user-facing error (bad input, incompatible checkpoints, ...). The CLI prints it without a traceback."""
