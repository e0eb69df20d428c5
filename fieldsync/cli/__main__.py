"""`python -m fieldsync.cli`: the same as the `fieldsync` command."""

from ._main import main

main()
