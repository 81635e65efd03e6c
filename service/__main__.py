"""`python -m service` is the `regionlock` command."""

from service.cli import main

main()
