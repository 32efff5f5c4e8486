"""`python -m skillforge.cli` runs the command line (the tests use it to check exit codes)."""

from skillforge.cli.main import main

main()
