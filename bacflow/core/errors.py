"""The one exception type that reaches users."""


class InputError(ValueError):
    """Bad user input: a file, record, row or config value that cannot be used.

    The message always names the file (and the record, row or column where there is one), so that it can
    be shown to the user as is, without a traceback.
    """
