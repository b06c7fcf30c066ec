"""lmforge: build language models end to end.

The engine (this package) is plain Python and never imports dagster; the Dagster graph in
``assets/`` and ``pipelines/`` calls into it.
"""

__version__ = "0.1.0"
