"""A remote artifact root (``s3://``, ``gs://``, any fsspec URL) mirrored by a local cache.

The engine and the training processes read and write local files; a remote root is reached only
through :class:`Mirror`, which copies whole directories ("units": a version directory, a day's
documents, a crawl day) between the cache and the remote root.

The visibility rule: a unit exists remotely only once its manifest (:data:`MANIFEST`, every file
with its size and sha256) is there. An upload puts every file first and the manifest last, so a
killed upload leaves nothing a reader would take; a removal deletes the manifest first, so a
half-removed unit is invisible. A download takes only the files the manifest names, checks each
one's sha256, and renames it into place. Objects without a manifest are never read, and nothing
downloaded is ever executed or unpickled (the manifest is JSON; the files are data).

Credentials and endpoints come from the standard variables of each file system (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_DEFAULT_REGION``; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, sha256_file, write_json

MANIFEST = "_store_manifest.json"
# Inside the cache: which root it mirrors, and the manifest of every unit as last synced.
CACHE_STATE = ".lmforge-cache"
_CHUNK = 1 << 20
# Packages that bring the file system of a protocol, for the one-line error when one is missing.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
             "abfs": "adlfs"}


def is_remote(root: str) -> bool:
    """A URL of a file system other than the local one (``file://`` is local)."""
    return "://" in root and not root.startswith("file://")


def filesystem(url: str):
    """``(file system, path without protocol)`` for ``url``, configured from the environment."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {"use_listings_cache": False}  # other machines write here too
    if protocol in ("s3", "s3a"):
        # botocore reads these too; naming the endpoint keys fsspec's cache of file systems on it.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        package = _PACKAGES.get(protocol, "the fsspec implementation of " + protocol)
        raise LmforgeError(f"artifact root {url}: {protocol}:// needs {package}: "
                           f"pip install {package}") from e
    except ValueError as e:
        raise LmforgeError(f"artifact root {url}: {e}") from e
    return fs, path.rstrip("/")


def default_cache(root: str) -> Path:
    """``LMFORGE_CACHE``, else ``~/.cache/lmforge/<hash of the root>``."""
    if os.environ.get("LMFORGE_CACHE"):
        return Path(os.environ["LMFORGE_CACHE"]).expanduser().resolve()
    digest = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16]
    return Path("~/.cache/lmforge").expanduser().resolve() / digest


def _skipped(parts: tuple[str, ...]) -> bool:
    """Files a unit never carries: locks, temporaries of unfinished writes, the cache's state."""
    name = parts[-1]
    return (name == MANIFEST or name.endswith(".lock") or name == "lock"
            or any(p == CACHE_STATE or (".lmforge-" in p and p.endswith(".tmp")) for p in parts))


def _check_name(name: str, where: str) -> PurePosixPath:
    """A manifest's file name as a relative path that stays inside its unit (a planted manifest
    naming ``../x`` or ``/etc/x`` is refused)."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise LmforgeError(f"{where}: refusing file name {name!r} (not a path inside the unit)")
    return p


class Mirror:
    """A remote root and the local directory that mirrors it (same relative layout)."""

    def __init__(self, root: str, cache: str | os.PathLike | None = None):
        self.root = root.rstrip("/")
        self.fs, self.base = filesystem(self.root)
        self.cache = Path(cache).expanduser().resolve() if cache else default_cache(self.root)
        self._claim_cache()

    def _claim_cache(self) -> None:
        """A cache mirrors one root: pointing two roots at one cache would mix their files."""
        marker = self.cache / CACHE_STATE / "root.json"
        if marker.is_file():
            try:
                owner = json.loads(marker.read_text()).get("root")
            except ValueError:
                owner = None
            if owner != self.root:
                raise LmforgeError(f"cache {self.cache} mirrors {owner!r}, not {self.root}: set "
                                   "LMFORGE_CACHE to another directory")
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"root": self.root})

    # -- names -----------------------------------------------------------------------------
    def url(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def local(self, rel: str) -> Path:
        return self.cache / rel if rel else self.cache

    def rel(self, value: str | os.PathLike) -> str | None:
        """The relative name of a cache path or a URL under the root; None for anything else."""
        text = str(value)
        if "://" in text:
            if text.rstrip("/") == self.root:
                return ""
            inside = text.startswith(self.root + "/")
            return text[len(self.root) + 1:].rstrip("/") if inside else None
        try:
            rel = Path(text).resolve().relative_to(self.cache).as_posix()
        except ValueError:
            return None
        return "" if rel == "." else rel

    def _record(self, rel: str) -> Path:
        return self.cache / CACHE_STATE / "units" / rel / MANIFEST

    # -- reading -----------------------------------------------------------------------------
    def manifest(self, rel: str) -> dict | None:
        """The committed manifest of unit ``rel``, or None when the unit is not (yet) visible."""
        return read_manifest(self.fs, self._key(rel), self.url(rel))

    def units(self, rel: str = "") -> list[str]:
        """The committed units at or under ``rel`` (one listing)."""
        return [u[len(self.base) + 1:] if u != self.base else "" for u in
                committed_units(self.fs, self._key(rel))]

    def pull(self, rel: str, within: str, versions: bool = True) -> list[str]:
        """Bring into the cache every committed unit that holds ``rel`` or lies under it,
        looking no higher than ``within``; with ``versions=False``, not version directories
        (units with a ``version.json``). The units pulled."""
        pulled = []
        for unit in self.units(within):
            holds = unit == rel or rel.startswith(unit + "/") or unit.startswith(rel + "/")
            if rel and not holds:
                continue
            manifest = self.manifest(unit)
            if manifest is None or (not versions and "version.json" in manifest["files"]):
                continue
            self.pull_unit(unit, manifest)
            pulled.append(unit)
        return pulled

    def synced(self, rel: str) -> dict | None:
        """The manifest of ``rel`` as this cache last synced it (downloaded or uploaded)."""
        try:
            return json.loads(self._record(rel).read_text())
        except (OSError, ValueError):
            return None

    def pull_unit(self, rel: str, manifest: dict | None = None) -> bool:
        """Download unit ``rel`` (what changed since the cache last synced it); False when it is
        not committed remotely."""
        manifest = manifest if manifest is not None else self.manifest(rel)
        if manifest is None:
            return False
        record = self.synced(rel) or {"files": {}, "local": {}}
        if record.get("files") == manifest["files"]:
            return True
        where = self.local(rel)
        known, previous = record.get("local", {}), record.get("files", {})
        for name, entry in sorted(manifest["files"].items()):
            dest = where / _check_name(name, self.url(f"{rel}/{MANIFEST}"))
            unchanged = previous.get(name) == entry and known.get(name)
            if _matches(dest, entry, unchanged or None):
                continue
            self._download(f"{rel}/{name}", dest, entry)
        for name in set(record.get("files", {})) - set(manifest["files"]):
            # Files the previous commit had and this one dropped (a re-crawled day, say).
            (where / _check_name(name, str(where))).unlink(missing_ok=True)
        self._write_record(rel, manifest)
        return True

    def _download(self, rel: str, dest: Path, entry: dict) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with atomic_path(dest) as tmp:
            try:
                with self.fs.open(self._key(rel), "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            except FileNotFoundError:
                raise LmforgeError(f"{self.url(rel)}: named by its manifest but missing "
                                   "(removed, or a commit is being replaced)") from None
            if h.hexdigest() != entry["sha256"]:
                raise LmforgeError(f"{self.url(rel)}: sha256 {h.hexdigest()[:16]} does not match "
                                   f"its manifest ({str(entry['sha256'])[:16]}): changed or "
                                   "corrupted after upload")

    def _write_record(self, rel: str, manifest: dict) -> None:
        where = self.local(rel)
        local = {}
        for name in manifest["files"]:
            try:
                st = (where / name).stat()
            except OSError:
                continue
            local[name] = [st.st_size, st.st_mtime_ns]
        record = self._record(rel)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, {**manifest, "local": local})

    # -- writing -----------------------------------------------------------------------------
    def push(self, rel: str) -> bool:
        """Upload unit ``rel`` from the cache: every changed file, then the manifest, then remove
        the objects the new manifest no longer names. A unit gone from the cache is removed
        remotely. False when nothing changed."""
        where = self.local(rel)
        old = self.manifest(rel)
        if not where.is_dir():
            if old is not None:
                self.drop(rel)
                return True
            return False
        known = (self.synced(rel) or {}).get("local", {})
        previous = (self.synced(rel) or {}).get("files", {})
        files: dict[str, dict] = {}
        for path in sorted(where.rglob("*")):
            relpath = path.relative_to(where)
            if path.is_symlink() or not path.is_file() or _skipped(relpath.parts):
                continue
            name = relpath.as_posix()
            st = path.stat()
            sha = (previous[name]["sha256"] if name in previous
                   and known.get(name) == [st.st_size, st.st_mtime_ns] else sha256_file(path))
            files[name] = {"size": st.st_size, "sha256": sha}
        old_files = old["files"] if old else {}
        if old is not None and old_files == files:
            self._write_record(rel, old)
            return False
        for name, entry in files.items():
            if old_files.get(name) != entry:
                self.fs.put_file(str(where / name), self._key(f"{rel}/{name}"))
        manifest = {"format": 1, "files": files,
                    "committed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.fs.pipe_file(f"{self._key(rel)}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        for name in set(old_files) - set(files):
            self.fs.rm_file(self._key(f"{rel}/{name}"))
        self._write_record(rel, manifest)
        return True

    def drop(self, rel: str) -> None:
        """Remove unit ``rel`` remotely (:func:`remove_unit`) and the cache's record of it."""
        remove_unit(self.fs, self._key(rel))
        self._record(rel).unlink(missing_ok=True)


def read_manifest(fs, key: str, where: str) -> dict | None:
    """The manifest of the unit at ``key`` (``where``: its URL, for errors), or None."""
    try:
        raw = fs.cat_file(f"{key}/{MANIFEST}")
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
        for name, entry in files.items():
            _check_name(name, f"{where}/{MANIFEST}")
            int(entry["size"]), str(entry["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise LmforgeError(f"{where}/{MANIFEST}: not a manifest ({e})") from None
    return manifest


def committed_units(fs, prefix: str) -> list[str]:
    """The keys of the committed units at or under ``prefix`` (one listing)."""
    prefix = prefix.rstrip("/")
    fs.invalidate_cache(prefix)
    try:
        keys = fs.find(prefix)
    except FileNotFoundError:
        return []
    suffix = "/" + MANIFEST
    return sorted(key[:-len(suffix)] for key in keys if key.endswith(suffix)
                  and (key == prefix + suffix or key.startswith(prefix + "/")))


def remove_unit(fs, key: str) -> None:
    """Remove the unit at ``key``: its manifest first (from then on it is invisible, also to a
    reader that races the removal), then the manifests of units inside it (a checkpoint
    committed on its own), then every other object under it."""
    try:
        fs.rm_file(f"{key}/{MANIFEST}")
    except FileNotFoundError:
        pass
    fs.invalidate_cache(key)
    try:
        keys = fs.find(key)
    except FileNotFoundError:
        keys = []
    manifests = [k for k in keys if k.endswith("/" + MANIFEST)]
    for batch in (manifests, [k for k in keys if k not in set(manifests)]):
        if batch:
            fs.rm(batch)


def commit_path(path: str | os.PathLike) -> str | None:
    """For an engine process (a training rank) whose ``LMFORGE_ARTIFACTS`` is remote: upload the
    directory ``path`` of its cache (``LMFORGE_CACHE``) as a unit of its own, e.g. a checkpoint
    once saved, so that a retry on another machine continues from it. Its URL; None on a local
    root or for a path outside the cache."""
    root = os.environ.get("LMFORGE_ARTIFACTS", "")
    if not is_remote(root):
        return None
    mirror = Mirror(root)
    rel = mirror.rel(path)
    if not rel:
        return None
    mirror.push(rel)
    return mirror.url(rel)


def _matches(dest: Path, entry: dict, known: list | None) -> bool:
    """The cached file is the committed one: same size and sha256. ``known``: (size, mtime) of
    the file when the cache last synced this same entry; the hash is taken only when it moved."""
    try:
        st = dest.stat()
    except OSError:
        return False
    if st.st_size != int(entry["size"]):
        return False
    if known == [st.st_size, st.st_mtime_ns]:
        return True
    return sha256_file(dest) == entry["sha256"]
