"""List and prune the versions in the artifact store (``python -m pipelines.versions``).

Every materialization of a versioned asset is a directory ``<root>/<deployment>/<asset>/
[<partition>/]<version>/`` (``resources.store``). ``list`` shows them with their size and what
keeps them; ``prune --keep N`` removes all but the N newest of each asset and partition, and
never removes: a release (``released_model``'s versions) or the version a release was made from,
the version the latest materialization names (what downstream assets read), or a version newer
than that one (a run may be writing it). ``--dry-run`` says what it would remove. On a remote
root (``--artifacts s3://bucket/prefix``) it lists the committed versions and removes their
objects, each version's manifest first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _protected(instance, versions) -> dict[str, str]:
    import dagster as dg

    out: dict[str, str] = {}
    groups: dict[tuple[str, str | None], list] = {}
    for v in versions:
        groups.setdefault(v.group, []).append(v)
    for (asset, partition), group in groups.items():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(asset),
                                  asset_partitions=[partition] if partition else None), limit=1).records
        if not records:
            for v in group:  # never materialized: a run may be writing it
                out.setdefault(str(v.path), "not materialized yet (a run may be writing it)")
            continue
        meta = records[0].event_log_entry.asset_materialization.metadata
        latest = str(getattr(meta.get("path"), "value", meta.get("path", "")))
        out[latest] = "the latest materialization"
        latest_created = next((v.created for v in group if str(v.path) == latest), None)
        for v in group:
            if latest_created is not None and v.created > latest_created:
                out.setdefault(str(v.path), "newer than the latest materialization")
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} PiB"


def main(argv: list[str] | None = None) -> int:
    from lmforge.errors import LmforgeError
    from lmforge.versions import list_versions, plan_prune, remove_version

    parser = argparse.ArgumentParser(prog="python -m pipelines.versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", default=None,
                        help="artifact root (default: LMFORGE_ARTIFACTS or ./artifacts)")
    parser.add_argument("--deployment", default=None, help="only this deployment (e.g. tiny)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every version, its size, and whether it is kept by `prune`")
    prune = sub.add_parser("prune", help="remove old versions (see the rules above)")
    prune.add_argument("--keep", type=int, default=3, help="versions kept per asset and partition")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    args = parser.parse_args(argv)

    import dagster as dg

    from lmforge.remote import is_remote

    given = args.artifacts or os.environ.get("LMFORGE_ARTIFACTS") or "artifacts"
    if is_remote(given):  # only the committed versions (their manifest is there)
        root: str | Path = given.rstrip("/") + (f"/{args.deployment}" if args.deployment else "")
    else:
        root = Path(given.removeprefix("file://")).resolve()
        if args.deployment:
            root = root / args.deployment
        if not root.is_dir():
            print(f"error: no artifact directory at {root}", file=sys.stderr)
            return 2
    try:
        versions = list_versions(root, sizes=True)
        instance = dg.DagsterInstance.get()
        plan = plan_prune(versions, getattr(args, "keep", 3), _protected(instance, versions))
    except (LmforgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the object store's client: no endpoint, credentials refused
        if not is_remote(given):
            raise
        print(f"error: {root}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    kept = {str(v.path) for v in plan.keep}
    if args.command == "list":
        for v in versions:
            where = v.asset + (f"[{v.partition}]" if v.partition else "")
            status = f"kept: {plan.why_kept[str(v.path)]}" if str(v.path) in kept else "prunable"
            print(f"{where:<40} {v.version}  {v.created}  {_size(v.size_bytes):>9}  {status}")
        print(f"{len(versions)} versions, {_size(sum(v.size_bytes for v in versions))}; "
              f"{len(plan.remove)} prunable ({_size(sum(v.size_bytes for v in plan.remove))})")
        return 0
    for v in plan.remove:
        print(f"{'would remove' if args.dry_run else 'removing'} {v.path} ({_size(v.size_bytes)})")
        if not args.dry_run:
            remove_version(v)
    print(f"{'would free' if args.dry_run else 'freed'} {_size(sum(v.size_bytes for v in plan.remove))} "
          f"in {len(plan.remove)} versions; kept {len(plan.keep)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
