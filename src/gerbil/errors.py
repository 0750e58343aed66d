"""The one exception type the CLI turns into a one-line error (besides ValueError/FileNotFoundError)."""


class GerbilError(Exception):
    """A user-facing problem: bad input, missing asset, mismatched store. The message is one line."""
