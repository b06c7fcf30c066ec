"""lm-eval `custom_dataset` hook: held-out documents from the path the harness passes."""

from lmforge.evaluate.tasks import load_heldout


def load(heldout_path=None, **kwargs):
    return load_heldout(heldout_path)
