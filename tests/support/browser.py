"""Headless Chromium for tests: Debian's `chromium` driven by Playwright (its own browser download can't work here)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium_page(width: int = 1280, height: int = 800) -> AsyncIterator[Any]:
    """A fresh page; console errors, uncaught exceptions and failed loads are collected on `page.console_errors`.

    Skips where no Chromium is installed, except in CI (`CI=true`), where a missing browser is a failure."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (apt-get install -y chromium)")
        pytest.skip("needs Debian's Chromium: apt-get install -y chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            page.console_errors = []
            # Failed loads are reported by URL from the responses (a missing favicon is no error of the page).
            page.on(
                "console",
                lambda m: (
                    m.type == "error"
                    and not m.text.startswith("Failed to load resource")
                    and page.console_errors.append(m.text)
                ),
            )
            page.on("pageerror", lambda e: page.console_errors.append(str(e)))
            page.on(
                "response",
                lambda r: (
                    r.status >= 400
                    and not r.url.endswith("/favicon.ico")
                    and page.console_errors.append(f"HTTP {r.status} for {r.url}")
                ),
            )
            yield page
        finally:
            await browser.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
