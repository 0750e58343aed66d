"""The user-facing error types: everything a user can get wrong is a `GerbilError` (one line, turned into
``gerbil VERB: error: ...`` by the CLI); a bad option value is its subtype `OptionError`."""


class GerbilError(Exception):
    """A user-facing problem: bad input, missing asset, mismatched store. The message is one line."""


class OptionError(GerbilError, ValueError):
    """A bad option value (a flag, a recipe or suite key, a library argument the user chose), an unknown
    key, or a changed option on resume: one line naming it. Also a ValueError, for callers that wrap a
    config's value errors."""
