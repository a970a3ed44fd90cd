"""The dashboard in a real browser (Debian's chromium + chromium-driver, headless, via selenium),
against `machine-monitor serve` run as a user runs it: two machines replaying files, the token
generated and announced on stderr. The page is opened before any sound is scored; an alert must
then appear without a reload, its recording must play, and acknowledging it must land in the
event store with the name typed. A second tab tries a missing and a wrong token and paths out of
the evidence folder. A screenshot is kept (``$ARTEFACTS_DIR`` or pytest's tmp dir)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from machine_monitor.service.store import EventStore
from tests.conftest import SR
from tests.test_service_sinks import free_port, machine_audio, tiny_model, wait_for  # noqa: F401

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def page(tiny_model, tmp_path_factory):  # noqa: F811
    if CHROMIUM is None:
        pytest.skip("needs a browser: Debian package chromium is not installed")
    if CHROMEDRIVER is None:
        pytest.skip("needs the browser driver: Debian package chromium-driver is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    tmp = tmp_path_factory.mktemp("browser")
    # pump3: the fault (clicks) 6 s in, fan1 7 s in: after the page has opened (a second or two after
    # the dashboard answers, more on a busy machine), before the test has waited long. Both outlast it.
    sf.write(tmp / "pump3.wav", machine_audio([("n", 6.0), ("a", 3.0), ("n", 50.0)], seed=1), SR)
    sf.write(tmp / "fan1.wav", machine_audio([("n", 7.0), ("a", 3.0), ("n", 50.0)], seed=2), SR)
    port = free_port()
    (tmp / "machines.toml").write_text(f"""
[service]
store = "events.db"
evidence_dir = "evidence"
[dashboard]
port = {port}
[machines.pump3]
model = "{tiny_model}"
input = "pump3.wav"
[machines.fan1]
model = "{tiny_model}"
input = "fan1.wav"
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(tmp / "serve.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "serve", str(tmp / "machines.toml")],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                    "--window-size=1280,1500", "--autoplay-policy=no-user-gesture-required"):
            opts.add_argument(arg)
        opts.binary_location = CHROMIUM
        driver = None
        try:
            driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=opts)

            def announced():
                log.seek(0)
                m = re.search(r"(http://127\.0\.0\.1:\d+/)#token=(\S+)\)", log.read())
                assert proc.poll() is None, f"serve exited:\n{(tmp / 'serve.log').read_text()}"
                return m

            link = wait_for(announced, 60, "serve to announce the dashboard and its token")
            base, token = link.group(1), link.group(2)

            def up() -> bool:
                try:
                    return urllib.request.urlopen(base + "api/state", timeout=2).status == 200
                except OSError:
                    return False

            wait_for(up, 30, "the dashboard to answer")
            driver.get(link.group(0)[:-1])  # the announced link, as a user clicks it: it stores the token
            wait_for(lambda: driver.execute_script("return document.querySelectorAll('.card').length") == 2, 20,
                     "the two machine cards")
            alerts_at_load = wait_for(lambda: driver.execute_script(
                "var box = document.getElementById('alerts');"
                "if (box.textContent.includes('Loading')) return null;"  # the list is still being fetched
                "window.__notReloaded = true;"
                "return {alerts: box.querySelectorAll('.alert').length, text: box.textContent};"), 20, "the alert list")
            yield {"driver": driver, "base": base, "token": token, "tmp": tmp, "proc": proc,
                   "alerts_at_load": alerts_at_load, "main": driver.current_window_handle}
        finally:
            if driver is not None:
                driver.quit()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def artefact(tmp: Path, name: str) -> Path:
    out = Path(os.environ.get("ARTEFACTS_DIR") or tmp)
    out.mkdir(parents=True, exist_ok=True)
    return out / name


def text_of(driver, element_id: str) -> str:
    """An element's text, read at once (the page re-renders alert headers as news arrives)."""
    return driver.execute_script("var e = document.getElementById(arguments[0]); return e ? e.textContent : ''",
                                 element_id)


def click(driver, element_id: str) -> None:
    """Click like a user; again if the page re-rendered the button in between."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(5):
        try:
            driver.find_element(By.ID, element_id).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"#{element_id} kept being replaced")


def message(driver) -> str:
    return driver.execute_script("var m = document.getElementById('message'); return m.hidden ? '' : m.textContent")


def test_a_missing_or_wrong_token_and_paths_out_of_the_evidence_folder_get_nowhere(page):
    from selenium.webdriver.common.by import By

    d = page["driver"]
    d.switch_to.new_window("tab")
    try:
        d.get(page["base"])
        d.execute_script("localStorage.removeItem('mm-token')")  # a browser that never got the link
        d.get(page["base"])
        wait_for(lambda: d.find_elements(By.ID, "silence-btn-fan1"), 20, "the silence button")
        d.find_element(By.ID, "who").send_keys("mallory")
        click(d, "silence-btn-fan1")
        assert "token" in wait_for(lambda: message(d), 5, "a message")  # nothing sent without one
        d.find_element(By.ID, "token").send_keys("not-the-token")
        d.find_element(By.ID, "who").click()  # leaves the token field: stored
        click(d, "silence-btn-fan1")
        assert "token is missing or wrong" in wait_for(
            lambda: "wrong" in message(d) and message(d), 5, "the refusal")
        store = EventStore(page["tmp"] / "events.db")
        assert store.active_silences() == [] and store.events(kinds=["silenced"]) == []
        store.close()
        for path in ("evidence/..%2fmachines.toml", "evidence/%2e%2e/events.db", "evidence/../serve.log",
                     "static/..%2f..%2fmachines.toml", "evidence/%252e%252e%252fmachines.toml"):
            d.get(page["base"] + path)
            body = d.find_element(By.TAG_NAME, "body").text
            assert body.strip() == "not found", (path, body[:200])
    finally:
        d.get(page["base"] + "static/dashboard.css")
        d.execute_script("localStorage.setItem('mm-token', arguments[0])", page["token"])
        d.close()
        d.switch_to.window(page["main"])


def test_a_live_alert_appears_its_evidence_plays_and_the_acknowledgement_is_stored(page):
    from selenium.webdriver.common.by import By

    d = page["driver"]
    # The page was open before any alert existed.
    assert page["alerts_at_load"] == {"alerts": 0, "text": "No alert so far."}
    card = wait_for(lambda: d.execute_script("var a = document.querySelector(\".alert[data-machine='pump3']\");"
                                             "return a ? a.id : null"), 30, "pump3's alert to appear live")
    assert d.execute_script("return window.__notReloaded === true")  # arrived without a reload
    alert_id = int(card.split("-")[1])
    assert d.find_element(By.ID, "machine-pump3").get_attribute("data-state") in ("firing", "pending", "normal")

    # Its evidence: the newest alert shows it at once, the other on a click.
    if not d.find_elements(By.ID, f"audio-{alert_id}"):
        click(d, f"toggle-{alert_id}")
    audio = wait_for(lambda: d.find_elements(By.ID, f"audio-{alert_id}"), 10, "the audio player")[0]
    played = d.execute_async_script("""
        var a = arguments[0], done = arguments[arguments.length - 1];
        a.play().then(function () {
          setTimeout(function () { done({ok: true, ready: a.readyState, t: a.currentTime, error: a.error,
                                           duration: a.duration}); }, 600);
        }).catch(function (e) { done({ok: false, why: String(e), ready: a.readyState, error: a.error}); });
    """, audio)
    assert played["ok"] and played["error"] is None, played
    assert played["ready"] >= 2 and played["t"] > 0 and 1.0 < played["duration"] < 30, played
    img = d.find_element(By.ID, f"evidence-{alert_id}")
    wait_for(lambda: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 60,
             "the evidence picture")
    summary = wait_for(lambda: "Score" in text_of(d, f"summary-{alert_id}") and text_of(d, f"summary-{alert_id}"),
                       30, "the evidence summary")
    assert "above the threshold" in summary

    # Acknowledge it, as "anna".
    who = d.find_element(By.ID, "who")
    who.clear()
    who.send_keys("anna")
    click(d, f"ack-{alert_id}")
    wait_for(lambda: "acknowledged" in message(d), 10, "the acknowledgement to be confirmed")
    store = EventStore(page["tmp"] / "events.db")
    got = store.acked(alert_id)
    assert got is not None and got["who"] == "anna" and time.time() - got["epoch"] < 60
    assert any(e["alert_id"] == alert_id and e["who"] == "anna" for e in store.events(kinds=["acknowledged"]))
    store.close()
    wait_for(lambda: "acknowledged by anna" in text_of(d, f"alert-{alert_id}"), 10,
             "the page to show who acknowledged")
    wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".alert[data-machine='fan1']"), 30, "fan1's alert")
    d.find_element(By.CSS_SELECTOR, ".range button[data-range='day']").click()  # the day, then back
    time.sleep(0.5)
    d.find_element(By.CSS_SELECTOR, ".range button[data-range='hour']").click()
    d.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.2)  # one more live update of the timelines
    assert d.execute_script("return document.querySelectorAll('.chart canvas').length") == 2  # uPlot drew
    problems = [e["message"] for e in d.get_log("browser")  # not the other tab's refused requests (401, 404)
                if e["level"] == "SEVERE" and not re.search(r"status of 40[14] ", e["message"])]
    assert problems == []  # no script error, nothing the content security policy blocked
    shot = artefact(page["tmp"], "dashboard.png")
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
