"""The artifact store: where every asset writes its output, one version per materialization.

Assets hand each other paths in this store, never DataFrames or tensors through an IO manager:
the data is large, and training runs in another process.

Layout: ``<root>/<deployment>/<asset>/[<partition>/]<version>/...``. ``<deployment>`` is the first
part of the asset key (``tiny/pretrained_model`` writes under ``<root>/tiny/``), so deployments
that share a Dagster instance never touch each other's files.

Versions (``lmforge.versions``): an asset writing its own output gets a new version directory
whose name is a fingerprint of what makes the output (the asset's code version, its resolved
config, the partition, and the version of every upstream asset). Changed settings give a new
directory beside the old one; the same settings give the same one, so a retried run resumes from
the checkpoint the killed run left in it, and re-materializing with nothing changed writes nothing
new. The version is recorded as ``path`` in the materialization's metadata; a downstream asset
reads the version its upstream's latest materialization names, never "whatever is at a fixed path
now". Old versions are kept until ``lmforge versions prune`` removes them (last N, never a
released one).

The curation stages are partitioned by day, and a day's file is their version: they use
:meth:`ArtifactStore.fixed_path` (one file per day, replaced atomically, the dedup index beside).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from lmforge.errors import LmforgeError
from lmforge.versions import VERSION_FILE, partition_dir_name


def _current_context():
    from dagster._core.execution.context.compute import current_execution_context

    return current_execution_context.get()


def _op_context(ctx):
    return ctx.op_execution_context if hasattr(ctx, "op_execution_context") else ctx


class ArtifactStore(dg.ConfigurableResource):
    """A local directory (relative paths are taken from the current directory)."""

    root: str = Field(
        default="",
        description="Directory that holds one sub-directory per deployment, and in it one per "
        "asset. Empty: LMFORGE_ARTIFACTS, else ./artifacts (read when the run starts). Remote "
        "object stores (s3://, gs://) are not supported yet: mount them, or sync this directory "
        "after the run.",
    )
    deployment: str = Field(
        default="",
        description="The deployment whose files to use outside a run (inside a run: the first "
        "part of the asset key being materialized or checked).",
    )

    # -- where -----------------------------------------------------------------------------
    def root_dir(self) -> Path:
        root = self.root or os.environ.get("LMFORGE_ARTIFACTS") or "artifacts"
        if "://" in root:
            raise ValueError(
                f"ArtifactStore.root={root!r}: remote URLs are not supported yet; use a local "
                "or mounted directory"
            )
        return Path(root).expanduser().resolve()

    def current_deployment(self) -> str:
        ctx = _current_context()
        key = _context_key(ctx) if ctx is not None else None
        if key is not None and len(key.path) > 1:
            return key.path[0]
        return self.deployment

    def base(self) -> Path:
        """The deployment's directory (the root itself for assets without a deployment)."""
        deployment = self.current_deployment()
        return self.root_dir() / deployment if deployment else self.root_dir()

    def asset_key(self, name: str) -> dg.AssetKey:
        deployment = self.current_deployment()
        return dg.AssetKey([deployment, name]) if deployment else dg.AssetKey(name)

    def asset_dir(self, name: str) -> Path:
        """The directory that holds every version of one asset (created if missing)."""
        d = self.base() / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def fixed_path(self, name: str, *parts: str) -> Path:
        """A path that is the same for every run (the curation stages' day files, their index)."""
        return self.asset_dir(name).joinpath(*parts)

    # -- versions ------------------------------------------------------------------------
    def path(self, name: str, *parts: str, partition: str | None = None) -> Path:
        """A path inside a version of ``name``: the new version this run writes when ``name`` is
        the asset being materialized; otherwise the version ``name``'s latest materialization (of
        ``partition``) names. One line, naming the asset, when there is none."""
        version = self.latest(name, partition=partition, _own=True)
        if version is None:
            where = f" partition {partition!r}" if partition else ""
            raise LmforgeError(f"{self.asset_key(name).to_user_string()}{where} has no "
                               "materialization yet: materialize it first")
        return version.joinpath(*parts)

    def latest(self, name: str, partition: str | None = None, _own: bool = False,
               instance: dg.DagsterInstance | None = None) -> Path | None:
        """The version directory of ``name``'s latest materialization (of ``partition``), or
        None. Inside the run that materializes ``name``: this run's new version."""
        ctx = _current_context()
        if ctx is not None and _own and _is_materializing(ctx, name):
            return self._new_version(ctx, name)
        return self.materialized_version(name, partition, instance)

    def materialized_version(self, name: str, partition: str | None = None,
                             instance: dg.DagsterInstance | None = None) -> Path | None:
        meta = self.latest_metadata(name, partition, instance)
        value = meta.get("path")
        if value is None:
            return None
        path = Path(getattr(value, "value", value))
        return path if path.is_dir() else None

    def latest_metadata(self, name: str, partition: str | None = None,
                        instance: dg.DagsterInstance | None = None) -> dict[str, Any]:
        if instance is None:
            ctx = _current_context()
            instance = ctx.instance if ctx is not None else dg.DagsterInstance.get()
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=self.asset_key(name),
                                  asset_partitions=[partition] if partition else None),
            limit=1).records
        if not records or records[0].event_log_entry.asset_materialization is None:
            return {}
        return dict(records[0].event_log_entry.asset_materialization.metadata)

    def _new_version(self, ctx, name: str) -> Path:
        op = _op_context(ctx)
        key = ctx.asset_key
        # The run's partition is the asset's only when the asset is partitioned (a run of the
        # suite-partitioned training job also materializes unpartitioned assets).
        partitioned = op.assets_def.partitions_def is not None and op.has_partition_key
        partition = str(op.partition_key) if partitioned else None
        inputs = {"asset": key.to_user_string(), "partition": partition,
                  "code_version": op.assets_def.code_versions_by_key.get(key),
                  "config": op.op_config, "upstream": _upstream_versions(ctx, op, key)}
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode())
        version = digest.hexdigest()[:12]
        where = self.asset_dir(name)
        if partition is not None:
            where = where / partition_dir_name(partition)
        vdir = where / version
        record = vdir / VERSION_FILE
        if not record.exists():
            vdir.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({
                "asset": key.to_user_string(), "partition": partition, "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "run_id": op.run_id, "inputs": inputs}, indent=2, sort_keys=True, default=str))
        if not getattr(op, "_lmforge_path_recorded", False):
            op.add_output_metadata({"path": str(vdir), "version": version})
            op._lmforge_path_recorded = True
        return vdir


def _context_key(ctx) -> dg.AssetKey | None:
    try:
        return ctx.asset_key
    except Exception:  # a check context on several assets, or no asset
        try:
            return ctx.check_specs[0].asset_key
        except Exception:
            return None


def _is_materializing(ctx, name: str) -> bool:
    if not isinstance(ctx, dg.AssetExecutionContext):
        return False
    try:
        return ctx.asset_key.path[-1] == name
    except Exception:
        return False


def _upstream_versions(ctx, op, key: dg.AssetKey) -> dict[str, Any]:
    """For each upstream asset: the version its latest materialization names, else the id of
    that materialization (the curation stages' day files are not versioned by directory)."""
    out: dict[str, Any] = {}
    for parent in sorted(op.assets_def.asset_deps.get(key, ()), key=lambda k: k.to_user_string()):
        records = ctx.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=parent), limit=1).records
        if not records:
            out[parent.to_user_string()] = None
            continue
        meta = records[0].event_log_entry.asset_materialization.metadata
        version = meta.get("version")
        out[parent.to_user_string()] = (getattr(version, "value", version) if version is not None
                                        else records[0].storage_id)
    return out
