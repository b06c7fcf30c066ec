"""Versions of outputs in the artifact store: how they are laid out, listed and pruned.

Every materialization of a versioned asset writes ``<root>/<deployment>/<asset>/[<partition>/]
<version>/`` with a ``version.json`` beside its files (what made it: the asset, its partition,
its code version, config and upstream versions, the run, the time). This module reads that
layout; which versions are still in use is decided by the caller (``pipelines.versions`` asks
the Dagster instance) and passed in as ``protected``. A remote root (``s3://...``) is read through
``lmforge.remote``: only committed versions (with their manifest) are listed, and a removal
deletes the manifest first.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

VERSION_FILE = "version.json"
RELEASE_FILE = "release.json"


def partition_dir_name(partition: str) -> str:
    """A partition key as one directory name (``math|smoke`` -> ``math__smoke``)."""
    name = re.sub(r"[^A-Za-z0-9._=-]", "__", str(partition))
    if name in ("", ".", ".."):
        raise ValueError(f"partition key {partition!r} cannot name a directory")
    return name


@dataclass
class Version:
    path: Path | str
    """The directory, or on a remote root its URL."""
    asset: str
    partition: str | None
    version: str
    created: str
    run_id: str
    size_bytes: int = 0
    released: bool = False
    source: str | None = None
    """For a release: the version it was made from."""

    @property
    def group(self) -> tuple[str, str | None]:
        return self.asset, self.partition


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def list_versions(root: str | Path, sizes: bool = False) -> list[Version]:
    """Every version under ``root`` (an artifact root or one deployment's directory, or their
    URL), oldest first within each asset and partition."""
    from lmforge.remote import is_remote

    if is_remote(str(root)):
        return _sorted(_remote_versions(str(root)))
    root = Path(root)
    found = []
    for record in sorted(root.glob("**/" + VERSION_FILE)):
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # a version being created, or not ours
        vdir = record.parent
        release = vdir / RELEASE_FILE
        source = None
        if release.is_file():
            try:
                source = json.loads(release.read_text()).get("source")
            except (OSError, ValueError):
                source = None
        found.append(Version(path=vdir, asset=str(meta.get("asset", "?")),
                             partition=meta.get("partition"), version=str(meta.get("version", vdir.name)),
                             created=str(meta.get("created", "")), run_id=str(meta.get("run_id", "")),
                             size_bytes=_size(vdir) if sizes else 0,
                             released=release.is_file(), source=source))
    return _sorted(found)


def _sorted(found: list[Version]) -> list[Version]:
    return sorted(found, key=lambda v: (v.asset, v.partition or "", v.created, v.version))


def _remote_versions(root: str) -> list[Version]:
    """The committed versions under a remote root: units whose manifest names a version record
    (sizes from the manifest, one read of each version's record)."""
    from lmforge.remote import committed_units, filesystem, read_manifest

    fs, base = filesystem(root)
    root = root.rstrip("/")
    found = []
    for key in committed_units(fs, base):
        url = root + key[len(base):]
        manifest = read_manifest(fs, key, url)
        files = manifest["files"] if manifest else {}
        if VERSION_FILE not in files:
            continue  # a fixed path (a day's documents, a crawl day), not a version
        try:
            meta = json.loads(fs.cat_file(f"{key}/{VERSION_FILE}"))
            source = (json.loads(fs.cat_file(f"{key}/{RELEASE_FILE}")).get("source")
                      if RELEASE_FILE in files else None)
        except (OSError, ValueError):
            continue
        found.append(Version(path=url, asset=str(meta.get("asset", "?")),
                             partition=meta.get("partition"),
                             version=str(meta.get("version", url.rsplit("/", 1)[-1])),
                             created=str(meta.get("created", "")),
                             run_id=str(meta.get("run_id", "")),
                             size_bytes=sum(int(e["size"]) for e in files.values()),
                             released=RELEASE_FILE in files, source=source))
    # A release names its source as the local path it had where it was made (a cache of this
    # root, with this root's layout): the version whose place in the root ends that path.
    by_rel = {str(v.path)[len(root) + 1:]: str(v.path) for v in found}
    for v in found:
        if v.source and "://" not in v.source:
            v.source = next((url for rel, url in by_rel.items()
                             if v.source.rstrip("/").endswith("/" + rel)), v.source)
    return found


@dataclass
class PrunePlan:
    keep: list[Version] = field(default_factory=list)
    remove: list[Version] = field(default_factory=list)
    why_kept: dict[str, str] = field(default_factory=dict)


def plan_prune(versions: list[Version], keep_last: int, protected: dict[str, str]) -> PrunePlan:
    """Which versions to remove: all but the ``keep_last`` newest of each asset and partition,
    never a release, never what a release was made from, never a path in ``protected`` (path ->
    why: the latest materialization, a version newer than it, ...)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    plan = PrunePlan()
    sources = {v.source for v in versions if v.released and v.source}
    groups: dict[tuple[str, str | None], list[Version]] = {}
    for v in versions:
        groups.setdefault(v.group, []).append(v)
    for group in groups.values():
        newest = {id(v) for v in sorted(group, key=lambda v: (v.created, v.version))[-keep_last:]}
        for v in group:
            why = (protected.get(str(v.path)) or ("a release" if v.released else None)
                   or ("a release was made from it" if str(v.path) in sources else None)
                   or (f"one of the last {keep_last}" if id(v) in newest else None))
            if why:
                plan.keep.append(v)
                plan.why_kept[str(v.path)] = why
            else:
                plan.remove.append(v)
    return plan


def remove_version(version: Version) -> None:
    """Remove one version directory (its record last, so a half-removed one is still listed).
    On a remote root: its manifest first, so a half-removed one is invisible to every reader."""
    from lmforge.remote import filesystem, is_remote, remove_unit

    if is_remote(str(version.path)):
        fs, key = filesystem(str(version.path))
        remove_unit(fs, key)
        return
    for child in version.path.iterdir():
        if child.name == VERSION_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    shutil.rmtree(version.path)
