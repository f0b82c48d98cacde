"""The command line as a user runs it: subprocesses of `osma-router`."""
