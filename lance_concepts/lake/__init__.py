"""Everything that writes tables: the schema and store, sources, decoding, the per-batch step, ingest, decompose, the
report aggregates (rollup), FALCON feature tables, and the engines (local processes, Ray) that run the batches."""
