"""The base of every error meant for a user: the command line prints its message, no traceback."""


class UserError(Exception):
    """An error whose message says what went wrong and what to do; shown as is."""
