"""What the UI shows on the pages of a materialized `tiny` deployment, read in a real browser
(tests/browser.py); test_nightly.py drives it on the instance its daemon filled."""

from __future__ import annotations

from pathlib import Path

from browser import check_results, metadata_image, metadata_table, metadata_text, screenshot

DEPLOYMENT = "tiny"
# Every asset key the tests look at, in one place: asset name -> key path.
KEYS = {name: (DEPLOYMENT, name) for name in (
    "crawled_pages", "extracted_documents", "filtered_documents", "quality_classifier",
    "quality_filtered_documents", "deduplicated_documents", "decontaminated_documents",
    "pretrained_model", "sft_model", "base_model_eval", "sft_model_eval", "released_model",
    "pipeline_report")}


# ------------------------------------------------------------- pages of a materialized graph


def assert_model_page(driver, name: str = "pretrained_model") -> None:
    """The model's page draws its loss curve (Markdown metadata with the PNG inline) and shows
    its figures."""
    width, height = metadata_image(driver, KEYS[name], "loss_curve", shot=f"{name}-loss-curve")
    assert width > 100 and height > 100, (width, height)
    for figure in ("first_loss", "final_loss"):
        value = metadata_text(driver, KEYS[name], figure)
        assert float(value) > 0, (figure, value)
    screenshot(driver, f"{name}-page")


def assert_evaluation_page(driver, name: str = "base_model_eval") -> list[list[str]]:
    """The evaluation's page shows its score table (a header and a row per task)."""
    rows = metadata_table(driver, KEYS[name], "table", shot=f"{name}-scores")
    assert len(rows) >= 2 and len(rows[0]) >= 2, rows
    return rows


def assert_checks_page(driver, name: str, expected: dict[str, str] | None = None,
                       shot: str | None = None) -> dict[str, str]:
    """Every check of the asset shows a result (no "Not evaluated"); ``expected``: check name ->
    the status the UI shows ("Succeeded", "Failed")."""
    checks = check_results(driver, KEYS[name])
    screenshot(driver, shot or f"{name}-checks")
    assert checks, f"{name} shows no checks"
    unevaluated = [c for c, s in checks.items()
                   if s.lower() in ("not evaluated", "not executed", "")]
    assert not unevaluated, f"{name}: checks without a result: {unevaluated}"
    for check, status in (expected or {}).items():
        assert checks.get(check) == status, (check, checks)
    return checks


def assert_version_page(driver, name: str = "released_model", shot: str | None = None) -> str:
    """The page of a versioned asset (the release above all) names its version, and its `path`
    is that version's directory in the store."""
    version = metadata_text(driver, KEYS[name], "version")
    path = metadata_text(driver, KEYS[name], "path")
    screenshot(driver, shot or f"{name}-version")
    assert version and Path(path).name == version and Path(path).is_dir(), (version, path)
    return version
