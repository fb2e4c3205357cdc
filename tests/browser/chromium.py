"""Debian's headless Chromium driven by Selenium through Debian's chromedriver (the same package version,
so driver and browser always match), with the waits that single-page apps need: a page's text arrives
after its JavaScript has asked the server, so every check waits for text rather than sleeping."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VIEWPORT = (1440, 900)  # narrower, and the Prefect deployments table hides the schedule
# Without the networking flags Chromium phones home at start-up and hangs on a closed network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} is absent: apt-get install -y chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


class Page:
    """One Chromium window: open URLs, wait for text, click by visible text, save screenshots."""

    def __init__(self, driver: Any, shots: Path, timeout: float = 60) -> None:
        self.driver, self.shots, self.timeout = driver, shots, timeout

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self) -> str:
        """The page's visible text with runs of whitespace as one space (labels and values often sit in
        separate elements, so `decision: promoted` arrives as `decision\\n: promoted`)."""
        from selenium.webdriver.common.by import By

        return re.sub(r"\s+", " ", self.driver.find_element(By.TAG_NAME, "body").text)

    def until(self, check: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        """Poll `check` until it returns something truthy; fail naming `what` and showing the page text."""
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                got = check()
                if got:
                    return got
            except WebDriverException:
                pass
            if time.monotonic() > deadline:
                self.shot("failure-" + re.sub(r"\W+", "-", what)[:40])
                raise AssertionError(f"timed out waiting for {what} on {self.driver.current_url}; page text:\n"
                                     f"{self.text()[:3000]}")
            time.sleep(0.25)

    def wait_text(self, *patterns: str, timeout: float | None = None) -> str:
        """Wait until every regex in `patterns` matches the page text; returns that text."""

        def found() -> str | None:
            text = self.text()
            return text if all(re.search(p, text) for p in patterns) else None

        return self.until(found, " and ".join(repr(p) for p in patterns), timeout)

    def element(self, xpath: str, timeout: float | None = None, displayed: bool = True) -> Any:
        """The first (displayed, unless told otherwise) element matching `xpath`, waiting for it."""
        from selenium.webdriver.common.by import By

        def visible() -> Any:
            found = self.driver.find_elements(By.XPATH, xpath)
            return next((e for e in found if e.is_displayed() or not displayed), None)

        return self.until(visible, xpath, timeout)

    def click(self, xpath: str, timeout: float | None = None) -> None:
        el = self.element(xpath, timeout)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        self.until(lambda: el.click() is None, f"a click on {xpath}")

    def click_hidden(self, xpath: str) -> None:
        """Click an element the page hides or styles over (a checkbox under its styled box, a tab list shown
        as a select on narrow screens): a mouse cannot reach it, so click it in script."""
        self.driver.execute_script("arguments[0].click()", self.element(xpath, displayed=False))

    def scroll_to(self, xpath: str) -> None:
        el = self.element(xpath)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", el)
        time.sleep(0.5)  # let lazy sections render before a screenshot

    def shot(self, name: str) -> Path:
        """Save the viewport as `<name>.png` in the screenshot folder."""
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        shrink(path)
        return path


def shrink(path: Path) -> None:
    """A UI screenshot in 256 colours reads the same at a third of the size: keeps docs/img small."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


@contextmanager
def chromium(shots: Path, log: Path) -> Iterator[Page]:
    """A fresh headless Chromium with an empty profile; quits it (and chromedriver) at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(log)), options=options)
    try:
        # --window-size sizes the window, not the page: fix the viewport so screenshots are exactly VIEWPORT
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False})
        driver.set_page_load_timeout(60)
        yield Page(driver, shots)
    finally:
        driver.quit()
