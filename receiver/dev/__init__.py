"""`osma-router dev`: Redis, the receiver and a worker in one process tree."""
