"""`osma-router replay`: captured deliveries sent again, re-signed over HTTP, straight
onto the queue (the receiver's own pipeline), or run inline through the worker's code.
It sits above `web` and `worker` because an inline replay runs handlers itself."""
