"""The `skillforge` command line: one thin module per command group."""
