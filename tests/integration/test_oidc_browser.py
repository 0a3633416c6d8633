"""SSO in a real browser: Debian's headless Chromium, driven through Selenium
with Debian's chromedriver, logs in on the internal gateway (10444) as alice
and as bob against the demo OIDC provider, like a user would
(docs/filters/oidc.md). Screenshots of the provider's login page and of the
logged-in echo page are saved under build/screenshots/ for the docs.

`make test` installs the browser (`make browser`); the test is skipped only
when neither `chromium` nor `chromedriver` can be found, with the reason.
"""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import REPO

SCREENSHOTS = REPO / "build" / "screenshots"
GATEWAY = "https://localhost:10444"
PROVIDER = "http://localhost:18084"


@pytest.fixture
def browser(stack):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("chromium/chromedriver not installed (make browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,760", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    # The demo server certificate is signed by the demo CA, which this
    # throw-away profile does not trust; the cookies still need https.
    opts.accept_insecure_certs = True
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def echo_json(driver) -> dict:
    from selenium.webdriver.common.by import By

    return json.loads(driver.find_element(By.TAG_NAME, "body").text)


def sign_in(driver, user: str, shot: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    assert driver.current_url.startswith(PROVIDER + "/authorize"), driver.current_url
    if shot:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / shot))
    driver.find_element(By.NAME, "username").clear()
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(f"{user}-password")
    driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()


def test_alice_logs_in_opens_admin_and_logs_out(browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(GATEWAY + "/tools/dashboard?tab=1")
    sign_in(browser, "alice", shot="oidc-login.png")
    WebDriverWait(browser, 10).until(lambda d: d.current_url.startswith(GATEWAY))
    assert browser.current_url == GATEWAY + "/tools/dashboard?tab=1", "back to the page first asked for"
    page = echo_json(browser)
    assert page["path"] == "/tools/dashboard"
    assert page["headers"]["x-user-id"] == "alice"
    assert page["headers"]["x-user-email"] == "alice@example.com"
    assert page["headers"]["x-user-groups"] == "tools-admin"
    assert "__Host-gw-session" not in page["headers"].get("cookie", "")
    browser.save_screenshot(str(SCREENSHOTS / "oidc-echo.png"))
    cookie = browser.get_cookie("__Host-gw-session")
    assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"

    browser.get(GATEWAY + "/admin/")
    assert echo_json(browser)["headers"]["x-user-id"] == "alice"

    browser.get(GATEWAY + "/oauth2/logout")
    # provider logout → back to the gateway → no session → the login page again
    WebDriverWait(browser, 10).until(lambda d: d.current_url.startswith(PROVIDER + "/authorize"))
    assert browser.get_cookie("__Host-gw-session") is None


def test_bob_logs_in_and_admin_is_forbidden(browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(GATEWAY + "/admin/")
    sign_in(browser, "bob")
    WebDriverWait(browser, 10).until(lambda d: d.current_url.startswith(GATEWAY))
    body = echo_json(browser)
    assert body["error"] == "forbidden", body
    browser.get(GATEWAY + "/tools")
    assert echo_json(browser)["headers"]["x-user-id"] == "bob"
