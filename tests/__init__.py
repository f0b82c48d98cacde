"""The test suite: a real redis-server of its own, real HTTP on loopback, real subprocesses."""
