"""Benchmarks: one folder each, read the same way by every part of lmforge that uses them.

    lmforge/benchmarks/<name>/reader.py    the one reader: exports ``BENCHMARK`` (a Benchmark)
    lmforge/benchmarks/<name>/*.yaml       the lm-eval task definition(s) for the suites

Evaluation (our lm-eval tasks' ``custom_dataset`` hook), decontamination (the texts whose n-grams
are kept out of pretraining), the quality classifier's reference text and SFT/adapter data (the
``qa`` source) all go through ``BENCHMARK``; nothing else parses a benchmark's files. Adding a
benchmark is adding a folder: decontamination protects every registered benchmark by default, and
a suite picks up its task with one line naming the task.

Benchmarks outside the package (a private set, a test's temporary folder) live in extra roots:
folders of benchmark folders, given to :func:`registry` or listed in ``LMFORGE_BENCHMARK_PATH``
(``os.pathsep``-separated, read at each call). A folder found twice is an error, not a shadow.

Data is read offline from the benchmark mirror (``lmforge.paths.benchmarks_dir()``, i.e.
``LMFORGE_BENCHMARKS_DIR``): ``<mirror>/<name>/`` by default, or any folder/file passed as
``path``. Data that is not there raises :class:`DataUnavailable`, which every caller reports as a
skip with the reason (never a silent drop, never a fake); data that is there but malformed raises
:class:`BenchmarkDataError` naming the file and line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from lmforge.errors import InputError, LmforgeError

PACKAGE_ROOT = Path(__file__).resolve().parent
READER = "reader.py"
PATH_ENV = "LMFORGE_BENCHMARK_PATH"


class DataUnavailable(RuntimeError):
    """The data a benchmark needs is not on this machine (no mirror, no file, offline hub)."""


class BenchmarkDataError(InputError):
    """A benchmark file that is there but is not what its reader reads (names file and line)."""


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every object of a JSONL file (``lmforge.io.read_jsonl``); a bad line is a
    BenchmarkDataError naming the file and line."""
    from lmforge.errors import MissingInputError
    from lmforge.io import read_jsonl as _read

    try:
        return _read(path)
    except MissingInputError:
        raise
    except LmforgeError as e:
        raise BenchmarkDataError(str(e)) from None


def require_fields(path: Path, rows: list[dict[str, Any]], fields: Iterable[str]) -> None:
    """Every row has every field as a string, else a BenchmarkDataError naming the first bad row."""
    fields = tuple(fields)
    for i, row in enumerate(rows, 1):
        missing = [f for f in fields if not isinstance(row.get(f), str)]
        if missing:
            raise BenchmarkDataError(f"{path}: row {i} has no string {', '.join(missing)} "
                                     f"(expected {', '.join(fields)})")


def mirror_dir(benchmarks_dir: str | os.PathLike | None = None) -> Path | None:
    """The benchmark mirror: ``benchmarks_dir`` when given, else lmforge.paths' default."""
    if benchmarks_dir:
        return Path(benchmarks_dir)
    from lmforge.paths import benchmarks_dir as default

    return default()


@dataclass(frozen=True)
class Benchmark:
    """What lmforge needs to know about one benchmark; each folder's ``reader.py`` makes one.

    ``read(split, path)`` returns the items of a split as dicts (the columns the lm-eval task's
    prompt reads); ``path`` is this benchmark's data, ``<mirror>/<name>`` unless ``locate`` says
    otherwise. ``contamination(item)`` gives the texts of one item a training document could
    quote (n-grams never cross them); only ``contamination_split`` (the evaluated split) is
    protected. ``chat(item)`` turns an item into (user, assistant) turns, or None for an item that
    has no usable answer. ``decontaminate=False`` marks a task whose text is not a fixed set
    (held-out documents cut from the corpus itself).
    """

    name: str
    description: str
    splits: tuple[str, ...]
    read: Callable[[str, Path], list[dict[str, Any]]]
    contamination: Callable[[dict[str, Any]], list[str]] | None = None
    contamination_split: str = "test"
    chat: Callable[[dict[str, Any]], tuple[str, str] | None] | None = None
    locate: Callable[[Path | None], Path | None] | None = None
    decontaminate: bool = True
    folder: Path | None = field(default=None, compare=False)

    def data_path(self, benchmarks_dir: str | os.PathLike | None = None,
                  path: str | os.PathLike | None = None) -> Path:
        """Where this benchmark's data is: ``path``, else ``locate(mirror)``, else
        ``<mirror>/<name>``. DataUnavailable when there is no such place."""
        if path:
            p = Path(path)
        else:
            mirror = mirror_dir(benchmarks_dir)
            if self.locate is not None:
                found = self.locate(mirror)
                if found is None:
                    raise DataUnavailable(f"{self.name}: its data was not found")
                p = found
            elif mirror is None:
                raise DataUnavailable("no benchmark mirror: set LMFORGE_BENCHMARKS_DIR or pass "
                                      "benchmarks_dir")
            else:
                p = mirror / self.name
                if not p.is_dir():
                    raise DataUnavailable(f"benchmark mirror has no {self.name}/ folder: {p}")
        if not p.exists():
            raise DataUnavailable(f"{self.name}: no data at {p}")
        return p

    def items(self, split: str, benchmarks_dir=None, path=None) -> list[dict[str, Any]]:
        if split not in self.splits:
            raise BenchmarkDataError(f"{self.name} has no split {split!r}; it has "
                                     f"{', '.join(self.splits)}")
        return self.read(split, self.data_path(benchmarks_dir, path))

    def contamination_texts(self, benchmarks_dir=None, path=None) -> list[str]:
        """Every text of the evaluated split that training data must not quote."""
        if self.contamination is None or not self.decontaminate:
            return []
        return [t for item in self.items(self.contamination_split, benchmarks_dir, path)
                for t in self.contamination(item)]

    def chat_pairs(self, split: str, benchmarks_dir=None, path=None
                   ) -> list[tuple[str, str] | None]:
        """(user, assistant) per item of ``split``, None for an item without an answer."""
        if self.chat is None:
            raise BenchmarkDataError(f"benchmark {self.name} has no question/answer form")
        return [self.chat(item) for item in self.items(split, benchmarks_dir, path)]

    def dataset(self, splits: Iterable[str] | None = None, benchmarks_dir=None, path=None):
        """A ``datasets.DatasetDict`` of the splits (lm-eval's ``custom_dataset`` hook)."""
        import datasets

        return datasets.DatasetDict({
            s: datasets.Dataset.from_list(self.items(s, benchmarks_dir, path))
            for s in (splits or self.splits)})


# ---------------------------------------------------------------------------------------------
# The registry: the folders found, read at each call (not at import) so roots can be added


def roots(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The package's folder, then ``extra``, then the folders in LMFORGE_BENCHMARK_PATH."""
    env = [p for p in os.environ.get(PATH_ENV, "").split(os.pathsep) if p]
    out: list[Path] = []
    for r in (PACKAGE_ROOT, *map(Path, extra), *map(Path, env)):
        r = r.resolve()
        if r not in out:
            out.append(r)
    return out


def _load_reader(root: Path, folder: Path) -> Benchmark:
    reader = folder / READER
    if root == PACKAGE_ROOT:
        module = importlib.import_module(f"lmforge.benchmarks.{folder.name}.reader")
    else:
        name = f"lmforge_benchmark_{abs(hash(str(reader)))}_{folder.name}"
        spec = importlib.util.spec_from_file_location(name, reader)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise LmforgeError(f"benchmark {folder.name}: {reader} does not import "
                               f"({type(e).__name__}: {e})") from e
    bench = getattr(module, "BENCHMARK", None)
    if not isinstance(bench, Benchmark):
        raise LmforgeError(f"benchmark {folder.name}: {reader} defines no BENCHMARK "
                           "(a lmforge.benchmarks.Benchmark)")
    if bench.name != folder.name:
        raise LmforgeError(f"benchmark {folder.name}: {reader} names it {bench.name!r}; the "
                           "folder name and BENCHMARK.name must be the same")
    return Benchmark(**{**bench.__dict__, "folder": folder})


def registry(extra_roots: Iterable[str | os.PathLike] = ()) -> dict[str, Benchmark]:
    """Every benchmark folder (one holding ``reader.py``) under :func:`roots`, by name."""
    found: dict[str, Benchmark] = {}
    for root in roots(extra_roots):
        if not root.is_dir():
            raise LmforgeError(f"benchmark root {root} is not a directory (check {PATH_ENV})")
        for folder in sorted(p for p in root.iterdir() if (p / READER).is_file()):
            if folder.name in found:
                raise LmforgeError(f"benchmark {folder.name} is defined twice: in "
                                   f"{found[folder.name].folder} and in {folder}")
            found[folder.name] = _load_reader(root, folder)
    return found


def names(extra_roots: Iterable[str | os.PathLike] = ()) -> list[str]:
    return list(registry(extra_roots))


def get(name: str, extra_roots: Iterable[str | os.PathLike] = ()) -> Benchmark:
    found = registry(extra_roots)
    if name not in found:
        raise LmforgeError(f"unknown benchmark {name!r}; known: {', '.join(found)}")
    return found[name]


def task_include_paths(extra_roots: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The folders lm-eval's TaskManager indexes for our task YAMLs (``include_path``)."""
    return [str(r) for r in roots(extra_roots)]
