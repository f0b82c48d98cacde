"""Jobs through real workers: routing to plugins, retries, the failed registry, built-in handlers, logs."""
