"""Headless Chromium for the console's end-to-end test, driven by Selenium
through the system chromedriver (its path is given, so Selenium Manager never
downloads a driver or a browser).

Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"cmd": "get", "url": U}                    -> {"url", "title", "source"}
  {"cmd": "page"}                             -> {"url", "title", "source"}
  {"cmd": "fill", "css": S, "text": T}        clears the field, types T
  {"cmd": "click", "css": S}                  -> the page the click navigates to, loaded
  {"cmd": "texts", "css": S}                  -> {"texts": [...]}, each match's text
  {"cmd": "attrs", "css": S, "name": A}       -> {"values": [...]}
  {"cmd": "screenshot", "path": P}            full-page PNG
  {"cmd": "cookies"}                          -> {"cookies": [...]} of the current site
  {"cmd": "clear_cookies"}                    of the current site
  {"cmd": "tab_focus", "css": S}              -> {"presses": N}: Tab presses until S has the focus
Errors answer {"error": "..."}. EOF or SIGTERM quits the browser.
"""

import json
import signal
import sys

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/chromium"
CHROMEDRIVER = sys.argv[2] if len(sys.argv) > 2 else "/usr/bin/chromedriver"
LOG = sys.argv[3] if len(sys.argv) > 3 else None
# A server certificate (PEM) to accept although no system root signs it (the
# collector's private CA): pinned by its public key, not "any certificate".
TRUST = sys.argv[4] if len(sys.argv) > 4 else None


def spki_sha256(pem_path):
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(open(pem_path, "rb").read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


options = webdriver.ChromeOptions()
options.binary_location = CHROMIUM
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-sync", "--disable-component-update",
            "--disable-default-apps", "--lang=en-US"):
    options.add_argument(arg)
if TRUST:
    # Takes effect with a --user-data-dir, which chromedriver always gives.
    options.add_argument(f"--ignore-certificate-errors-spki-list={spki_sha256(TRUST)}")
service = Service(executable_path=CHROMEDRIVER, log_output=LOG)
driver = webdriver.Chrome(service=service, options=options)
driver.set_page_load_timeout(30)


def quit_and_exit(*_):
    try:
        driver.quit()
    finally:
        sys.exit(0)


signal.signal(signal.SIGTERM, quit_and_exit)


def page():
    # The URL and the source are read by separate calls: read until the URL
    # is the same on both sides of the source, so the two are of one document.
    for _ in range(50):
        url = driver.current_url
        source = driver.page_source
        if driver.current_url == url:
            break
    return {"url": url, "title": driver.title, "source": source}


def loaded():
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def one(css):
    return driver.find_element(By.CSS_SELECTOR, css)


def run(c):
    cmd = c["cmd"]
    if cmd == "get":
        driver.get(c["url"])
        return page()
    if cmd == "page":
        return page()
    if cmd == "fill":
        e = one(c["css"])
        e.clear()
        e.send_keys(c["text"])
        return {}
    if cmd == "click":
        # Every click in the test submits a form or follows a link: wait for
        # the old document to go and the new one to load (chromedriver's own
        # wait after a click can return while a redirect chain still runs).
        old = driver.find_element(By.TAG_NAME, "html")
        one(c["css"]).click()

        def gone(_):
            # Chromedriver reports an element of a replaced document as
            # stale or, sometimes, as "does not belong to the document":
            # both mean the old page is gone.
            try:
                old.is_enabled()
                return False
            except WebDriverException:
                return True

        WebDriverWait(driver, 30).until(gone)
        loaded()
        return page()
    if cmd == "texts":
        return {"texts": [e.text for e in driver.find_elements(By.CSS_SELECTOR, c["css"])]}
    if cmd == "attrs":
        return {"values": [e.get_attribute(c["name"])
                           for e in driver.find_elements(By.CSS_SELECTOR, c["css"])]}
    if cmd == "screenshot":
        # The whole page, not just the window.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(900, min(int(height) + 100, 8000)))
        ok = driver.save_screenshot(c["path"])
        driver.set_window_size(1280, 900)
        return {"saved": ok}
    if cmd == "cookies":
        return {"cookies": driver.get_cookies()}
    if cmd == "clear_cookies":
        driver.delete_all_cookies()
        return {}
    if cmd == "tab_focus":
        # Keyboard reachability: Tab from the top of the page until the
        # element is focused (at most 100 presses).
        target = one(c["css"])
        driver.execute_script("document.activeElement && document.activeElement.blur()")
        for n in range(1, 101):
            webdriver.ActionChains(driver).send_keys(Keys.TAB).perform()
            if driver.switch_to.active_element == target:
                return {"presses": n}
        return {"presses": None}
    raise ValueError(f"unknown command {cmd!r}")


print(json.dumps({"ready": True, "browser": driver.capabilities.get("browserVersion")}), flush=True)
for line in sys.stdin:
    if not line.strip():
        continue
    try:
        answer = run(json.loads(line))
    except (WebDriverException, ValueError, KeyError) as e:
        answer = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(answer), flush=True)
quit_and_exit()
