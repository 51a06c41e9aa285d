"""The web console in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium) against `pvhyp up`: log in through the form with the credentials file, see
Domain-0, clone Debian's busybox guest (a halted VM from a config in the XenAPI's VM
directory) and destroy the clone, start the guest, type `echo $((6*7))` into its console
(xterm.js over the WebSocket) and read 42, pause and unpause it, open its teaching panel,
power it off, see it halted. A screenshot of the VM list is
kept in $PVHYP_ARTIFACTS (default tests/artifacts/).

Skips, saying why, where Chromium, chromedriver or selenium is missing (bin/setup
installs them where it can) or the Debian image cannot be had.
"""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from tests.debian.test_toolstack import BOOT_TIMEOUT
from tests.toolstack.conftest import ROOT, start_host

PROMPT = "pvhyp-guest#"
STEP_TIMEOUT = 60
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--window-size=1280,1000")


def _browser_or_skip():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (bin/setup installs them as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (the dev extra: bin/setup)")
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.binary_location = chromium
    # the given driver: selenium never looks for (or downloads) one of its own
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture
def debian_vm_host(tmp_path):
    from dom0.images import debian
    try:
        image = debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    vm_dir = tmp_path / "vms"
    vm_dir.mkdir()
    (vm_dir / "debian.cfg").write_text(
        f'name = "debian"\nkernel = "{image["kernel"]}"\nramdisk = "{image["ramdisk"]}"\n'
        'memory = 256\nvcpus = 1\nextra = "console=hvc0"\non_poweroff = "destroy"\n')
    host = start_host(str(tmp_path / "up"), memory_mb=512,
                      extra=("--api", "127.0.0.1:0", "--vm-dir", str(vm_dir)))
    yield host
    host.pvhyp("down", check=False)


def artifacts_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("PVHYP_ARTIFACTS") or pathlib.Path(ROOT) / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_log_in_clone_start_type_in_the_console_pause_power_off(debian_vm_host):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    host = debian_vm_host
    url = pathlib.Path(host.run_dir, "xapi.url").read_text().strip()
    user, password = pathlib.Path(host.run_dir, "xapi-credentials").read_text().strip().split(":", 1)
    browser = _browser_or_skip()

    def row(name):
        return browser.find_element(By.CSS_SELECTOR, f"#vms tr[data-name='{name}']")

    def press(name, action):
        # the list is drawn again on every event: a row found a moment ago may be gone
        def click():
            row(name).find_element(By.CSS_SELECTOR, f"button[data-action='{action}']").click()
            return True
        wait(f"the {action} button of {name}", click)

    def state_of(name):
        return row(name).find_elements(By.TAG_NAME, "td")[1].text

    def screen():
        return [line.text for line in browser.find_elements(By.CSS_SELECTOR, ".xterm-rows > div")]

    def wait(what, predicate, timeout=STEP_TIMEOUT):
        try:
            return WebDriverWait(browser, timeout, poll_frequency=0.2,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                                 ).until(lambda _: predicate())
        except TimeoutException:
            status = browser.find_element(By.ID, "status").text
            raise AssertionError(f"timed out waiting for {what}; the page's status line: {status!r}, "
                                 f"the console's last lines: {screen()[-5:]}") from None

    try:
        browser.get(url + "/")
        browser.find_element(By.ID, "user").clear()
        browser.find_element(By.ID, "user").send_keys(user)
        browser.find_element(By.ID, "password").send_keys(password)
        browser.find_element(By.ID, "login-button").click()
        wait("Domain-0 in the list", lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-name='Domain-0']"))
        wait("Domain-0 running", lambda: state_of("Domain-0") == "Running")
        wait("debian halted (a config in the VM directory)", lambda: state_of("debian") == "Halted")
        assert not browser.find_element(By.ID, "login").is_displayed()

        press("debian", "clone")
        wait("the clone in the list", lambda: state_of("debian-copy") == "Halted")
        press("debian-copy", "destroy")
        wait("the confirmation", lambda: browser.switch_to.alert).accept()
        wait("the clone gone", lambda: not browser.find_elements(By.CSS_SELECTOR, "tr[data-name='debian-copy']"))

        press("debian", "start")
        wait("debian running (event.from)", lambda: state_of("debian") == "Running")
        press("debian", "console")
        wait("the shell's prompt on the console", lambda: any(PROMPT in line for line in screen()), BOOT_TIMEOUT)
        browser.find_element(By.CSS_SELECTOR, "[data-console] .xterm-helper-textarea").send_keys("echo $((6*7))\n")
        wait("42 on the console", lambda: "42" in [line.strip() for line in screen()])

        press("debian", "pause")
        wait("debian paused", lambda: state_of("debian") == "Paused")
        press("debian", "unpause")
        wait("debian running again", lambda: state_of("debian") == "Running")

        press("debian", "stats")
        wait("the teaching panel's memory", lambda: browser.find_elements(
            By.CSS_SELECTOR, "[data-stats] tr[data-source='memory']"))
        browser.save_screenshot(str(artifacts_dir() / "webui-vm-list.png"))

        # Force off: VM.hard_shutdown. (VM.clean_shutdown asks the guest, whose Linux runs
        # /sbin/poweroff, which the busybox initramfs does not have.)
        press("debian", "poweroff")
        wait("debian halted", lambda: state_of("debian") == "Halted")
        wait("the console closed with a reason", lambda: any("console closed" in line for line in screen()))
        assert "debian" not in host.pvhyp("list").stdout
    finally:
        browser.quit()
