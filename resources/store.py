"""The artifact store: where every asset writes its output, one directory per asset.

Assets hand each other paths in this store, never DataFrames or tensors through an IO manager:
the data is large, and training runs in another process. Each asset's directory is replaced
atomically on success (see ``lmforge.io.atomic_path``), so a crashed run leaves the previous
good output in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field


class ArtifactStore(dg.ConfigurableResource):
    """A local directory (relative paths are taken from the current directory)."""

    root: str = Field(
        default="",
        description="Directory that holds one sub-directory per asset. Empty: LMFORGE_ARTIFACTS, "
        "else ./artifacts (read when the run starts). Remote object stores (s3://, gs://) are not "
        "supported yet: mount them, or sync this directory after the run.",
    )

    def base(self) -> Path:
        root = self.root or os.environ.get("LMFORGE_ARTIFACTS") or "artifacts"
        if "://" in root:
            raise ValueError(
                f"ArtifactStore.root={root!r}: remote URLs are not supported yet; use a local "
                "or mounted directory"
            )
        return Path(root).expanduser().resolve()

    def asset_dir(self, name: str) -> Path:
        """The directory of one asset's output (created if missing)."""
        d = self.base() / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, name: str, *parts: str) -> Path:
        """A path inside one asset's directory."""
        return self.asset_dir(name).joinpath(*parts)
