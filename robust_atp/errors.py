"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: a suite, a data file, a command-line option, a run directory."""


class SuiteError(UserError):
    """A suite file (or a preset it names) is malformed or inconsistent."""
