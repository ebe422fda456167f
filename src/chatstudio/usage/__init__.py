"""The usage ledger: one row per model call, buffered in memory, rolled up into daily totals."""
