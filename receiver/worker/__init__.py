"""The RQ worker: running a job, its context, the clients a job gets, graceful shutdown."""
