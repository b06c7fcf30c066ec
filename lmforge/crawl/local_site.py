"""The demo's offline web: this Python's own documentation, served by ``pydoc`` on loopback.

``python -m pydoc -n 127.0.0.1 -p 0`` renders one HTML page per module, class listing and topic,
with links between them: real pages, real links and real text that nobody on this project wrote.
The crawler treats it like any other site.

Three details make the server safe and reproducible to start from a library:

- pydoc puts its working directory on ``sys.path`` and imports whatever a page names, so it runs
  in an empty temporary directory (never the checkout, whose modules and tests it would import).
- By default it runs with ``-I -S``: isolated, and without ``site``, so it documents the standard
  library only. The pages are then the same on every machine with this Python version, and the
  server never imports torch or deepspeed to render a page. ``include_site_packages=True``
  documents the installed packages too.
- Rendering a page imports the module. ``antigravity`` opens a web browser on import, so
  ``BROWSER`` is set to ``true`` (the no-op program) and ``DISPLAY`` is removed.

The server reads commands from stdin ("q" quits) and quits at end of input, so stdin stays an open
pipe for as long as the server should live.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator

_READY = re.compile(r"Server ready at (http://\S+)")


@contextlib.contextmanager
def serve_python_docs(host: str = "127.0.0.1", port: int = 0, include_site_packages: bool = False,
                      startup_timeout: float = 30.0) -> Iterator[str]:
    """Start ``python -m pydoc`` on ``host`` and yield its base URL (ending in ``/``).

    ``port=0`` picks a free port. The server is stopped (politely, then by force) when the block
    exits, whatever happened inside it.
    """
    flags = ["-I"] if include_site_packages else ["-I", "-S"]
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["BROWSER"] = "true"
    with tempfile.TemporaryDirectory(prefix="lmforge-pydoc-") as cwd:
        proc = subprocess.Popen(
            [sys.executable, *flags, "-m", "pydoc", "-n", host, "-p", str(port)],
            cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            url = _wait_for_url(proc, startup_timeout)
            # Keep draining the server's output (its prompt, and whatever an imported module
            # prints, e.g. ``this``) so that a full pipe never blocks it.
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            _wait_until_answers(url, proc, startup_timeout)
            yield url
        finally:
            _stop(proc)


def _wait_for_url(proc: subprocess.Popen, timeout: float) -> str:
    """Read the server's output until it prints its URL (it picks the port when asked for 0)."""
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            m = _READY.search(line)
            if m:
                found.append(m.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        output = "".join(seen).strip()[-500:]
        raise RuntimeError(f"pydoc server did not start within {timeout:.0f}s"
                           f" (exit code {proc.poll()}): {output}")
    return found[0] if found[0].endswith("/") else found[0] + "/"


def _wait_until_answers(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
            return
        except (urllib.error.URLError, OSError) as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pydoc server at {url} does not answer: {e}") from e
            time.sleep(0.05)


def _drain(stream) -> None:
    with contextlib.suppress(Exception):
        for _ in stream:
            pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(Exception):
            proc.stdin.write("q\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(Exception):
        proc.stdout.close()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lmforge serve-docs",
        description="Serve this Python's documentation (pydoc) on loopback until interrupted.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--include-site-packages", action="store_true",
                        help="document installed packages too, not only the standard library")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"lmforge serve-docs: bad port {args.port}", file=sys.stderr)
        return 2
    try:
        with serve_python_docs(args.host, args.port, args.include_site_packages) as url:
            print(url, flush=True)
            print("serving; Ctrl-C stops", file=sys.stderr)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"lmforge serve-docs: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('serve-docs', main, sys.argv[1:]))
