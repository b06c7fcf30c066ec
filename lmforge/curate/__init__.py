"""Curation: extract, filter, deduplicate documents (Parquet in, Parquet out)."""
