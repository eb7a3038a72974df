"""Errors that the CLI turns into one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong name, shape, file or setting.

    The message must say what is wrong and how to fix it, in one line.
    """


class RunFailure(Exception):
    """A run that could not finish (e.g. a stage process died); the CLI exits 1."""
