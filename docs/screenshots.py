"""Re-take the screenshots in docs/: the MLflow UI of a digits study and the sensitivity report.

Run from the repository root (needs Debian's chromium, `apt-get install chromium`, and the
Playwright driver to wait for MLflow's single-page app, `pip install playwright`; Playwright's own
browser download is not needed)::

    python docs/screenshots.py

It runs the digits study into a temporary folder, starts `mlflow ui` on a free localhost port,
renders the experiment page in headless Chromium, and renders the study's report.html. It stops
the server and leaves only docs/mlflow_ui.png and docs/report.png. Takes about a minute.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def screenshot(url: str, target: Path, size: str, profile: Path, wait_ms: int = 0) -> None:
    """Render ``url`` in headless Chromium into a PNG."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed: apt-get install chromium")
    extra = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            *extra,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            f"--screenshot={target}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    print(f"wrote {target} ({target.stat().st_size} bytes)")


def runs_page(url: str, target: Path) -> None:
    """Open MLflow's runs table in headless Chromium, wait until the runs are listed, screenshot it."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS[1:])
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(url)
        parent = page.get_by_role("row").filter(has_text="digits").first
        parent.wait_for(timeout=60_000)
        parent.get_by_role("button").first.click()  # expand the study's nested trial runs
        page.get_by_text("trial-0", exact=True).first.wait_for(timeout=60_000)
        for button in page.locator("button[aria-label*='lose']").all():  # the assistant side panel
            if button.is_visible():
                button.click()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(target))
        browser.close()
    print(f"wrote {target} ({target.stat().st_size} bytes)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="autoquant-shots-") as tmp:
        work = Path(tmp)
        config = (ROOT / "configs" / "digits.yaml").read_text()
        config = config.replace("../examples", str(ROOT / "examples")).replace(
            "../runs/digits", str(work / "digits")
        )
        config = config.replace("mode: fast", "mode: full\n  n_trials: 4")
        (work / "digits.yaml").write_text(config)
        for command in ("tune", "analyze"):
            subprocess.run(
                [sys.executable, "-m", "autoquant", command, str(work / "digits.yaml")], check=True
            )
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                f"sqlite:///{work / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit("mlflow ui did not start")
                    time.sleep(0.5)
            runs_page(f"{url}/#/experiments/1/runs", ROOT / "docs" / "mlflow_ui.png")
        finally:
            server.terminate()
            server.wait(timeout=30)
        screenshot(
            (work / "digits" / "report.html").as_uri(), ROOT / "docs" / "report.png", "1100,1300", work / "p2"
        )


if __name__ == "__main__":
    main()
