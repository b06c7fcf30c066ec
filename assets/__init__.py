"""The graph: thin Dagster assets over the lmforge engine, one module per stage group."""
