"""Shared fixtures: free ports, an isolated state directory, and the embedded servers started once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrag_tests.harness import EmbeddedStack, isolated_settings, release, scratch_dir


@pytest.fixture
def state_home() -> Iterator[Path]:
    """A fresh state directory the unprivileged Postgres user can reach (pytest's tmp dirs are 0700 root)."""
    home = scratch_dir("streamrag-test-")
    try:
        yield home / ".streamrag"
    finally:
        release(home)


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    home = scratch_dir("streamrag-stack-")
    embedded = EmbeddedStack(isolated_settings(home / ".streamrag"))
    try:
        embedded.start_all()
        yield embedded
    finally:
        embedded.stop_all()
        release(home)


@pytest.fixture
def browser():
    """Headless Chromium (Debian's chromium and chromedriver) driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
