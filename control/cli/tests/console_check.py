"""Drives the web console in headless Chromium (selenium + Debian's chromium-driver) for
console.rs, which runs it against an in-process control server and checks what it reports
against the server's API.

Protocol on stdout, one line each: `STOP` (the test stops the server, answers `stopped` on
stdin), `START` (the test starts it again on the same ports, answers `started`), and at the
end `REPORT <json>`. Screenshots go to --shots. Every wait is bounded; any failure exits 1
with a screenshot of the page as it was.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def say(line):
    print(line, flush=True)


def expect(line):
    got = sys.stdin.readline().strip()
    if got != line:
        raise RuntimeError(f"the test answered {got!r}, expected {line!r}")


def server_key_pin(url):
    """The SHA-256 of the server's public key (what Chromium pins a certificate by): the
    browser then takes the control server's certificate, from a CA it does not know, and no
    other."""
    import base64, hashlib, ssl, urllib.parse
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    u = urllib.parse.urlsplit(url)
    pem = ssl.get_server_certificate((u.hostname, u.port))
    spki = x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def start_browser(profile, url):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,2400",
        "--force-prefers-reduced-motion",
        f"--ignore-certificate-errors-spki-list={server_key_pin(url)}",
    ]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is given: selenium's own manager would try to download one.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def wait(driver, what, cond, timeout=20):
    # The page re-renders as the status changes: an element found a moment ago may be gone.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: cond(d), message=f"waiting for {what}"
    )


def fresh(read, tries=20):
    """`read()`, again while the page re-renders under it (a stale element)."""
    for i in range(tries):
        try:
            return read()
        except StaleElementReferenceException:
            if i == tries - 1:
                raise
            time.sleep(0.05)


def card(driver, key):
    return driver.find_element(By.CSS_SELECTOR, f'article[data-rollout="{key}"]')


def routes(driver):
    out = {}
    for r in driver.find_elements(By.CSS_SELECTOR, ".route[data-route]"):
        out[r.get_attribute("data-route")] = [
            [t.find_element(By.CLASS_NAME, "target-name").text,
             t.find_element(By.CLASS_NAME, "target-weight").text]
            for t in r.find_elements(By.CLASS_NAME, "target")
        ]
    return out


def severe(driver):
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--shots", required=True)
    ap.add_argument("--abort", required=True, help="MESH/NAME of the rollout to abort")
    ap.add_argument("--analysed", required=True, help="MESH/NAME of a rollout with checks")
    ap.add_argument("--gated", required=True, help="MESH/NAME of a rollout at a pause step")
    args = ap.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    report = {}
    profile = tempfile.mkdtemp(prefix="maille-chromium-")
    driver = start_browser(profile, args.url)
    try:
        driver.set_page_load_timeout(20)
        driver.get(args.url)
        report["title"] = driver.title
        wait(driver, "the routes", lambda d: d.find_elements(By.CSS_SELECTOR, ".route .target"))
        wait(driver, "the rollouts", lambda d: d.find_elements(By.CSS_SELECTOR, f'article[data-rollout="{args.abort}"]'))
        report["connection"] = driver.find_element(By.ID, "conn").text

        # The running rollout advances on the page.
        first = fresh(lambda: int(card(driver, args.abort).find_element(By.CLASS_NAME, "canary-weight").get_attribute("data-weight")))
        wait(driver, "the canary's weight to grow on the page",
             lambda d: int(card(d, args.abort).find_element(By.CLASS_NAME, "canary-weight").get_attribute("data-weight")) > first,
             timeout=30)
        def card_facts():
            c = card(driver, args.abort)
            return {
                "second": int(c.find_element(By.CLASS_NAME, "canary-weight").get_attribute("data-weight")),
                "weightText": c.find_element(By.CLASS_NAME, "canary-weight").text,
                "phaseBefore": c.find_element(By.CLASS_NAME, "phase").text,
                "stepText": c.find_element(By.CLASS_NAME, "step").text,
                "facts": c.find_element(By.CLASS_NAME, "facts").text,
            }
        f = fresh(card_facts)
        second = f.pop("second")
        report["weights"] = [first, second]
        report.update(f)

        # The analysed rollout's checks, drawn.
        def checks_drawn(d):
            a = card(d, args.analysed)
            return (len(a.find_elements(By.CSS_SELECTOR, "svg.chart .verdict")) >= 3
                    and a.find_elements(By.CSS_SELECTOR, "svg.chart .verdict.pass")
                    and a.find_elements(By.CSS_SELECTOR, "svg.chart .verdict.fail"))
        wait(driver, "passed and failed checks on the chart", checks_drawn, timeout=30)
        a = card(driver, args.analysed)
        report["chart"] = {
            "verdicts": len(a.find_elements(By.CSS_SELECTOR, "svg.chart .verdict")),
            "fails": len(a.find_elements(By.CSS_SELECTOR, "svg.chart .verdict.fail")),
            "passes": len(a.find_elements(By.CSS_SELECTOR, "svg.chart .verdict.pass")),
            "thresholds": len(a.find_elements(By.CSS_SELECTOR, "svg.chart path.threshold")),
            "canarySeries": len(a.find_elements(By.CSS_SELECTOR, "svg.chart path.series.canary")),
            "stableSeries": len(a.find_elements(By.CSS_SELECTOR, "svg.chart path.series.stable")),
            "label": a.find_element(By.CSS_SELECTOR, "svg.chart").get_attribute("aria-label"),
        }
        # Breakers, from the signals.
        report["breakers"] = {
            b.get_attribute("data-cluster"): b.find_element(By.CLASS_NAME, "state").text
            for b in driver.find_elements(By.CSS_SELECTOR, ".breaker[data-cluster]")
        }
        report["signalRows"] = len(driver.find_elements(By.CSS_SELECTOR, "#signals tbody tr"))
        # What a cluster name full of markup became: its text, and no element.
        report["hostileText"] = next(
            (b.find_element(By.CLASS_NAME, "cl").text
             for b in driver.find_elements(By.CSS_SELECTOR, ".breaker[data-cluster]")
             if "<" in b.get_attribute("data-cluster")), None)
        report["images"] = len(driver.find_elements(By.TAG_NAME, "img"))
        driver.save_screenshot(os.path.join(args.shots, "console-running.png"))
        # Nothing went wrong while the page only read.
        report["consoleErrors"] = severe(driver)

        # A refusal shows the server's reason.
        g = card(driver, args.gated)
        resume = g.find_element(By.CSS_SELECTOR, 'button[data-action="resume"]')
        wait(driver, "resume enabled at the pause step", lambda d: resume.is_enabled())
        report["resumeLabel"] = resume.get_attribute("aria-label")
        resume.click()
        wait(driver, "the refusal", lambda d: "refused" in card(d, args.gated).find_element(By.CLASS_NAME, "answer").text)
        report["refusal"] = card(driver, args.gated).find_element(By.CLASS_NAME, "answer").text

        # Abort: the rollout rolls back, and the page says so.
        abort = card(driver, args.abort).find_element(By.CSS_SELECTOR, 'button[data-action="abort"]')
        report["abortLabel"] = abort.get_attribute("aria-label")
        abort.click()
        wait(driver, "RolledBack on the page",
             lambda d: card(d, args.abort).find_element(By.CLASS_NAME, "phase").text == "RolledBack")
        wait(driver, "the answer", lambda d: "done" in card(d, args.abort).find_element(By.CLASS_NAME, "answer").text)
        c = card(driver, args.abort)
        report["phaseAfter"] = c.find_element(By.CLASS_NAME, "phase").text
        report["answer"] = c.find_element(By.CLASS_NAME, "answer").text
        report["buttonsAfter"] = {
            b.get_attribute("data-action"): b.is_enabled()
            for b in c.find_elements(By.CSS_SELECTOR, "button[data-action]")
        }
        # The route's bar follows (the next poll after the rollback).
        abort_mesh = args.abort.split("/")[0]
        wait(driver, "the rolled-back route on the page",
             lambda d: any(t[0] == "colorteller-white" and t[1] == "100%"
                           for t in routes(d).get(f"{abort_mesh}/colorteller-vr/colorteller-route", [])))
        report["routes"] = fresh(lambda: routes(driver))
        # The refused action's 409 is logged by the browser itself.
        report["consoleErrorsAfter"] = severe(driver)
        driver.save_screenshot(os.path.join(args.shots, "console-aborted.png"))

        # The server goes away: the page says so and keeps trying; it comes back.
        say("STOP")
        expect("stopped")
        wait(driver, "the unreachable banner", lambda d: d.find_element(By.ID, "down").is_displayed())
        report["downBanner"] = driver.find_element(By.ID, "down").text
        report["connectionDown"] = driver.find_element(By.ID, "conn").text
        driver.save_screenshot(os.path.join(args.shots, "console-down.png"))
        say("START")
        expect("started")
        wait(driver, "the banner to go", lambda d: not d.find_element(By.ID, "down").is_displayed(), timeout=30)
        report["connectionBack"] = driver.find_element(By.ID, "conn").text
        report["phaseAfterRestart"] = card(driver, args.abort).find_element(By.CLASS_NAME, "phase").text
        report["titleAtEnd"] = driver.title
    except Exception as e:  # noqa: BLE001 - reported with a picture of the page
        try:
            driver.save_screenshot(os.path.join(args.shots, "console-failure.png"))
            report["consoleErrorsAtFailure"] = severe(driver)
        except Exception:  # noqa: BLE001
            pass
        say("REPORT " + json.dumps(report))
        print(f"console check failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        driver.quit()
        sys.exit(1)
    driver.quit()
    say("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
