"""Errors the CLI prints as one clear line (no traceback unless --debug)."""


class NstError(Exception):
    """A user-facing problem: bad manifest, bad input, unreachable storage."""


class ManifestError(NstError):
    """The manifest cannot be turned into jobs; the message names the row or column."""


class InputError(NstError):
    """An input image that cannot be read or decoded; the message names the URI."""
