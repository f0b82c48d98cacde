"""The Osma and OGSM API clients, their shared HTTP core and the shared rate limiter."""
