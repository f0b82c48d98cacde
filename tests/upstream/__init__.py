"""The Osma and OGSM clients against the fake servers, and end to end through subprocesses."""
