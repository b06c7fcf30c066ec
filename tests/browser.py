"""The Dagster UI in a real browser: Debian's headless Chromium driven through Selenium.

- `dagster_ui()`: the UI as `make ui` serves it (`dagster dev -w workspace.yaml -h 127.0.0.1 -p
  <free port>`: the webserver and the daemon that starts queued runs) with DAGSTER_HOME set, in its
  own process group, logging to a file; ready when `/server_info` answers, the code location has
  loaded without error, and the run queue's daemon beats. Stopped with every process it started.
- `make_driver()` / the `driver` fixture: headless Chromium at /usr/bin/chromium through
  /usr/bin/chromedriver (never Selenium Manager: nothing downloads a browser), 1600x1000,
  `--no-sandbox` when running as root.
- Pages, as a user reaches them: `first_visit` (the front page, Dagster's one-time dialog
  skipped), `open_asset`, `wait_text`, `wait_for`, `click`, `screenshot`.
- What an asset's page shows: a metadata value (`metadata_text`), the image of Markdown
  metadata (`metadata_image`, e.g. a loss curve), a table (`metadata_table`), the checks'
  results (`check_results`).
- Runs: `launch_from_launchpad` (partition picked, config edited in the launchpad's editor),
  `wait_run` (the run page's status). Lineage: `lineage_labels` (the global asset graph with a
  selection typed into its filter, every group expanded).

Screenshots go to `$LMFORGE_TEST_OUTPUT` or `<repo>/test-output/screenshots/`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1600, 1000)


def browser_skip_reason() -> str | None:
    """Why this machine cannot run the browser tests, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not installed (apt-get install {package}; `make system-deps` does it as root)"
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


def output_dir() -> Path:
    """Where screenshots go: $LMFORGE_TEST_OUTPUT, or test-output/screenshots/ in the repository."""
    out = Path(os.environ.get("LMFORGE_TEST_OUTPUT") or REPO / "test-output" / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- the server


@dataclass
class DagsterUI:
    url: str
    proc: subprocess.Popen
    log: Path
    daemon: bool = True

    def wait_ready(self, timeout: float = 180) -> None:
        """Until `/server_info` answers, the code location has loaded (an error in it fails
        here, with its message) and, with the daemon, the run queue's daemon beats."""
        _wait_ready(self, self.daemon, timeout)

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]

    def graphql(self, query: str, variables: Mapping | None = None, timeout: float = 30) -> dict:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def stop(self) -> None:
        """SIGTERM (dagster dev then stops the webserver, the daemon and the code server), and
        SIGKILL to whatever is left of its process group after a few seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # Its children (webserver, daemon, code servers, run workers) share its process group.
        _signal_group(self.proc, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: the group id is its pid
    except ProcessLookupError:
        pass


_LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
_DAEMONS = """{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"""


def _die_with_parent() -> None:
    """In the child, before it runs dagster: SIGTERM when the test process dies, even by
    SIGKILL (Linux), so that a killed test run leaves no UI behind; and SIGINT back to its
    default. dagster dev maps SIGTERM to its SIGINT handler, which is "ignore" when the tests
    were started in the background (a shell's `&`, nohup): it would then never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _executable(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else (shutil.which(name) or name)


@contextmanager
def dagster_ui(dagster_home: Path, *, workspace: Path = REPO / "workspace.yaml",
               env: Mapping[str, str] | None = None, daemon: bool = True,
               log: Path | None = None, timeout: float = 180,
               wait: bool = True) -> Iterator[DagsterUI]:
    """The Dagster UI on a free port of 127.0.0.1, with ``DAGSTER_HOME=dagster_home``.

    With ``daemon`` (the default), `dagster dev`, as `make ui` runs it: the webserver and the
    daemon, so runs launched from the UI leave the queue (the default run coordinator queues
    them; `dagster-webserver` alone would leave them QUEUED). Without, `dagster-webserver` only.
    With ``wait=False`` it returns as soon as the processes start: call ``ui.wait_ready()``
    after doing something else meanwhile (the UI takes tens of seconds to load the code).
    """
    port = free_port()
    host = ["-h", "127.0.0.1", "-p", str(port)]
    command = ([_executable("dagster"), "dev", "-w", str(workspace), *host] if daemon
               else [_executable("dagster-webserver"), "-w", str(workspace), *host])
    from services import clean_environ

    full_env = {**clean_environ(), **(env or {}), "DAGSTER_HOME": str(dagster_home),
                "DAGSTER_DISABLE_TELEMETRY": "1"}
    log = log or Path(dagster_home) / "ui.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=Path(workspace).parent, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)
    ui = DagsterUI(f"http://127.0.0.1:{port}", proc, log, daemon)
    try:
        if wait:
            ui.wait_ready(timeout)
        yield ui
    finally:
        ui.stop()


def _wait_ready(ui: DagsterUI, daemon: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    stage = "/server_info"

    def alive_and_in_time() -> None:
        if ui.proc.poll() is not None:
            raise AssertionError(f"the Dagster UI exited ({ui.proc.returncode}) before {stage} "
                                 f"was ready; its log:\n{ui.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the Dagster UI was not ready in {timeout:.0f}s (waiting for "
                                 f"{stage}); its log:\n{ui.log_tail()}")
        time.sleep(0.5)

    while True:
        try:
            with urllib.request.urlopen(f"{ui.url}/server_info", timeout=5) as response:
                if response.status == 200 and "dagster_version" in json.loads(response.read()):
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        alive_and_in_time()
    stage = "the code location to load"
    while True:
        entries = ui.graphql(_LOCATIONS)["workspaceOrError"].get("locationEntries") or []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [f"{e['name']}: {e['locationOrLoadError'].get('message', '').strip()}"
                      for e in entries
                      if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
            if errors:
                raise AssertionError("the code location failed to load: " + "; ".join(errors))
            break
        alive_and_in_time()
    stage = "the run queue's daemon"
    while daemon:
        statuses = ui.graphql(_DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
        if any(s["daemonType"] == "QUEUED_RUN_COORDINATOR" and s["healthy"] for s in statuses):
            break
        alive_and_in_time()


# ---------------------------------------------------------------------------------- the browser


def make_driver(window: tuple[int, int] = WINDOW):
    """Headless Chromium through the system chromedriver (Selenium Manager is never asked)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", f"--window-size={window[0]},{window[1]}", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--lang=en-US"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_window_size(*window)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def driver():
    reason = browser_skip_reason()
    if reason:
        pytest.skip(reason)
    d = make_driver()
    try:
        yield d
    finally:
        d.quit()


def screenshot(driver, name: str) -> Path:
    """Save the window as ``<output_dir>/<name>.png``; returns the path."""
    path = output_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def wait_for(driver, condition, what: str, timeout: float = 30, shot: str | None = None):
    """``condition(driver)`` until it is truthy (returned); on timeout an AssertionError naming
    ``what``, with the page's text, and a screenshot kept as ``shot`` (or a name from ``what``)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException):
            # the page re-rendered under us; try again
            pass
        if time.monotonic() > deadline:
            name = shot or "timeout-" + "".join(c if c.isalnum() else "_" for c in what)[:60]
            saved = screenshot(driver, name)
            text = " | ".join(line for line in page_text(driver).splitlines() if line.strip())
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} at "
                                 f"{driver.current_url} (screenshot {saved}); page text: {text[:1500]}")
        time.sleep(0.25)


def wait_text(driver, text: str, timeout: float = 30) -> None:
    """Until the page shows ``text`` (its rendered text, case-sensitive)."""
    wait_for(driver, lambda d: text in page_text(d), f"the text {text!r}", timeout)



def click(driver, text: str, within: str = "", exact: bool = True, timeout: float = 20) -> None:
    """Click the button, link, menu item or tab that reads ``text`` (inside the elements the
    XPath ``within`` selects, e.g. ``//div[contains(@class,'bp5-dialog')]``)."""
    test = f"normalize-space()={_xpath_literal(text)}" if exact else \
        f"contains(normalize-space(), {_xpath_literal(text)})"
    xpath = (f"{within}//*[(self::button or self::a or @role='menuitem' or @role='button' or "
             f"@role='tab' or @role='option') and {test}]")

    def clicked(d):
        for element in d.find_elements("xpath", xpath):
            if element.is_displayed() and element.is_enabled():
                element.click()
                return True
        return False

    wait_for(driver, clicked, f"something to click reading {text!r}", timeout)


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


def base_url(driver) -> str:
    """The UI's address: ``driver.dagster_url`` (set by `first_visit`), else the current page's origin."""
    url = getattr(driver, "dagster_url", None)
    if url:
        return url.rstrip("/")
    from urllib.parse import urlsplit

    parts = urlsplit(driver.current_url)
    if parts.scheme not in ("http", "https"):
        raise AssertionError("open the UI with first_visit(driver, ui) before the other helpers")
    return f"{parts.scheme}://{parts.netloc}"


def first_visit(driver, ui: DagsterUI | str) -> None:
    """Open the UI's front page as a new user does. The "Join the Dagster community" dialog that
    Dagster shows once per instance (on localhost, a second after the first page) is answered
    with "Skip", which the server then remembers; later pages open without it."""
    driver.dagster_url = ui if isinstance(ui, str) else ui.url
    driver.get(base_url(driver) + "/")
    wait_for(driver, lambda d: "Catalog" in page_text(d), "the UI's navigation", 60)
    expected = True if isinstance(ui, str) else ui.graphql("{ shouldShowNux }")["shouldShowNux"]
    deadline = time.monotonic() + (10 if expected else 0)
    while time.monotonic() < deadline:
        if "Join the Dagster community" in page_text(driver):
            click(driver, "Skip", within="//div[contains(@class,'bp5-dialog')]")
            wait_for(driver, lambda d: "Join the Dagster community" not in page_text(d),
                     "the community dialog to close")
            return
        time.sleep(0.25)


def _key_parts(key_path: Sequence[str] | str) -> list[str]:
    return key_path.split("/") if isinstance(key_path, str) else list(key_path)


def open_asset(driver, key_path: Sequence[str] | str, view: str | None = None,
               timeout: float = 60) -> None:
    """Open an asset's page (``view``: overview, partitions, events, checks, lineage) and wait
    until it has loaded (its name in the title and the Materialize button)."""
    from urllib.parse import quote

    parts = _key_parts(key_path)
    url = f"{base_url(driver)}/assets/{'/'.join(quote(p, safe='') for p in parts)}"
    driver.get(url + (f"?view={view}" if view else ""))

    def loaded(d):
        text = page_text(d)
        return (parts[-1] in text and "Materialize" in text
                and not d.find_elements("css selector", ".bp5-spinner, [class*=Spinner_spinner]"))

    wait_for(driver, loaded, f"the page of asset {'/'.join(parts)}", timeout)


# ---------------------------------------------------------------------------------- metadata


_ROW_SCRIPT = """
const label = arguments[0];
const rows = [...document.querySelectorAll('tr')].filter(
  tr => tr.cells.length >= 2 && tr.cells[0].innerText.trim() === label);
return rows.length ? rows[0] : null;"""


def metadata_row(driver, key_path: Sequence[str] | str, label: str, timeout: float = 30):
    """The row of the asset page's metadata table whose key is ``label`` (the latest
    materialization's metadata); opens the asset's page."""
    open_asset(driver, key_path)
    row = wait_for(driver, lambda d: d.execute_script(_ROW_SCRIPT, label),
                   f"metadata {label!r} of {'/'.join(_key_parts(key_path))}", timeout)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    return row


def metadata_text(driver, key_path: Sequence[str] | str, label: str) -> str:
    """The shown value of metadata ``label`` on the asset's page (e.g. ``path``, ``version``)."""
    row = metadata_row(driver, key_path, label)
    return row.find_elements("xpath", "./td")[-1].text.strip()


def _markdown_dialog(driver, row):
    """A long Markdown value shows as "[Show Markdown]": open its dialog and return it."""
    row.find_element("xpath", ".//a[contains(., 'Show Markdown')]").click()
    return wait_for(driver, lambda d: next(
        (e for e in d.find_elements("css selector", ".bp5-dialog") if e.is_displayed()), None),
        "the Markdown dialog")


def close_dialog(driver) -> None:
    click(driver, "Close", within="//div[contains(@class,'bp5-dialog')]")
    wait_for(driver, lambda d: not [e for e in d.find_elements("css selector", ".bp5-dialog")
                                    if e.is_displayed()], "the dialog to close")


def metadata_image(driver, key_path: Sequence[str] | str, label: str = "loss_curve",
                   shot: str | None = None) -> tuple[int, int]:
    """The image that Markdown metadata ``label`` shows (e.g. the loss curve, an inline PNG),
    decoded and drawn by the browser; returns its natural (width, height). A screenshot of it
    is kept as ``shot``."""
    row = metadata_row(driver, key_path, label)
    value = row.find_elements("xpath", "./td")[-1]
    holder = value if value.find_elements("css selector", "img") else _markdown_dialog(driver, row)

    def drawn(d):
        sizes = d.execute_script(
            "return [...arguments[0].querySelectorAll('img')].filter(i => i.complete)"
            ".map(i => [i.naturalWidth, i.naturalHeight])", holder)
        return next((tuple(s) for s in sizes if s[0] > 0 and s[1] > 0), None)

    size = wait_for(driver, drawn, f"the image of metadata {label!r}")
    if shot:
        screenshot(driver, shot)
    if holder is not value:
        close_dialog(driver)
    return size


def metadata_table(driver, key_path: Sequence[str] | str, label: str,
                   shot: str | None = None) -> list[list[str]]:
    """The table that metadata ``label`` shows (a Markdown table, inline or behind "[Show
    Markdown]", or a table metadata value): its rows as lists of cell texts, header first."""
    row = metadata_row(driver, key_path, label)
    value = row.find_elements("xpath", "./td")[-1]
    if not value.find_elements("css selector", "table") and \
            value.find_elements("xpath", ".//a[contains(., 'Show Markdown') or contains(., 'Show Table')]"):
        link = value.find_element("xpath", ".//a[contains(., 'Show Markdown') or contains(., 'Show Table')]")
        link.click()
        holder = wait_for(driver, lambda d: next(
            (e for e in d.find_elements("css selector", ".bp5-dialog") if e.is_displayed()), None),
            "the table's dialog")
    else:
        holder = value
    rows = wait_for(driver, lambda d: d.execute_script(
        "const t = arguments[0].querySelector('table'); if (!t) return null;"
        "return [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim()));", holder),
        f"the table of metadata {label!r}")
    if shot:
        screenshot(driver, shot)
    if holder is not value:
        close_dialog(driver)
    return rows


def check_results(driver, key_path: Sequence[str] | str, timeout: float = 30) -> dict[str, str]:
    """The asset's Checks tab: each check's name and the status it shows (Succeeded, Failed,
    Not evaluated, ...)."""
    open_asset(driver, key_path, view="checks")
    script = """
      return [...document.querySelectorAll('[class*=checkRow]')].map(row => {
        const name = row.querySelector('[title]');
        const spans = row.querySelectorAll('span');
        return [name ? name.getAttribute('title') : '', spans.length ? spans[spans.length - 1].innerText.trim() : ''];
      }).filter(r => r[0]);"""
    rows = wait_for(driver, lambda d: d.execute_script(script), "the asset's checks", timeout)
    return {name: status for name, status in rows}


# ---------------------------------------------------------------------------------- runs


_EDITOR_ELEMENT = "document.querySelector('.bp5-dialog .CodeMirror')"
_EDITOR = _EDITOR_ELEMENT + ".CodeMirror"


def open_launchpad(driver, key_path: Sequence[str] | str) -> None:
    """On the asset's page: the arrow beside Materialize, then "Open launchpad"."""
    open_asset(driver, key_path)
    arrow = wait_for(driver, lambda d: d.execute_script("""
      const b = [...document.querySelectorAll('button')].find(
        b => b.innerText.trim().startsWith('Materialize'));
      const arrow = b && b.closest('span, div').parentElement.querySelector('[aria-label=arrow_drop_down]');
      return arrow ? arrow.closest('button') : null;"""),
        "the arrow beside Materialize")
    arrow.click()
    click(driver, "Open launchpad", exact=False)
    wait_text(driver, "Launchpad")
    # The dialog renders again once its run config has loaded: wait for that, unchanged a moment.
    seen = []

    def settled(d):
        seen.append(d.execute_script(f"const e = {_EDITOR_ELEMENT}; return e ? e.CodeMirror.getValue() : ''"))
        return len(seen) > 2 and seen[-1] and seen[-1] == seen[-2] == seen[-3]

    wait_for(driver, settled, "the launchpad's run config")


def launchpad_config(driver) -> str:
    return driver.execute_script(f"return {_EDITOR}.getValue()")


def launch_from_launchpad(driver, key_path: Sequence[str] | str, partition: str | None = None,
                          config: Mapping[str, object] | None = None, shot: str | None = None) -> str:
    """Materialize an asset through its launchpad: pick ``partition``, set the asset's
    ``config`` fields in the run config the editor shows (through the editor's own API, then
    let the launchpad validate it), press Materialize; returns the run id of the run page the
    UI opens."""
    import yaml
    parts = _key_parts(key_path)
    open_launchpad(driver, parts)
    dialog = "//div[contains(@class,'bp5-dialog')]"
    if partition is not None:
        box = wait_for(driver, lambda d: next(iter(d.find_elements(
            "css selector", ".bp5-dialog input[placeholder='Partition']")), None),
            "the launchpad's partition box")
        box.click()
        box.send_keys(partition)
        suggestion = wait_for(driver, lambda d: next(
            (e for e in d.find_elements("css selector", "[role=menuitem]")
             if e.is_displayed() and e.text.strip() == partition), None),
            f"the partition {partition!r} among the suggestions", 15)
        suggestion.click()
        wait_text(driver, f"partition: {partition}")
    if config:
        wait_for(driver, lambda d: d.execute_script(f"return !!{_EDITOR}"), "the config editor")
        # Wait for the scaffolded config (it arrives after the partition's tags load).
        wait_for(driver, lambda d: "ops:" in launchpad_config(d), "the launchpad's run config")
        run_config = yaml.safe_load(launchpad_config(driver)) or {}
        ops = run_config.setdefault("ops", {})
        name = next((op for op in ops if op == parts[-1] or op.endswith("__" + parts[-1])),
                    "__".join(parts))
        ops.setdefault(name, {}).setdefault("config", {}).update(config)
        driver.execute_script(f"{_EDITOR}.setValue(arguments[0])",
                              yaml.safe_dump(run_config, sort_keys=False))
    wait_for(driver, lambda d: "No errors" in d.find_element("xpath", dialog).text,
             "the launchpad to find no errors in the config")
    if shot:
        screenshot(driver, shot)
    click(driver, "Materialize", within=dialog)
    url = wait_for(driver, lambda d: "/runs/" in d.current_url and d.current_url,
                   "the run's page after launching", 60)
    return url.rstrip("/").split("/runs/")[1].split("?")[0]


TERMINAL = ("Success", "Failure", "Canceled")


def run_status(driver, run_id: str) -> str:
    """The status the run page's header shows (Queued, Starting, Started, Success, Failure...)."""
    import re

    match = re.search(rf"\n{re.escape(run_id[:8])}\n([A-Za-z ]+)\n", "\n" + page_text(driver))
    return match.group(1).strip() if match else ""


def wait_run(driver, run_id: str, timeout: float = 180, shot: str | None = None) -> str:
    """Open the run's page and wait until it shows an end state; returns it (Success, Failure,
    Canceled). The page updates by itself as the run's events arrive."""
    if f"/runs/{run_id}" not in driver.current_url:
        driver.get(f"{base_url(driver)}/runs/{run_id}")
    status = wait_for(driver, lambda d: run_status(d, run_id) in TERMINAL and run_status(d, run_id),
                      f"run {run_id[:8]} to end", timeout, shot=(shot or f"run-{run_id[:8]}") + "-timeout")
    if shot:
        screenshot(driver, shot)
    return status


def failure_lines(driver) -> list[str]:
    """Lines of the run page that tell why a run failed."""
    return [line for line in page_text(driver).splitlines()
            if any(w in line for w in ("Error", "error", "FAILURE", "failed"))][:20]


# ---------------------------------------------------------------------------------- lineage


def label_shows(label: str, name: str) -> bool:
    """Whether a node label shows ``name``, whole or shortened in the middle as the graph does
    when zoomed out (``extract…_documents``)."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def lineage_labels(driver, selection: str, shot: str | None = None) -> list[str]:
    """The global asset lineage with ``selection`` (Dagster's selection syntax, e.g.
    ``job:"curation"``) typed into its filter box and every group expanded: the label of each
    asset node the graph draws (see `label_shows`)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{base_url(driver)}/asset-groups")
    box = wait_for(driver, lambda d: next(iter(d.find_elements("css selector", ".CodeMirror")), None),
                   "the lineage's filter box", 60)
    box.click()
    ActionChains(driver).send_keys(selection).perform()
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait_for(driver, lambda d: "/asset-groups~" in d.current_url, "the selection to apply")
    # The graph's gear: the icon-only settings button (the navigation's one reads "Settings").
    settings = wait_for(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('button')].find("
        "b => b.querySelector('[aria-label=settings]') && !b.innerText.trim()) || null"),
        "the graph's settings button")
    settings.click()
    item = wait_for(driver, lambda d: next(iter(d.find_elements(
        "xpath", "//*[(self::button or self::a or @role='menuitem') and "
                 "(contains(normalize-space(), 'Expand all groups') or "
                 "contains(normalize-space(), 'Collapse all groups'))]")), None),
        "the graph's settings menu")
    if "Expand all groups" in item.text:
        item.click()
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # close the menu
    script = """return [...document.querySelectorAll('svg foreignObject [class*=assetNodeContainer]')]
                  .map(n => { const name = n.querySelector('[class*=assetName], [title]');
                              return name ? (name.getAttribute('title') || name.textContent).trim() : ''; })
                  .filter(t => t);"""
    wait_for(driver, lambda d: d.execute_script(script), "asset nodes in the lineage", 30)
    time.sleep(1)  # the graph animates to its new layout; read it once it has settled
    labels = driver.execute_script(script)
    if shot:
        screenshot(driver, shot)
    return labels
