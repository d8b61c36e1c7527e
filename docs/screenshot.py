"""Regenerate docs/web-page.png, the README's screenshot of the page, with the real browser and API.

    python docs/screenshot.py

Starts the API under uvicorn and one job worker (own queue and key prefix, as a real install has),
stylizes the CC0 cat in ``docs/examples/`` (no photo from the data set is ever committed) in headless
Chromium, and saves a palette PNG under 300 KB.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from core.settings import Settings  # noqa: E402
from tests.browser import LiveServer, start_chromium, wait_for  # noqa: E402
from tests.conftest import WorkerProcess, _purge  # noqa: E402

OUT = ROOT / "docs" / "web-page.png"
PHOTO = ROOT / "docs" / "examples" / "cat.jpg"


def main() -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(queue_name=f"atelier-docs-{tag}", key_prefix=f"atelier-docs-{tag}:")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        worker = WorkerProcess(settings)
        server = LiveServer(settings, work / "uvicorn.log")
        driver = start_chromium(work / "profile")
        try:
            driver.set_window_size(1280, 900)
            driver.get(f"{server.url}/#stylize")
            wait_for(driver, "document.body.dataset.ready === 'true'")
            driver.find_element("css selector", "#stylize-file").send_keys(str(PHOTO))
            driver.find_element("css selector", "#stylize-submit").click()
            wait_for(driver, "document.querySelector('#stylize-result').naturalWidth > 0")
            driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
            driver.save_screenshot(str(work / "shot.png"))
        finally:
            driver.quit()
            server.stop()
            worker.stop()
            _purge(settings)
        shot = Image.open(work / "shot.png").convert("RGB")
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
