"""lm-eval `custom_dataset` hook: GSM8K test/train from the local mirror."""

from lmforge.evaluate.tasks import load_gsm8k


def load(benchmarks_dir=None, **kwargs):
    return load_gsm8k(benchmarks_dir=benchmarks_dir)
