"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver (installed by scripts/setup.sh --test; nothing is downloaded at test
time). A real server renders real POV-Ray frames; the page is never reloaded while previews
appear, a frame's log is opened, and a job is cancelled and retried from the page. The test
saves a screenshot (docs/dashboard.png is one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import make_scene, run_cli

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def screenshot(driver, tmp_path: Path, name: str) -> None:
    """Into the test's folder, or $DISTREN_SCREENSHOTS (how docs/dashboard.png was made)."""
    folder = Path(os.environ.get("DISTREN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))
    assert (folder / name).stat().st_size > 10_000


@pytest.fixture
def browser(tmp_path):
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver are installed by ./scripts/setup.sh --test"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def slow_package(tmp_path, name: str, final: int, spin: int = 0):
    folder = tmp_path / name
    ini = make_scene(folder, final=final)
    if spin:   # a loop the parser runs: the frame takes a while
        pov = folder / "scene.pov"
        pov.write_text(pov.read_text() + f"#declare I = 0; #while (I < {spin}) #declare I = I + 1; #end\n")
    pkg = tmp_path / f"{name}.tar.gz"
    r = run_cli("pack", str(ini), "--width", "160", "--height", "120", "--name", name, "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    return pkg


def wait(driver, what: str, ok, timeout: float = 90):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: ok(d))
    except Exception:
        pytest.fail(f"the page did not show {what} within {timeout} s")


def loaded_images(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('#grid img')].filter(i => i.complete && i.naturalWidth > 0).length")


def test_watch_a_job_render_open_a_log_cancel_and_retry(server_factory, browser, tmp_path):
    server = server_factory(slots=1)
    client = server.client()
    # the first job waits behind nothing: it renders while the page watches
    first = client.submit(slow_package(tmp_path, "orbit", final=5, spin=30_000))
    browser.get(f"{server.url}/jobs/{first['id']}")
    loaded_at = browser.execute_script("return window.distrenLoadedAt")
    wait(browser, "the live badge", lambda d: d.find_element(By.ID, "live").text == "live")
    assert loaded_images(browser) < 6          # the frames are still rendering
    wait(browser, "six previews", lambda d: loaded_images(d) == 6, timeout=180)
    assert browser.execute_script("return window.distrenLoadedAt") == loaded_at   # no reload
    wait(browser, "the job done", lambda d: d.find_element(By.ID, "job-state").text == "done")
    assert "6/6 done" in browser.find_element(By.ID, "job-counts").text
    # a frame's details and log
    browser.find_element(By.CSS_SELECTOR, '#grid .cell[data-frame="2"]').click()
    wait(browser, "the log", lambda d: "POV-Ray" in d.find_element(By.ID, "frame-log").text)
    assert "rendered by" in browser.find_element(By.ID, "details").text
    screenshot(browser, tmp_path, "dashboard-job.png")

    # a slow job, cancelled and then retried from the page
    second = client.submit(slow_package(tmp_path, "slow", final=3, spin=400_000))
    browser.get(f"{server.url}/jobs/{second['id']}")
    wait(browser, "a running frame", lambda d: d.find_elements(By.CSS_SELECTOR, '#grid .cell[data-state="running"]'))
    browser.find_element(By.ID, "cancel").click()
    wait(browser, "the job cancelled", lambda d: d.find_element(By.ID, "job-state").text == "cancelled")
    assert client.job(second["url"])["state"] == "cancelled"
    wait(browser, "cancelled frames", lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                                    '#grid .cell[data-state="cancelled"]')) == 4)
    browser.find_element(By.ID, "retry").click()
    wait(browser, "the job running again", lambda d: d.find_element(By.ID, "job-state").text in ("running", "queued"))
    assert client.job(second["url"])["frames"]["cancelled"] == 0
    # pause, priority and resume from the page
    browser.find_element(By.ID, "pause").click()
    wait(browser, "the job paused", lambda d: d.find_element(By.ID, "job-state").text == "paused")
    assert client.job(second["url"])["paused"] is True
    prio = browser.find_element(By.ID, "priority")
    prio.clear()
    prio.send_keys("7")
    browser.find_element(By.ID, "set-priority").click()
    wait(browser, "the new priority", lambda d: client.job(second["url"])["priority"] == 7)
    browser.find_element(By.ID, "resume").click()
    wait(browser, "the job resumed", lambda d: d.find_element(By.ID, "job-state").text in ("running", "queued"))
    assert client.job(second["url"])["paused"] is False
    client.cancel(second["url"])    # (no need to wait for its slow frames)

    # the jobs page: both jobs, live
    browser.get(server.url + "/")
    wait(browser, "both jobs", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs-body tr")) == 2)
    rows = browser.find_element(By.ID, "jobs-body").text
    assert "orbit" in rows and "slow" in rows and "6/6" in rows
    screenshot(browser, tmp_path, "dashboard-jobs.png")


def test_the_token_guards_the_controls_on_the_page(server_factory, browser, tmp_path):
    token = tmp_path / "token"
    token.write_text("page-token\n")
    server = server_factory(slots=0, extra=["--client-token-file", str(token)])
    env = {"DISTREN_TOKEN": "page-token"}
    pkg = slow_package(tmp_path, "held", final=2)
    r = run_cli("submit", str(pkg), "--server", server.url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    browser.get(f"{server.url}/jobs/1")
    wait(browser, "the frames", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) == 3)
    browser.find_element(By.ID, "cancel").click()
    wait(browser, "the refusal", lambda d: "token" in d.find_element(By.ID, "message").text)
    assert server.client().job("distren://alpha/1")["state"] != "cancelled"
    field = browser.find_element(By.ID, "token")
    field.send_keys("page-token")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    browser.find_element(By.ID, "cancel").click()
    wait(browser, "the job cancelled", lambda d: d.find_element(By.ID, "job-state").text == "cancelled")



def test_a_server_that_protects_reads_shows_its_jobs_once_the_token_is_entered(server_factory, browser, tmp_path):
    """--protect-reads: the page comes without data; with the token entered, the script reads
    with it, and the previews (<img>) and the event stream, which cannot send a header, pass
    with the dashboard's cookie."""
    from distren.client import Client

    token = tmp_path / "token"
    token.write_text("read-token\n")
    server = server_factory(slots=1, extra=["--client-token-file", str(token), "--protect-reads"])
    with Client(server.url, token="read-token") as client:
        job = client.submit(slow_package(tmp_path, "secret", final=1))
        client.wait(job["url"], interval=0.2, timeout=120)
    browser.get(f"{server.url}/jobs/1")
    wait(browser, "the refusal", lambda d: "token" in d.find_element(By.ID, "message").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#grid .cell")
    assert browser.find_element(By.ID, "live").text != "live"
    field = browser.find_element(By.ID, "token")
    field.send_keys("read-token")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    wait(browser, "two previews", lambda d: loaded_images(d) == 2)
    wait(browser, "the live badge", lambda d: d.find_element(By.ID, "live").text == "live")
    assert browser.find_element(By.ID, "job-state").text == "done"
    browser.get(server.url + "/")     # a page load sends the cookie: the jobs are in the page
    wait(browser, "the job", lambda d: "secret" in d.find_element(By.ID, "jobs-body").text)


def test_a_large_job_pages_and_a_peers_jobs_are_shown(farm, browser, tmp_path):
    """3,000 frames: 200 a page, next and "go to frame"; a peer's job page read through this
    server (nothing renders: both servers have no slots)."""
    a = farm.add("A", 0, ["B"])
    b = farm.add("B", 0, ["A"])
    farm.start()
    pkg = slow_package(tmp_path, "big", final=2999)
    b.client().submit(pkg)
    a.client().submit(slow_package(tmp_path, "small", final=1))
    browser.get(f"{b.url}/jobs/1")
    wait(browser, "a page of frames", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) == 200)
    assert browser.find_element(By.ID, "page-info").text == "frames 0 to 199"
    browser.find_element(By.ID, "next").click()
    wait(browser, "the second page", lambda d: d.find_element(By.ID, "page-info").text == "frames 200 to 399")
    field = browser.find_element(By.ID, "goto")
    field.send_keys("2900")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    wait(browser, "the last page", lambda d: d.find_element(By.ID, "page-info").text == "frames 2900 to 2999")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .cell")) == 100
    # A's dashboard: its own job, its peer B and B's jobs through A
    browser.get(a.url + "/")
    wait(browser, "the peer", lambda d: "healthy" in d.find_element(By.ID, "peers-body").text)
    browser.find_element(By.LINK_TEXT, "B").click()
    wait(browser, "B's job", lambda d: "big" in d.find_element(By.ID, "jobs-body").text)
    browser.find_element(By.LINK_TEXT, "big").click()
    wait(browser, "B's frames", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) == 200)
    assert browser.current_url == f"{a.url}/servers/B/jobs/1"
    assert not browser.find_elements(By.ID, "cancel")          # read-only: a peer's job
