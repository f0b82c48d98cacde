"""The receiver's HTTP surface: the webhook and Osmos endpoints, health, metrics, OpenAPI."""
