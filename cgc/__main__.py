"""`python -m cgc <command>`: see cgc/cli.py."""

from cgc.cli import main

main()
