"""The operator console: a small Starlette app of its own (`osma-router console`), never
mounted on the Internet-facing receiver. Server-rendered pages over what Redis holds:
deliveries, queues, events and their jobs and effects, failed jobs, captures."""
