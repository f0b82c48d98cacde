"""The formats the service works with: events, routes, plugins, Osmos connectors, signatures, capture lines."""
