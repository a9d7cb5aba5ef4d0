"""Open the MLflow UI of a sweep in headless Chromium, check its runs are listed, save a screenshot.

    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db --port 5000 &
    python scripts/ui_screenshot.py --url http://127.0.0.1:5000 --sweep latest --out mlflow_ui.png

Finds the experiment and the sweep's runs through the server's REST API, opens the runs
table of the experiment filtered to the sweep
(``#/experiments/<id>/runs?workflowType=machine_learning&searchFilter=tags.sweep = '...'``),
waits until every run name is on the page, and saves a screenshot. Exit status 0 when
all runs were found, 1 when some were not (the screenshot is saved either way), 2 on
a usage problem (no server, experiment, sweep or browser).

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and
selenium (``pip install selenium``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1600,1000")


class Problem(Exception):
    """A usage problem: one line, exit status 2."""


def _api(url: str, path: str, body: dict | None = None, timeout: float = 10) -> dict:
    req = urllib.request.Request(f"{url.rstrip('/')}/api/2.0/mlflow/{path}",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise Problem(f"{url}: {path} answered {e.code}: {e.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Problem(f"no MLflow server at {url} ({e})") from None


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _experiments(url: str, experiment: str) -> list[str]:
    """Ids of the experiment ``experiment`` and its per-task ones (``<experiment>/<task>``)."""
    name = experiment.replace("'", "")
    found = [e for flt in (f"name = '{name}'", f"name LIKE '{name}/%'")
             for e in _api(url, "experiments/search", {"filter": flt, "max_results": 1000}).get("experiments", [])]
    if not found:
        raise Problem(f"no experiment '{experiment}' or '{experiment}/<task>' at {url}")
    return [e["experiment_id"] for e in found]


def _search(url: str, exp_ids: list[str], flt: str) -> list[dict]:
    runs, token = [], None
    while True:
        page = _api(url, "runs/search", {"experiment_ids": exp_ids, "filter": flt, "max_results": 1000,
                                         **({"page_token": token} if token else {})})
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def find_runs(url: str, experiment: str, sweep: str | None,
              output_root: str = "outputs") -> tuple[str, str, list[str], str]:
    """(experiment id, search filter, run names, one run's id) of the sweep's runs, via the REST API."""
    exp_ids = _experiments(url, experiment)
    if sweep == "latest":
        latest = _api(url, "runs/search", {"experiment_ids": exp_ids, "filter": "tags.sweep != ''",
                                           "order_by": ["attributes.start_time DESC"], "max_results": 1})
        if not latest.get("runs"):
            raise Problem(f"no sweep runs in experiment '{experiment}'")
        sweep = next(t["value"] for t in latest["runs"][0]["data"]["tags"] if t["key"] == "sweep")
    filters = [f"tags.sweep = {_quote(sweep)}"] if sweep else [""]
    if sweep and Path(sweep).expanduser().exists():
        # the tag holds the sweep folder relative to the output root; older runs: absolute
        folder = Path(sweep).expanduser().resolve()
        filters = [f"tags.sweep = {_quote(Path(os.path.relpath(folder, Path(output_root).resolve())).as_posix())}",
                   f"tags.sweep = {_quote(str(folder))}", f"tags.sweep LIKE {_quote('%/' + folder.name)}"]
    for flt in filters:
        runs = _search(url, exp_ids, flt)
        if runs:
            break
    else:
        raise Problem(f"no runs with {filters[0] or 'any tag'} in experiment '{experiment}' at {url}")
    # one experiment's table: the one holding most of the sweep's runs (a sweep over tasks spans several)
    ids = [r["info"]["experiment_id"] for r in runs]
    exp_id = max(set(ids), key=ids.count)
    names = [r["info"]["run_name"] for r in runs if r["info"]["experiment_id"] == exp_id]
    first = next(r for r in runs if r["info"]["experiment_id"] == exp_id)
    return exp_id, flt, names, first["info"]["run_id"]


def ui_url(url: str, exp_id: str, flt: str) -> str:
    frag = f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
    if flt:
        frag += "&searchFilter=" + urllib.parse.quote(flt, safe="")
    return f"{url.rstrip('/')}/{frag}"


def _driver(profile_dir: str):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise Problem("selenium is not installed (pip install selenium)") from None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise Problem("needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in (*CHROME_FLAGS, f"--user-data-dir={profile_dir}"):
        opts.add_argument(f)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _expand_parents(driver, opened: set[str]) -> None:
    """Click the expander of each parent run (once): the UI shows child runs collapsed."""
    for b in driver.find_elements("css selector", "button[data-component-id*='runnamecellrenderer']"):
        try:
            row = b.find_element("xpath", "./ancestor::*[@row-id][1]").get_attribute("row-id") or ""
            if row not in opened:
                opened.add(row)
                b.click()
        except Exception:  # re-rendered meanwhile: the next round finds it again
            continue


def _widen_names(driver, px: int = 260) -> None:
    """Drag the run-name column wider: its default width cuts names after ~15 characters."""
    from selenium.webdriver.common.action_chains import ActionChains

    for cell in driver.find_elements("css selector", ".ag-header-cell"):
        if "Run Name" in (cell.text or ""):
            try:
                handle = cell.find_element("css selector", ".ag-header-cell-resize")
                ActionChains(driver).click_and_hold(handle).move_by_offset(px, 0).release().perform()
            except Exception:
                pass
            return


def _close_assistant(driver) -> None:
    """Close the side panel (MLflow's assistant) so the table gets the whole width."""
    for b in driver.find_elements("css selector", "button[aria-label='Close']"):
        try:
            b.click()
        except Exception:
            pass
    time.sleep(0.3)


def screenshot(url: str, experiment: str, sweep: str | None, out: Path, timeout: float = 60,
               output_root: str = "outputs", run_page: Path | None = None) -> dict:
    """Open the sweep's runs table, wait for every run name, save ``out``. Returns what it saw."""
    exp_id, flt, names, run_id = find_runs(url, experiment, sweep, output_root)
    page = ui_url(url, exp_id, flt)
    profile = tempfile.mkdtemp(prefix="blockprof-chromium-")
    driver = None
    try:
        driver = _driver(profile)
        driver.set_page_load_timeout(timeout)
        driver.get(page)
        deadline = time.monotonic() + timeout
        found: set[str] = set()
        opened: set[str] = set()
        while time.monotonic() < deadline:
            body = driver.find_element("tag name", "body").text
            found = {n for n in names if n in body}
            if len(found) == len(names):
                break
            _expand_parents(driver, opened)  # a sweep's jobs are nested under its parent run
            time.sleep(0.5)
        _close_assistant(driver)
        _widen_names(driver)
        time.sleep(0.5)  # let the table finish painting
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        if run_page is not None:  # one run's page: params, tags, description
            driver.get(f"{url.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}")
            end = time.monotonic() + timeout
            while time.monotonic() < end and "Parameters" not in driver.find_element("tag name", "body").text:
                time.sleep(0.5)
            time.sleep(1.0)
            run_page.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(run_page))
        return {"url": page, "experiment_id": exp_id, "filter": flt, "runs": names,
                "found": sorted(found), "missing": sorted(set(names) - found), "title": driver.title,
                "screenshot": str(out)}
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:5000", help="the MLflow server / UI")
    ap.add_argument("--experiment", default="blockprof", help="blockprof's experiments: <this>/<task>")
    ap.add_argument("--output-root", default="outputs", help="the runs' paths.output_root (sweep tags are relative to it)")
    ap.add_argument("--sweep", default="latest", help="a sweep folder, its tag value, 'latest', or '' for all runs")
    ap.add_argument("--out", default="mlflow_ui.png", help="screenshot file (PNG)")
    ap.add_argument("--run-page", default=None, help="also a screenshot of one of the runs' pages (PNG)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for the runs to show")
    args = ap.parse_args(argv)
    try:
        res = screenshot(args.url, args.experiment, args.sweep or None, Path(args.out), args.timeout,
                         args.output_root, Path(args.run_page) if args.run_page else None)
    except Problem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"opened {res['url']}")
    print(f"found {len(res['found'])} of {len(res['runs'])} runs in the UI"
          + (f"; missing: {', '.join(res['missing'])}" if res["missing"] else ""))
    print(f"screenshot: {Path(res['screenshot']).resolve()}")
    return 0 if not res["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
