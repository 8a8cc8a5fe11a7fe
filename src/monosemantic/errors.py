"""Errors a user can fix: stages print them without a traceback and exit with status 2."""


class UserError(Exception):
    """Bad input or configuration; the message names the problem and the fix."""
