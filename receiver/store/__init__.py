"""Everything kept in Redis: admission (dedup + enqueue), batches, captures, failed jobs, the effects ledger, watermarks, status reads, the connection factory."""
