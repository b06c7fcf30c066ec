"""Scaling laws: a sweep of runs at fixed FLOP budgets, the Chinchilla fits, and the model size and
token budget they give for a compute budget."""
