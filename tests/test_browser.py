"""The report in a real browser: headless Chromium driven over the DevTools protocol on a pipe.

No Python package beyond the standard library: Chromium's ``--remote-debugging-pipe`` reads
NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4. The page is loaded from
file://, every <img> must have decoded (naturalWidth > 0), the console and the browser log must hold
no error (a blocked network request or a CSP violation would be one), and a full-page screenshot is
saved next to the report (and copied to $ICPCV_SCREENSHOTS when that is set).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_report_support import shared_analysis, shared_compare, shared_run

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def chromium_binary() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_binary() is None,
                                 reason="no Chromium binary (apt-get install chromium, or set $CHROMIUM)")]


class Browser:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, width: int = 1200, height: int = 900):
        self.profile = tempfile.mkdtemp(prefix="icpcv-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser must see the pipes as fds 3 and 4; the shell places them, from fds above 9 so that
        # placing one cannot close the other
        to_browser_r, from_browser_w = (self._high(to_browser_r), self._high(from_browser_w))
        self.log = open(Path(self.profile) / "chromium.log", "w+b")
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.width, self.height = width, height

    @staticmethod
    def _high(fd: int) -> int:
        import fcntl

        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe; its log ends: {self.log_tail()}")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read_message(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=s)
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=s)
        self.events.clear()
        nav = self.call("Page.navigate", {"url": url}, session=s)
        if nav.get("errorText"):
            raise RuntimeError(f"Chromium could not open {url}: {nav['errorText']}")
        self.wait_for("Page.loadEventFired")
        return s

    def evaluate(self, session: str, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                      session=session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return out

    def screenshot(self, session: str, path: Path) -> Path:
        size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(int(size["height"]) + 1, 60000), "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                         session=session, timeout=120)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
  alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
  shown: i.getBoundingClientRect().width})))"""
SECTIONS_JS = "JSON.stringify(Array.from(document.querySelectorAll('section[id]')).map(s => s.id))"
RESOURCES_JS = "JSON.stringify(performance.getEntriesByType('resource').map(r => r.name))"
#: every in-page link (the contents and the "details" links): its target, and whether that target is shown as
#: the page opens (present, with a box, not inside a folded <details>); every section and whether it has a
#: link in the contents; the folded parts; the page's height
REACH_JS = """JSON.stringify({
  links: Array.from(document.querySelectorAll('a[href^="#"]')).map(a => {
    const t = document.getElementById(a.getAttribute('href').slice(1));
    return {href: a.getAttribute('href'), nav: !!a.closest('nav'), found: !!t,
            shown: !!t && t.getBoundingClientRect().height > 0 && !t.closest('details:not([open])')}; }),
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => ({id: s.id,
    listed: !!document.querySelector('nav a[href="#' + s.id + '"]'),
    heading: !!s.querySelector('h2') && s.querySelector('h2').getBoundingClientRect().height > 0})),
  folded: Array.from(document.querySelectorAll('details:not([open]) > summary')).map(x => x.textContent.trim()),
  height: document.documentElement.scrollHeight})"""
#: open every folded part, so that the figures inside are laid out and can be checked
UNFOLD_JS = "document.querySelectorAll('details').forEach(d => d.open = true); true"
#: the leakage audit's table (header + one row per model) under #scan-split, and its rendered height
SCAN_SPLIT_JS = """(() => { const h = document.getElementById('scan-split');
  if (!h) return 'null';
  let t = h.nextElementSibling; while (t && !t.querySelector('table')) t = t.nextElementSibling;
  const table = t && t.querySelector('table');
  return JSON.stringify({rows: table ? table.rows.length : 0,
                         height: table ? table.getBoundingClientRect().height : 0}); })()"""


@pytest.fixture(scope="module")
def browser():
    b = Browser(chromium_binary())
    yield b
    b.close()


def check_in_browser(browser: Browser, html: Path, shot_name: str) -> dict:
    browser.events.clear()
    session = browser.open(html.resolve().as_uri())
    reach = json.loads(browser.evaluate(session, REACH_JS))
    sections = json.loads(browser.evaluate(session, SECTIONS_JS))
    resources = json.loads(browser.evaluate(session, RESOURCES_JS))
    shot = browser.screenshot(session, html.parent / shot_name)  # as the page opens, folded parts folded
    browser.evaluate(session, UNFOLD_JS)
    images = json.loads(browser.evaluate(session, IMAGES_JS))
    scan_split = json.loads(browser.evaluate(session, SCAN_SPLIT_JS))
    errors = browser.errors()
    if os.environ.get("ICPCV_SCREENSHOTS"):
        dest = Path(os.environ["ICPCV_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot_name)
    browser.call("Target.closeTarget", {"targetId": browser.call("Target.getTargetInfo", session=session)
                                        ["targetInfo"]["targetId"]})
    return dict(images=images, sections=sections, resources=resources, errors=errors, screenshot=shot,
                scan_split=scan_split, reach=reach)


def assert_renders(result: dict, min_images: int):
    images = result["images"]
    assert len(images) >= min_images, images
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert all(i["shown"] > 100 for i in images), images
    assert not result["errors"], result["errors"]
    assert not [r for r in result["resources"] if not r.startswith("data:")], result["resources"]
    shot = result["screenshot"].read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000
    assert_reachable(result)


def assert_reachable(result: dict):
    """Issue 22: folding parts of the report leaves every section reachable from the contents, and every
    in-page link (contents or "details") lands on something shown as the page opens."""
    reach = result["reach"]
    assert all(s["listed"] and s["heading"] for s in reach["sections"]), reach["sections"]
    assert {link["href"][1:] for link in reach["links"] if link["nav"]} == {s["id"] for s in reach["sections"]}
    hidden = [link["href"] for link in reach["links"] if not (link["found"] and link["shown"])]
    assert not hidden, f"in-page links to nothing or to a folded part: {hidden}"


#: the sections of a synthetic run's report, in order (a run trained once says there that training
#: randomness was not measured, so "repeats" is there with and without --repeats)
SYNTHETIC_RUN_SECTIONS = ["verdict", "cohort", "data-quality", "folds", "models", "agreement", "trending", "repeats",
                          "training", "provenance", "warnings"]


def test_synthetic_run_report_renders(browser, tmp_path_factory):
    run = shared_run("tiny", tmp_path_factory.getbasetemp() / "report_runs")
    res = check_in_browser(browser, run / "index.html", "screenshot_synthetic.png")
    assert_renders(res, min_images=7)
    assert res["sections"] == SYNTHETIC_RUN_SECTIONS
    # issue 22: one figure of small multiples per kind of per-model plot, not one figure per model, and
    # what a reader needs less often starts folded (the page was over 9,000 px tall at 1,300 wide)
    alts = [i["alt"] for i in res["images"]]
    assert "Bland-Altman, one panel per model" in alts and not [a for a in alts if a.startswith("Bland-Altman: ")]
    assert "Four-quadrant plots, one panel per model" in alts and "Polar plots, one panel per model" in alts
    folded = res["reach"]["folded"]
    assert {"Learning curves", "Polar plots, one panel per model",
            "Predicted versus measured ICP, one panel per monkey"} <= set(folded), folded
    assert any(f.startswith("Configuration, software and hardware") for f in folded), folded


def test_report_of_a_run_with_repeats_renders_its_training_randomness_section(browser, tmp_path_factory):
    run = shared_run("tiny_repeats", tmp_path_factory.getbasetemp() / "report_runs")
    res = check_in_browser(browser, run / "index.html", "screenshot_repeats.png")
    assert_renders(res, min_images=10)
    assert res["sections"] == SYNTHETIC_RUN_SECTIONS
    alts = [i["alt"] for i in res["images"]]
    assert any("Per-repeat differences beside the seed ensemble" in a for a in alts), alts
    assert any("MAE of each repeat per fold: cnn" in a for a in alts), alts


def test_saliency_run_report_renders(browser, tmp_path_factory):
    """Issue 14: `run --saliency 2` adds "Where the CNN looks" (tables and map figures) after trending."""
    run = shared_run("tiny_saliency", tmp_path_factory.getbasetemp() / "report_runs")
    res = check_in_browser(browser, run / "index.html", "screenshot_saliency.png")
    assert_renders(res, min_images=12)
    assert res["sections"] == ["verdict", "cohort", "data-quality", "folds", "models", "agreement", "trending",
                               "repeats", "attribution", "training", "provenance", "warnings"]
    alts = [i["alt"] for i in res["images"]]
    assert "Mean absolute attribution: cnn, occlusion" in alts and "Individual scans: cnn, integrated gradients" in alts


def test_labels_only_real_table_report_renders(browser, tmp_path_factory):
    from test_report_support import MONKEY_TABLE

    if not MONKEY_TABLE.exists():
        pytest.skip(f"real label table not found at {MONKEY_TABLE}")
    run = shared_run("labels", tmp_path_factory.getbasetemp() / "report_runs")
    res = check_in_browser(browser, run / "index.html", "screenshot_labels_only.png")
    assert_renders(res, min_images=5)
    assert res["sections"] == ["verdict", "cohort", "data-quality", "folds", "models", "agreement", "trending",
                               "provenance", "warnings"]
    # the leakage audit (`--leakage-audit`) sits in the fold-plan section, and the twin's own report renders
    assert res["scan_split"]["rows"] == 3 and res["scan_split"]["height"] > 0
    twin = check_in_browser(browser, run / "scan_split" / "index.html", "screenshot_labels_scan_split.png")
    assert_renders(twin, min_images=5)


def test_comparison_report_renders(browser, tmp_path_factory):
    out = shared_compare(tmp_path_factory.getbasetemp() / "report_runs")
    res = check_in_browser(browser, out / "index.html", "screenshot_compare.png")
    assert_renders(res, min_images=3)
    assert res["sections"] == ["verdict", "runs", "models", "agreement", "provenance", "warnings"]


def test_predictions_only_report_renders(browser, tmp_path_factory):
    """`icpcv analyze TABLE --out DIR` outside any run (one monkey label holds markup)."""
    out = shared_analysis(tmp_path_factory.getbasetemp() / "report_runs")["out"]
    res = check_in_browser(browser, out / "index.html", "screenshot_predictions.png")
    assert_renders(res, min_images=4)  # forest, error per monkey, Bland-Altman (a panel per model), per monkey
    assert res["sections"] == ["verdict", "input", "models", "agreement", "provenance", "warnings"]


def test_hostile_labels_stay_text_in_the_browser(browser, tmp_path_factory):
    """A report whose labels hold markup: nothing runs, nothing is fetched, every image still loads."""
    from test_report_support import hostile_run

    run = hostile_run(tmp_path_factory.getbasetemp() / "report_runs")
    res = check_in_browser(browser, run / "index.html", "screenshot_hostile.png")
    assert_renders(res, min_images=4)
