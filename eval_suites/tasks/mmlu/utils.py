"""lm-eval `custom_dataset` hook: one MMLU subject from the local mirror."""

from lmforge.evaluate.tasks import load_mmlu


def load(subject, benchmarks_dir=None, cache_dir=None, **kwargs):
    return load_mmlu(subject, benchmarks_dir=benchmarks_dir, cache_dir=cache_dir)
