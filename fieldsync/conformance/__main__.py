"""`python -m fieldsync.conformance ...` (the same as `fieldsync conformance ...`)."""

from ._cli import command

command()
