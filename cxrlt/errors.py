"""The error type for bad user input: its message names the file, row, column or key at fault.

The command line prints these as one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class InputError(ValueError):
    """A file, row, column, key or argument given by the user is wrong; the message says which."""
