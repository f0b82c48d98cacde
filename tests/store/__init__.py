"""What is kept in Redis: Osmos batch storage, captures and rekeying."""
