"""The command line: `cluster` and its subcommands, and `cluster run`'s supervisor."""
