"""What an auditor feels opening a long session in the console (for `make bench`).

Serves DATA (written by `console_bench` with CONSOLE_BENCH_KEEP=1: one
session of 1,000 exchanges and its seal key) with the real collector
(`tracegate serve --approvals --console`, plain http on loopback), signs in
at the real OpenID provider of the console's e2e test (tests/oidc, npm
`oidc-provider`, installed by `make oidc-provider`) in headless Chromium
driven by Selenium through the system chromedriver (nothing downloaded),
then opens the session page several times and reads the browser's
Navigation Timing: navigation start to DOMContentLoaded and to load, first
contentful paint, and the page's bytes; the same for the whole session on
one page and for one record's JSON. A measurement, not an assertion.

Usage: console_open.py TRACEGATE_BIN DATA [RUNS]
"""

import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parent.parent
SESSION = "bench-session"
CLIENT_ID = "tracegate-console"
CLIENT_SECRET = "console-bench-secret-0123456789"
START_TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(proc, prefix, log):
    """The first line of proc's output holding prefix (read by its thread)."""
    deadline = time.monotonic() + START_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        try:
            line = proc.lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if prefix in line:
            return line.strip()
    raise RuntimeError(f"{log}: no {prefix!r} line; output:\n{''.join(seen)}")


def start(cmd, cwd=None):
    """A child whose output a thread keeps reading (so its pipe never fills)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    proc.lines = queue.Queue()
    threading.Thread(target=lambda: [proc.lines.put(l) for l in proc.stdout], daemon=True).start()
    return proc


def measure(driver, url, runs, exchanges=True):
    """Median Navigation Timing of opening url (ms from navigation start)."""
    timings = []
    # The first open warms the store's page cache and the stylesheet.
    for n in range(runs + 1):
        driver.get(url)
        t = driver.execute_script("""
            const n = performance.getEntriesByType('navigation')[0];
            const p = performance.getEntriesByName('first-contentful-paint')[0];
            return {response_start: n.responseStart, response_end: n.responseEnd,
                    dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,
                    fcp: p ? p.startTime : null, bytes: n.decodedBodySize,
                    exchanges: document.querySelectorAll('article.exchange').length};
        """)
        if exchanges and not t["exchanges"]:
            raise RuntimeError(f"{url}: no exchange shown (at {driver.current_url})")
        if n > 0:
            timings.append(t)
    row = {}
    for key in ("response_start", "response_end", "fcp", "dcl", "load"):
        vals = [t[key] for t in timings if t[key] is not None]
        row[key] = f"{statistics.median(vals):.0f}" if vals else "-"
    row["bytes"] = timings[-1]["bytes"]
    row["exchanges"] = timings[-1]["exchanges"] if exchanges else "-"
    return row


def main():
    tracegate, data = sys.argv[1], Path(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    chromedriver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    node = os.environ.get("NODE", "node")
    procs = []
    driver = None
    with tempfile.TemporaryDirectory(prefix="tracegate-console-bench-") as tmp:
        tmp = Path(tmp)
        try:
            console = f"http://127.0.0.1:{free_port()}"
            oidc_port = free_port()
            (tmp / "oidc.json").write_text(json.dumps({
                "port": oidc_port,
                "client": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                           "redirect_uris": [f"{console}/auth/callback"]},
                "users": {"alice": {"password": "correct horse", "email": "alice@example.com",
                                    "groups": ["llm-approvers"]}},
            }))
            oidc = start([node, str(ROOT / "tests/oidc/provider.mjs"), str(tmp / "oidc.json")],
                         cwd=ROOT / "tests/oidc")
            procs.append(oidc)
            issuer = wait_for_line(oidc, "issuer ", "oidc-provider").split(" ", 1)[1]
            (tmp / "serve.json").write_text(json.dumps({
                "approvers": {
                    "providers": [{"name": "idp", "issuer": issuer, "audiences": [CLIENT_ID],
                                   "remote_jwks": {"uri": f"{issuer}/jwks", "timeout_ms": 2000,
                                                   "retry_interval_ms": 200}}],
                    "display_claim": "email",
                    "allow": [{"claim": "groups", "equals": "llm-approvers"}],
                },
                "console": {"issuer": issuer, "client_id": CLIENT_ID,
                            "client_secret": CLIENT_SECRET, "public_url": console,
                            "scopes": ["openid", "email", "profile", "groups"]},
            }))
            serve = start([tracegate, "serve", "--data", str(data), "--grpc", "127.0.0.1:0",
                           "--config", str(tmp / "serve.json"), "--approvals", "127.0.0.1:0",
                           "--console", console.removeprefix("http://")])
            procs.append(serve)
            wait_for_line(serve, "listening grpc=", "tracegate serve")

            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,900", "--no-first-run",
                        "--disable-extensions", "--disable-background-networking",
                        "--disable-sync", "--disable-component-update", "--disable-default-apps",
                        "--lang=en-US"):
                options.add_argument(arg)
            driver = webdriver.Chrome(service=Service(executable_path=chromedriver,
                                                      log_output=str(tmp / "chromedriver.log")),
                                      options=options)
            driver.set_page_load_timeout(120)
            page = f"{console}/sessions/{SESSION}"
            driver.get(page)
            driver.find_element(By.CSS_SELECTOR, "#login").send_keys("alice")
            driver.find_element(By.CSS_SELECTOR, "#password").send_keys("correct horse")
            driver.find_element(By.CSS_SELECTOR, "#sign-in").click()
            if not driver.current_url.startswith(page):
                raise RuntimeError(f"not signed in: at {driver.current_url}")

            version = driver.capabilities.get("browserVersion")
            print()
            print(f"# Console in the browser: the session above opened signed in, headless "
                  f"Chromium {version}, median of {runs} runs after one warm-up")
            print()
            print("| page | HTML MB | exchanges | first byte ms | last byte ms "
                  "| first paint ms | DOMContentLoaded ms | load ms |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for label, query in (("`/sessions/{id}` (first page)", ""),
                                 ("`/sessions/{id}?limit=1000` (all on one page)",
                                  "?limit=1000"),
                                 ("`/sessions/{id}/records/{record}.json` (one record, "
                                  "the link under \"Record as JSON\")",
                                  "/records/rec-00500.json")):
                row = measure(driver, page + query, runs, exchanges=not query.endswith(".json"))
                print(f"| {label} | {row['bytes'] / 1e6:.2f} | {row['exchanges']} "
                      f"| {row['response_start']} | {row['response_end']} | {row['fcp']} "
                      f"| {row['dcl']} | {row['load']} |", flush=True)
        finally:
            if driver is not None:
                driver.quit()
            for p in procs:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


if __name__ == "__main__":
    main()
