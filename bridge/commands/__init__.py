"""CLI sub-commands that are not part of a bigger front end."""


class CliError(Exception):
    """A user mistake on the command line: printed as one line ``stylebridge: error: ...``, exit code 2."""
