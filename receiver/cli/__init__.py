"""The command line: `receiver --help` lists the commands (receiver.cli.main)."""
