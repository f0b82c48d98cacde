"""The Osma and OGSM API clients, sync and async, their shared HTTP core and the
rate limiter every worker process shares. Imports only the base modules."""
