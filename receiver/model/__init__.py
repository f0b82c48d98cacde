"""The formats the service works with: events, routes, handler plugins, Osmos
connectors, the `osma-signature` header and capture lines. Pure code over values: no
Redis, no HTTP. Imports only the base modules (exceptions, settings, keys, ...)."""
