"""Where a training process reports to: Dagster Pipes when Dagster launched it, stderr otherwise.

Only rank 0 reports; the other ranks get a silent reporter, so the code that calls ``log`` and
``report`` needs no rank checks. ``dagster_pipes`` is a small dependency-free package and is
imported only when the Pipes environment is present: the engine never imports ``dagster``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


WATCH_PID_ENV = "LMFORGE_LAUNCHER_PID"


def watch_launcher(interval: float = 2.0) -> None:
    """End this process when the process that launched it is gone (``LMFORGE_LAUNCHER_PID``, set
    by the Dagster launcher on the same machine): a run worker killed with SIGKILL must not leave
    an orphan training that keeps writing into the version its retry resumes from. The exit is
    immediate (as a kill would be): checkpoints are written atomically, so the retry resumes from
    the last complete one."""
    import threading

    value = os.environ.get(WATCH_PID_ENV, "")
    if not value.isdigit() or getattr(watch_launcher, "_started", False):
        return
    pid = int(value)

    def watch() -> None:
        import time

        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(137)
            except PermissionError:
                pass  # alive, someone else's
            time.sleep(interval)

    threading.Thread(target=watch, name="lmforge-launcher-watch", daemon=True).start()
    watch_launcher._started = True


class Telemetry:
    """``with Telemetry(rank) as t: t.log("step 10 ..."); t.report({...})``."""

    def __init__(self, rank: int = 0, prefix: str = "lmforge"):
        self.rank = rank
        self.prefix = prefix
        self.pipes = None
        self._pipes_cm = None

    @property
    def under_pipes(self) -> bool:
        return self.pipes is not None

    def __enter__(self) -> "Telemetry":
        watch_launcher()
        if self.rank == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            self._pipes_cm = open_dagster_pipes()
            self.pipes = self._pipes_cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._pipes_cm is not None:
            self._pipes_cm.__exit__(*exc)
            self._pipes_cm = self.pipes = None

    def log(self, message: str) -> None:
        if self.rank != 0:
            return
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(f"[{self.prefix}] {message}", file=sys.stderr, flush=True)

    def report(self, metadata: Mapping[str, Any]) -> None:
        """Final figures: the asset's materialization metadata under Pipes, one JSON line otherwise.

        A value may be Pipes' typed form ``{"raw_value": ..., "type": "md"}`` (see ``plots.py``),
        which Pipes passes on as it is; the JSON line shows its raw value, and a long one (an
        inline image) only as its length, to keep the terminal readable.
        """
        if self.rank != 0:
            return
        metadata = _jsonable(dict(metadata))
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)
        else:
            line = {k: _terminal_value(v) for k, v in metadata.items()}
            print(f"[{self.prefix}] summary {json.dumps(line, sort_keys=True)}", file=sys.stderr, flush=True)


def _is_typed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"raw_value", "type"}


def _terminal_value(value: Any) -> Any:
    if not _is_typed(value):
        return value
    raw = value["raw_value"]
    if isinstance(raw, str) and len(raw) > 500:
        return f"<{value['type']}, {len(raw):,} characters>"
    return raw
