"""The receiver's HTTP surface: the webhook and Osmos endpoints, health, metrics and
the OpenAPI description, assembled into one ASGI app. Imports `store`, `model` and the
base modules; never `worker` or `upstream`."""
