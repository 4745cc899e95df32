"""The command layer: every ``panda-daemon`` subcommand."""
