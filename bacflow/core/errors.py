"""The one exception type that reaches users, and the write errors that reach them as one line."""

import errno


class InputError(ValueError):
    """Bad user input: a file, record, row or config value that cannot be used.

    The message always names the file (and the record, row or column where there is one), so that it can
    be shown to the user as is, without a traceback.
    """


#: Write errors that say the storage is full (errno -> how messages say it): no bug, so a job failing with one says
#: so in one line naming the path, without a traceback (`bacflow.core.logs.logging_to`).
FULL_DISK = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded"}
