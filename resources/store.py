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

Remote roots (``s3://bucket/prefix``, ``gs://...``, any fsspec URL; ``lmforge.remote``): the
assets and the training processes still see local paths, in a cache that mirrors the root
(``cache``, else ``LMFORGE_CACHE``, else ``~/.cache/lmforge/<hash of the root>``). Handing out a
path of another asset downloads the committed units it lies in (a version, a crawl day, the
documents); when an asset's compute ends successfully (:func:`commit_after`, wrapped around every
asset by ``resources.config.for_deployment``), the version it wrote and the fixed paths it took
are uploaded, every file first and the manifest last. ``path`` in the metadata is the remote URL,
so any machine resolves it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import dagster as dg
from pydantic import Field

from lmforge.errors import LmforgeError
from lmforge.remote import Mirror, is_remote
from lmforge.versions import VERSION_FILE, partition_dir_name


def _current_context():
    from dagster._core.execution.context.compute import current_execution_context

    return current_execution_context.get()


def _op_context(ctx):
    return ctx.op_execution_context if hasattr(ctx, "op_execution_context") else ctx


class ArtifactStore(dg.ConfigurableResource):
    """A local directory (relative paths are taken from the current directory), or a remote
    root mirrored by a local cache."""

    root: str = Field(
        default="",
        description="Directory or URL (s3://bucket/prefix, gs://bucket/prefix, any fsspec URL) "
        "that holds one sub-directory per deployment, and in it one per asset. Empty: "
        "LMFORGE_ARTIFACTS, else ./artifacts (read when the run starts). S3 takes the standard "
        "AWS_* variables (AWS_ENDPOINT_URL for another S3 server).",
    )
    cache: str = Field(
        default="",
        description="For a remote root: the local directory that mirrors it (what the assets and "
        "training processes read and write). Empty: LMFORGE_CACHE, else "
        "~/.cache/lmforge/<hash of the root>.",
    )
    deployment: str = Field(
        default="",
        description="The deployment whose files to use outside a run (inside a run: the first "
        "part of the asset key being materialized or checked).",
    )

    # -- where -----------------------------------------------------------------------------
    def root_url(self) -> str:
        """The root as configured: a local directory (resolved) or a remote URL."""
        root = self.root or os.environ.get("LMFORGE_ARTIFACTS") or "artifacts"
        if is_remote(root):
            return root.rstrip("/")
        return str(Path(root.removeprefix("file://")).expanduser().resolve())

    def mirror(self) -> Mirror | None:
        """The remote root and its cache; None for a local root."""
        root = self.root_url()
        return Mirror(root, self.cache or None) if is_remote(root) else None

    def root_dir(self) -> Path:
        """The local directory the assets read and write: the root, or a remote root's cache."""
        mirror = self.mirror()
        return mirror.cache if mirror is not None else Path(self.root_url())

    def url(self, path: str | os.PathLike) -> str:
        """What another machine resolves: a cache path as its remote URL (else unchanged)."""
        mirror = self.mirror()
        rel = mirror.rel(path) if mirror is not None and "://" not in str(path) else None
        return mirror.url(rel) if rel is not None else str(path)

    def local(self, value: str | os.PathLike) -> Path | None:
        """A path recorded in metadata as a local path: a remote URL under this root as its
        place in the cache (None for a URL elsewhere)."""
        text = str(value)
        if "://" not in text:
            return Path(text)
        mirror = self.mirror()
        rel = mirror.rel(text) if mirror is not None else None
        return mirror.local(rel) if rel is not None else None

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

    def _asset_dir(self, name: str) -> Path:
        d = self.base() / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def asset_dir(self, name: str) -> Path:
        """The directory that holds every version of one asset (created if missing). On a
        remote root, for another asset than the one being materialized: with its committed
        fixed paths (not its versions) in the cache."""
        d = self._asset_dir(name)
        mirror = self.mirror()
        ctx = _current_context()
        if mirror is not None and not (ctx is not None and _is_materializing(ctx, name)):
            mirror.pull(mirror.rel(d), within=mirror.rel(d), versions=False)
        return d

    def fixed_path(self, name: str, *parts: str) -> Path:
        """A path that is the same for every run (the curation stages' day files, their index).
        On a remote root: with what is committed there in the cache; taken by the asset being
        materialized, it is uploaded when the asset succeeds (the directory, or the file's
        directory)."""
        d = self._asset_dir(name)
        path = d.joinpath(*parts)
        mirror = self.mirror()
        if mirror is None:
            return path
        mirror.pull(mirror.rel(path), within=mirror.rel(d))
        ctx = _current_context()
        if ctx is not None and _is_materializing(ctx, name):
            _written(ctx).add(path)
        return path

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
        path = self.local(getattr(value, "value", value))
        mirror = self.mirror()
        if path is not None and mirror is not None and (rel := mirror.rel(path)) is not None:
            # Committed remotely: into the cache (a no-op when it is there already). Not
            # committed (pruned, or never uploaded): only a copy this cache holds.
            if not mirror.pull_unit(rel) and mirror.synced(rel) is None:
                return None
        return path if path is not None and path.is_dir() else None

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
        where = self._asset_dir(name)
        if partition is not None:
            where = where / partition_dir_name(partition)
        vdir = where / version
        mirror = self.mirror()
        if mirror is not None and vdir not in _written(ctx):
            # The same settings were committed before (by any machine), or a killed run
            # committed units inside it (a checkpoint): continue from that copy.
            mirror.pull(mirror.rel(vdir), within=mirror.rel(vdir))
            _written(ctx).add(vdir)
        record = vdir / VERSION_FILE
        if not record.exists():
            vdir.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({
                "asset": key.to_user_string(), "partition": partition, "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "run_id": op.run_id, "inputs": inputs}, indent=2, sort_keys=True, default=str))
        if not getattr(op, "_lmforge_path_recorded", False):
            op.add_output_metadata({"path": self.url(vdir), "version": version})
            op._lmforge_path_recorded = True
        return vdir

    def commit(self, ctx) -> list[str]:
        """Upload what the asset being materialized wrote (the units of :func:`_written`): on a
        remote root, every file first and each unit's manifest last. The URLs of the units."""
        mirror = self.mirror()
        taken = sorted(_written(ctx)) if ctx is not None else []
        if mirror is None or not taken:
            return []
        units = []
        for path in taken:
            unit = path if path.is_dir() or not path.exists() else path.parent
            if not any(unit == u or u in unit.parents for u in units):
                units = [u for u in units if unit not in u.parents] + [unit]
        for unit in units:
            mirror.push(mirror.rel(unit))
        return [self.url(u) for u in units]


def _written(ctx) -> set[Path]:
    """The paths the asset being materialized took for writing (kept on its op's context)."""
    op = _op_context(ctx)
    if not hasattr(op, "_lmforge_written"):
        op._lmforge_written = set()
    return op._lmforge_written


def _remote_paths(store: "ArtifactStore", value: Any) -> Any:
    """A result with its ``path`` metadata as the URL another machine resolves."""
    metadata = getattr(value, "metadata", None)
    if not isinstance(value, (dg.MaterializeResult, dg.Output)) or "path" not in (metadata or {}):
        return value
    path = metadata["path"]
    raw = getattr(path, "value", path)
    url = store.url(raw) if isinstance(raw, (str, os.PathLike)) else raw
    if url == raw:
        return value
    new = {**metadata, "path": dg.MetadataValue.path(url) if isinstance(path, dg.PathMetadataValue)
           else url}
    if isinstance(value, dg.Output):
        return value.with_metadata(new)
    return value._replace(metadata=new)


def commit_after(fn: Callable) -> Callable:
    """``fn`` (an asset's compute function), then the upload of what it wrote when it succeeds,
    before its materialization is recorded: a materialization names only committed data."""
    def finish(kwargs: dict, results: list) -> list:
        store = kwargs.get("store")
        if not isinstance(store, ArtifactStore):
            return results
        store.commit(_current_context())
        return [_remote_paths(store, r) for r in results]

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generate(*args, **kwargs):
            yield from finish(kwargs, list(fn(*args, **kwargs)))
        return generate

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return finish(kwargs, [fn(*args, **kwargs)])[0]
    return call


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
