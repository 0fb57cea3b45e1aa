"""`python -m cgc <command>`: see cgc/cli.py."""

from cgc.cli import main

if __name__ == "__main__":
    main()
