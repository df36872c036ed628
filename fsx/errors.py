"""The one error type that means "the user asked for something we cannot do".

The CLI turns it into a one-paragraph message and exit code 2; anything else is a bug
(exit code 1).
"""


class UsageError(Exception):
    """Bad usage or bad input: a config key, a value, a file. The message names it."""

    exit_code = 2
