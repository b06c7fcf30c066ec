"""The markdown report of a pipeline run."""
