"""The RQ worker: running one handler job, the `Context` a handler gets, the upstream
clients a job uses, and graceful shutdown. Imports `store`, `upstream`, `model` and the
base modules; never `web`."""
