"""Drives a real headless Chromium through the web pages (issue 14, point 1).

Starts the all-in-one binary (SERVER_BIN) on 127.0.0.1:0 with SQLite in a temporary directory,
sets up a department and some values through the gRPC API on the same port, then with Selenium
and Debian's chromium-driver: signs in with an API key, reads the scorecard (ten basic
indicators as traffic lights, "no data" distinct from "fail", the guiding bars, the item
checklists), watches it update live when a value changes, opens an indicator's explanation
(with a hostile note shown as text), sorts the county league table, reads a worklist and the
completeness grid, signs out, and signs in as the department, which sees its own worklist and
not another's. Every step keeps a screenshot in target/browser-artifacts/; any missing element
fails the run (exit status 1).
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import grpc
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python" / "gen"))

from citycredit.v1 import (  # noqa: E402
    common_pb2,
    department_registry_service_pb2 as reg_pb,
    department_registry_service_pb2_grpc as reg_grpc,
    metric_submission_service_pb2 as sub_pb,
    metric_submission_service_pb2_grpc as sub_grpc,
)

ARTIFACTS = ROOT / "target" / "browser-artifacts"
SERVING = re.compile(r"serving gRPC.*addr=([0-9.]+:[0-9]+)")
PERIOD = "2026"
CITY = "330800"
HOSTILE = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>"
WAIT_S = 20


def start_server(tmp: Path):
    binary = Path(os.environ.get("SERVER_BIN", ROOT / "target" / "debug" / "citycredit"))
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is missing: cargo build -p citycredit-app --bin citycredit")
    admin_key = "cc_browser_" + secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(CITYCREDIT_BOOTSTRAP_ADMIN_KEY=admin_key, RUST_LOG="info", NO_COLOR="1")
    log_path = tmp / "server.log"
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp / "data")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, errors="replace")
    found = {}
    ready = threading.Event()

    def pump():
        with open(log_path, "w", encoding="utf-8") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                m = SERVING.search(line)
                if m and not ready.is_set():
                    found["addr"] = m.group(1)
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(60) or "addr" not in found:
        proc.kill()
        raise RuntimeError("server did not start:\n" + log_path.read_text(errors="replace"))
    return proc, found["addr"], admin_key, log_path


class Api:
    def __init__(self, channel, key):
        self.md = (("authorization", f"Bearer {key}"),)
        self.registry = reg_grpc.DepartmentRegistryServiceStub(channel)
        self.submissions = sub_grpc.MetricSubmissionServiceStub(channel)

    def submit(self, metric, region, value, note="", evidence=""):
        self.submissions.SubmitValue(sub_pb.SubmitValueRequest(value=sub_pb.SubmissionInput(
            metric_key=metric, region_code=region, period=PERIOD, department_code="samr",
            value=common_pb2.MetricValue(number=value), note=note, evidence_uri=evidence)),
            metadata=self.md, timeout=30)


def make_key(admin: Api, pid: str, role: int, department: str = "") -> str:
    admin.registry.CreatePrincipal(reg_pb.CreatePrincipalRequest(principal=reg_pb.Principal(
        id=pid, role=role, department_code=department)), metadata=admin.md, timeout=30)
    return admin.registry.CreateApiKey(reg_pb.CreateApiKeyRequest(
        principal=f"principals/{pid}"), metadata=admin.md, timeout=30).secret


def browser(profile: Path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,2000",
                "--lang=zh-CN", "--force-device-scale-factor=1"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


class Run:
    def __init__(self, driver, base):
        self.d = driver
        self.base = base
        self.shots = []

    def wait(self, css, n=1):
        """Waits for at least n elements matching css; fails loudly naming what is missing."""
        try:
            WebDriverWait(self.d, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= n)
        except TimeoutException:
            self.shot("missing-" + re.sub(r"[^a-z0-9]+", "-", css.lower())[:40])
            raise AssertionError(f"{self.d.current_url}: no {n} x {css!r} within {WAIT_S}s") from None
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def one(self, css):
        return self.wait(css)[0]

    def go(self, path):
        self.d.get(self.base + path)

    def shot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # The whole page: the window fits the document's height for the screenshot.
        self.d.set_window_size(1280, 800)
        height = self.d.execute_script("return document.documentElement.scrollHeight") or 2000
        self.d.set_window_size(1280, min(max(int(height), 800), 8000))
        path = ARTIFACTS / f"{len(self.shots) + 1:02d}-{name}.png"
        self.d.save_screenshot(str(path))
        self.shots.append(path)

    def no_script_ran(self):
        try:
            alert = self.d.switch_to.alert
            text = alert.text
            alert.dismiss()
            raise AssertionError(f"a script from a value ran: alert {text!r}")
        except NoAlertPresentException:
            pass

    def sign_in(self, key):
        self.go("/signin")
        self.one("#key").send_keys(key)
        self.one("#signin-button").click()
        self.one("#outcome")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="citycredit-browser-"))
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    proc, addr, admin_key, log_path = start_server(tmp)
    driver = None
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=10)
        admin = Api(channel, admin_key)
        samr_key = make_key(admin, "browser-samr", reg_pb.ROLE_DEPARTMENT, "samr")
        samr = Api(channel, samr_key)
        samr.submit("uscc.stock_codes_total", CITY, "120", note=HOSTILE,
                    evidence="https://evidence.example/quzhou/uscc-2026.pdf")
        samr.submit("uscc.stock_codes_total", "330802", "40")
        samr.submit("uscc.stock_codes_converted", "330802", "40")

        driver = browser(tmp / "profile")
        run = Run(driver, f"http://{addr}")

        # Sign in.
        run.go("/")
        run.one("form#signin")
        run.shot("sign-in")
        run.sign_in(admin_key)
        assert "/scorecard" in driver.current_url, driver.current_url

        # The city scorecard.
        run.go(f"/scorecard?region={CITY}&period={PERIOD}")
        lights = run.wait("#basic li.light", 10)
        assert len(lights) == 10, f"{len(lights)} basic indicators"
        # B01 fails (the city converted 40 of 160 codes); the others have no data: two
        # different lights.
        assert run.d.find_elements(By.CSS_SELECTOR, '#basic li.light.fail[data-code="B01"]'), "B01 is not failing"
        nodata = run.d.find_elements(By.CSS_SELECTOR, "#basic li.light.nodata")
        assert len(nodata) == 9, f"{len(nodata)} 'no data' lights"
        assert "无数据" in nodata[0].text and "不通过" not in nodata[0].text
        assert "一票否决" in run.one("#outcome").text
        assert len(run.wait("#guiding tbody tr svg.bar", 10)) == 10
        assert "/ 54.00" in run.one("#guiding-total").text
        assert len(run.wait("#items article.item", 12)) == 12
        run.wait("#live-state.on")
        run.shot("scorecard")

        # Live: a value changes, the page follows without a reload.
        marker = run.d.execute_script("window.__stay = 1; return window.__stay;")
        samr.submit("uscc.stock_codes_converted", CITY, "120")
        run.wait('#basic li.light.ok[data-code="B01"]')
        assert run.d.execute_script("return window.__stay;") == marker, "the page reloaded"
        run.shot("scorecard-live-update")
        # The top of the page as a reader first sees it (the README's picture).
        run.d.set_window_size(1280, 900)
        run.d.execute_script("window.scrollTo(0, 0)")
        run.d.save_screenshot(str(ARTIFACTS / "readme-scorecard.png"))

        # One indicator explained.
        run.one('#basic li.light[data-code="B01"] a').click()
        run.one("#rule")
        run.wait("#terms tbody tr")
        run.wait("#inputs li.source", 2)
        notes = [e.text for e in run.d.find_elements(By.CSS_SELECTOR, "#inputs q.note")]
        assert HOSTILE in notes, f"the hostile note is not shown as text: {notes}"
        assert not run.d.find_elements(By.CSS_SELECTOR, "main img, main script"), "markup injected"
        run.no_script_ran()
        evidence = run.one("#inputs a.evidence")
        assert evidence.get_attribute("href") == "https://evidence.example/quzhou/uscc-2026.pdf"
        assert run.wait("#responsible li"), "nobody must act"
        run.shot("explain-B01")

        # The counties: league table, sortable, and a chart per indicator.
        run.go(f"/counties?period={PERIOD}")
        rows = run.wait("#league tbody tr", 2)
        header = run.d.find_elements(By.CSS_SELECTOR, "#league thead th")[3]
        header.click()
        first = [float(r.find_elements(By.TAG_NAME, "td")[3].text or 0)
                 for r in run.d.find_elements(By.CSS_SELECTOR, "#league tbody tr")]
        assert first == sorted(first), f"not sorted ascending: {first}"
        header.click()
        second = [float(r.find_elements(By.TAG_NAME, "td")[3].text or 0)
                  for r in run.d.find_elements(By.CSS_SELECTOR, "#league tbody tr")]
        assert second == sorted(second, reverse=True), f"not sorted descending: {second}"
        assert len(rows) >= 2
        run.wait("#charts figure.chart", 20)
        run.shot("counties")

        # A worklist and the completeness grid.
        run.go(f"/worklist?department=samr&period={PERIOD}")
        run.wait("#worklist tbody tr")
        assert "samr" in run.one("h1").text
        run.shot("worklist-samr")
        run.go(f"/completeness?period={PERIOD}")
        run.wait("#completeness tbody tr", 2)
        run.shot("completeness")

        # Sign out; sign in as the department: its own worklist, not another's.
        run.one("#signout").click()
        run.one("form#signin")
        run.go("/scorecard")
        run.one("form#signin")
        run.sign_in(samr_key)
        run.go(f"/worklist?period={PERIOD}")
        run.wait("#worklist tbody tr")
        assert not run.d.find_elements(By.CSS_SELECTOR, "select#department")
        run.shot("worklist-as-department")
        run.go(f"/worklist?department=cpc-staffing&period={PERIOD}")
        assert "本部门" in run.one("#error").text
        assert not run.d.find_elements(By.CSS_SELECTOR, "#worklist")
        run.shot("other-worklist-refused")

        # The Content-Security-Policy held everything: no violations or script errors.
        problems = [e for e in driver.get_log("browser")
                    if e.get("level") == "SEVERE" and "403" not in e.get("message", "")]
        assert not problems, f"browser console errors: {problems}"

        print(f"browser test: passed; {len(run.shots)} screenshots in {ARTIFACTS}")
        for s in run.shots:
            print(f"  {s.relative_to(ROOT)}")
        return 0
    except Exception:
        traceback.print_exc()
        print("server log tail:\n" + "".join(log_path.read_text(errors="replace").splitlines(True)[-30:]))
        return 1
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
