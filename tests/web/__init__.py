"""The receiver over real HTTP: webhooks, Osmos batches, attacks, deadlines, metrics, serving."""
