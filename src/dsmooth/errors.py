"""One exception type for mistakes a user can make.

The CLI turns a `UserError` into one sentence on stderr and exit code 2; everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix (path, shape, range, parameter)."""


def brief(error: BaseException) -> str:
    """The last non-empty line of an exception message: the part that says what failed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
