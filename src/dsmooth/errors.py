"""One exception type for mistakes a user can make.

The CLI turns a `UserError` into one sentence on stderr and exit code 2; everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix (path, shape, range, parameter)."""
