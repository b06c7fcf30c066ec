"""Evaluation through lm-evaluation-harness, with a sandbox for generated code."""
