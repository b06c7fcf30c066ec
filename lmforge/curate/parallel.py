"""Shard-parallel execution of a curation stage: in this process, on a local process pool, or on
a Ray cluster, with the same results.

A stage splits its day into shards (one WARC file, one input Parquet part) and hands
:func:`run_tasks` a top-level function and one task per shard. The function writes its shard's
output atomically and returns small stats, so a shard that ran twice (a killed worker's task
redone) gives the same bytes, and a re-run can skip the shards already written (``done``).

- ``local``, one worker: a loop in this process, no pool and no pickling: today's single process.
- ``local``, N workers: a ``concurrent.futures`` process pool started by ``forkserver`` (never
  ``fork``: a forked copy of a process holding threads, such as torch's or Ray's, can deadlock).
  A worker that dies (OOM killer, ``kill -9``) breaks the pool; the shards that had not finished
  are resubmitted to a fresh pool, a bounded number of times.
- ``ray``: a real Ray cluster, the one at ``ray_address`` (or ``RAY_ADDRESS``), else one started
  here with ``workers`` CPUs and stopped at the end. Tasks are ``ray.remote(max_retries=...)``:
  Ray reruns the task of a worker that died. An exception raised by the task itself is not
  retried (it would fail the same way): it is reported in one line naming the shard.

A stage of several rounds (dedup, quality's two passes) wraps them in :func:`parallel_session`,
so the pool or the cluster starts once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator, Literal, Sequence, TypeVar

from pydantic import BaseModel, Field

from lmforge.errors import LmforgeError

T = TypeVar("T")

# How many times a shard is started in all when its worker keeps dying (Ray's max_retries is one
# less). A shard that kills every worker it runs on is a bug to see, not to retry forever.
MAX_ATTEMPTS = 4


class ParallelConfig(BaseModel):
    """Where a curation stage's shards run. The same for every stage, the CLI and the run config."""

    backend: Literal["local", "ray"] = Field(
        "local", description="local: this machine (one worker runs in this process; more, a "
        "process pool); ray: a Ray cluster (the one at ray_address / RAY_ADDRESS, else a local "
        "one started for the stage)")
    workers: int = Field(1, ge=1, description="shards processed at once: the pool's processes, "
                         "the CPUs of a Ray cluster started here, the Ray tasks in flight")
    ray_address: str | None = Field(
        None, description="an existing Ray cluster (host:port of its head, or 'auto'); default: "
        "RAY_ADDRESS, else start a local one (backend ray only)")


def run_tasks(fn: Callable[[T], Any], tasks: Sequence[T], parallel: ParallelConfig | None = None,
              *, done: Callable[[T], Any] | None = None, desc: str = "",
              label: Callable[[T], str] = str,
              progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """``[fn(task) for task in tasks]``, run as ``parallel`` says; results in the tasks' order.

    ``fn`` must be a top-level function of an importable module and ``tasks`` picklable (they
    travel to other processes). ``done(task)`` returns what a finished task recorded when it ran
    before (kept as its result; the task is skipped) or None to run it. Progress goes to
    ``progress(k, n)``, or as ``[desc] k/n shards`` lines on stderr. A task that raises fails the
    whole call with one line naming its shard (``label(task)``)."""
    parallel = parallel or ParallelConfig()
    tasks = list(tasks)
    results: list[Any] = [None] * len(tasks)
    todo: list[int] = []
    for i, task in enumerate(tasks):
        prior = done(task) if done is not None else None
        if prior is None:
            todo.append(i)
        else:
            results[i] = prior
    n, finished = len(tasks), len(tasks) - len(todo)

    def report() -> None:
        if progress is not None:
            progress(finished, n)
        else:
            print(f"[{desc or getattr(fn, '__name__', 'tasks')}] {finished}/{n} shards"
                  + (f" ({n - len(todo)} already done)" if len(todo) < n else ""),
                  file=sys.stderr, flush=True)

    report()
    if not todo:
        return results

    def finish(i: int, value: Any) -> None:
        nonlocal finished
        results[i] = value
        finished += 1
        report()

    def failed(i: int, e: BaseException) -> LmforgeError:
        return _task_error(desc, label(tasks[i]), e)

    if parallel.backend == "ray":
        _run_ray(fn, tasks, todo, parallel, finish, failed)
    elif parallel.workers == 1 or len(todo) == 1:
        for i in todo:
            try:
                value = fn(tasks[i])
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - one line naming the shard, whatever it was
                raise failed(i, e) from e
            finish(i, value)
    else:
        _run_pool(fn, tasks, todo, parallel.workers, finish, failed, desc)
    return results


def _task_error(desc: str, shard: str, e: BaseException) -> LmforgeError:
    """The one line for a shard that failed; an LmforgeError keeps its class (InputError, ...)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, LmforgeError):
        text = f"{type(e).__name__}: {text}"
    msg = f"{desc + ': ' if desc else ''}shard {shard}: {text}"
    if isinstance(e, LmforgeError):
        try:
            return type(e)(msg)
        except TypeError:  # a subclass with another constructor
            pass
    return LmforgeError(msg)


def _worker_init() -> None:
    """One thread per pool worker for the numeric libraries, as Ray does for its workers: the
    pool already uses every core it was given."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


# The pool of the innermost parallel_session: {"pool": executor, "workers": n}.
_SESSION: list[dict[str, Any]] = []


def _new_pool(workers: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                               mp_context=multiprocessing.get_context("forkserver"))


def _kill_pool(pool) -> None:
    """Stop a pool now, its running tasks too (they leave temporaries, swept by the next run)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def parallel_session(parallel: ParallelConfig | None = None) -> Iterator[None]:
    """Start the pool or the Ray cluster once for several :func:`run_tasks` calls (a stage's
    rounds), instead of once per call; it ends with the block."""
    parallel = parallel or ParallelConfig()
    if parallel.backend == "ray":
        started = _connect_ray(parallel)
        try:
            yield
        finally:
            if started:
                import ray

                ray.shutdown()
    elif parallel.workers > 1:
        holder = {"pool": _new_pool(parallel.workers), "workers": parallel.workers}
        _SESSION.append(holder)
        try:
            yield
        except BaseException:
            _kill_pool(holder["pool"])
            raise
        else:
            holder["pool"].shutdown(wait=True)
        finally:
            _SESSION.remove(holder)
    else:
        yield


def _run_pool(fn, tasks, todo: list[int], workers: int, finish, failed, desc: str) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    session = next((h for h in reversed(_SESSION) if h["workers"] == workers), None)
    pending = list(todo)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        broken = False
        pool = session["pool"] if session else _new_pool(min(workers, len(pending)))
        futures = {}
        try:
            futures = {pool.submit(fn, tasks[i]): i for i in pending}
            waiting = set(futures)
            while waiting:
                ready, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                for fut in ready:
                    i = futures[fut]
                    e = fut.exception()
                    if isinstance(e, BrokenProcessPool):
                        broken = True
                    elif e is not None:
                        raise failed(i, e) from e
                    else:
                        finish(i, fut.result())
                        pending.remove(i)
        except BrokenProcessPool:  # broken while submitting
            broken = True
        except BaseException:
            # A failed shard, Ctrl-C, a cancelled run: the other shards stop now, not when done.
            if session:
                for fut in futures:
                    fut.cancel()
            else:
                _kill_pool(pool)
            raise
        if broken:
            pool.shutdown(wait=False, cancel_futures=True)
            if session:
                session["pool"] = _new_pool(workers)
        elif not session:
            pool.shutdown(wait=True)
        if not pending:
            return
        if attempt < MAX_ATTEMPTS:
            print(f"[{desc or 'tasks'}] a worker died; {len(pending)} unfinished shard(s) "
                  f"resubmitted to a new pool (attempt {attempt + 1} of {MAX_ATTEMPTS})",
                  file=sys.stderr, flush=True)
    raise LmforgeError(f"{desc + ': ' if desc else ''}a worker died on every one of "
                       f"{MAX_ATTEMPTS} attempts at shard(s) "
                       f"{', '.join(str(tasks[i]) for i in pending[:5])}")


def _call(fn: Callable[[T], Any], task: T) -> Any:
    """What a Ray task runs (Ray wraps Python functions only; ``fn`` may be any callable)."""
    return fn(task)


def _connect_ray(parallel: ParallelConfig) -> bool:
    """Join the cluster ``parallel`` names, or start a local one; False when this process is
    already connected (a session, the caller), so whoever connected ends it."""
    try:
        import ray
    except ImportError:
        raise LmforgeError("backend 'ray' needs Ray: `pip install 'ray[default]'`") from None
    if ray.is_initialized():
        return False
    address = parallel.ray_address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=parallel.workers, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise LmforgeError(f"cannot start or reach {where}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    return True


def _run_ray(fn, tasks, todo: list[int], parallel: ParallelConfig, finish, failed) -> None:
    started = _connect_ray(parallel)
    import ray
    from ray.exceptions import RayTaskError

    running: dict[Any, int] = {}
    try:
        remote = ray.remote(num_cpus=1, max_retries=MAX_ATTEMPTS - 1,
                            retry_exceptions=False)(_call)
        queue = list(todo)
        while queue or running:
            while queue and len(running) < parallel.workers:
                i = queue.pop(0)
                running[remote.remote(fn, tasks[i])] = i
            ready, _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ready[0])
            try:
                value = ray.get(ready[0])
            except RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                raise failed(i, cause) from None
            except ray.exceptions.RayError as e:  # the worker died on every attempt, or the node
                raise failed(i, e) from None
            finish(i, value)
    except BaseException:
        for ref in running:  # the cluster may outlive this stage: its other shards stop
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def add_parallel_arguments(parser) -> None:
    """``--backend``, ``--workers``, ``--ray-address``: the same on every curation command."""
    from lmforge.config import add_config_arguments

    add_config_arguments(parser, ParallelConfig, config_flag=False)


def parallel_from_args(args) -> ParallelConfig:
    """The :class:`ParallelConfig` of the flags :func:`add_parallel_arguments` added."""
    from lmforge.config import build_config

    return build_config(ParallelConfig, {k: getattr(args, k) for k in ParallelConfig.model_fields
                                         if getattr(args, k, None) is not None})


def with_parallel(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with :class:`ParallelConfig`'s fields: the run config of a sharded stage."""
    import pydantic

    clash = sorted(set(model.model_fields) & set(ParallelConfig.model_fields))
    if clash:
        raise TypeError(f"{model.__name__} has field(s) {', '.join(clash)} of ParallelConfig")
    return pydantic.create_model(model.__name__, __base__=model, __doc__=model.__doc__,
                                 **{k: (f.annotation, f)
                                    for k, f in ParallelConfig.model_fields.items()})
