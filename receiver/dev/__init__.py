"""`osma-router dev`: Redis, the receiver, a worker and the fake Osma and OGSM in one
process tree, and the self-signed certificate of `dev --https`."""
