"""CLI sub-commands that are not part of a bigger front end."""
