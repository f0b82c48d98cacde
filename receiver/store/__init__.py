"""Everything kept in Redis: admission (dedup + enqueue in one atomic step), Osmos
batches, captures, failed jobs, the effects ledger, watermarks, status reads, and the
one connection factory (`connect`). Imports `model` and the base modules."""
