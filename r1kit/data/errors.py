"""The data layer's error, in a module of its own so that every data module can raise it without
importing another (r1kit.data.sources re-exports it, where callers have always found it)."""


class DataError(ValueError):
    """A dataset is missing, malformed, or lacks a column; the message says where."""
