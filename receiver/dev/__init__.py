"""`osma-router dev`: Redis, the receiver and a worker in one process tree, and the
self-signed certificate of `dev --https`."""
