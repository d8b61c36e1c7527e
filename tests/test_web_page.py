"""The web page in a real browser: headless Chromium (Debian's) against the API under uvicorn.

Every step saves a screenshot into the test's temporary directory (pytest prints where on failure).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import (
    LiveServer,
    Screenshots,
    console_errors,
    require_browser,
    start_chromium,
    wait_for,
)
from tests.conftest import WorkerProcess, _purge
from tests.images import encode, photo_like, stripes
from tests.videos import COLOUR_BARS, bars_frame, make_clip, make_lossless_clip

STATIC_DIR = Path(__file__).resolve().parent.parent / "app" / "static"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_browser()
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def shots(browser, tmp_path: Path) -> Screenshots:
    return Screenshots(browser, tmp_path)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    files = {
        "photo": ("photo.png", encode(photo_like(160, 120, seed=1))),
        "photo2": ("second.jpg", encode(photo_like(120, 160, seed=2), "JPEG")),
        "painting": ("painting.png", encode(stripes(64, 64))),
        "not_an_image": ("notes.png", b"these are my notes, not a PNG"),
    }
    paths = {}
    for key, (name, data) in files.items():
        paths[key] = tmp_path / name
        paths[key].write_bytes(data)
    return paths


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    """Tiny clips: a few frames each, so a whole video job takes seconds on a busy CPU."""
    files = {
        "mp4": ("clip.mp4", make_clip(frames=8, width=64, height=48, fps=8, audio=False)),
        "gif": ("loop.gif", make_clip(frames=6, width=48, height=32, fps=6, audio=False, container="gif")),
        "text": ("notes.txt", b"these are my notes, not a video\n" * 20),
    }
    paths = {}
    for key, (name, data) in files.items():
        paths[key] = tmp_path / name
        paths[key].write_bytes(data)
    return paths


def open_page(driver, server, tab: str) -> None:
    """A fresh load of the page (a change of the #fragment alone would keep the old page)."""
    driver.get("about:blank")
    driver.get(f"{server.url}/#{tab}")
    wait_for(driver, "document.body.dataset.ready === 'true'", 30, "the page did not finish loading")
    console_errors(driver)  # start each test with an empty console log


def q(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def text(driver, css: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", css)


def choose_style(driver, gallery: str, name: str) -> None:
    """Click the card of style ``name`` in a gallery (its radio button is visually hidden)."""
    q(driver, f"{gallery} label:has(input[value='{name}'])").click()


def image_loaded(css: str) -> str:
    """A JavaScript expression: the <img> at ``css`` is shown and has decoded pixels."""
    return (
        f"(() => {{ const i = document.querySelector('{css}');"
        " return !!i && !i.hidden && i.complete && i.naturalWidth > 0; })()"
    )


def test_page_is_served_with_everything_from_this_origin(live_server):
    page = httpx.get(f"{live_server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(f"{live_server.url}{asset}", timeout=10).status_code == 200, asset
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            urls = re.findall(r"https?://[^\s\"')]+", path.read_text())
            assert all(u == "http://www.w3.org/2000/svg" for u in urls), (path, urls)
    module = httpx.get(f"{live_server.url}/static/js/main.js", timeout=10)
    assert "javascript" in module.headers["content-type"]


def test_stylize_a_photo_and_see_the_result_next_to_it(browser, live_server, shots, images):
    open_page(browser, live_server, "stylize")
    wait_for(browser, "document.querySelectorAll('#style-gallery input[type=radio]').length > 0")
    assert "The Starry Night" in text(browser, "#style-gallery")
    assert "Vincent van Gogh" in text(browser, "#style-gallery")
    shots("page")
    q(browser, "#stylize-file").send_keys(str(images["photo"]))
    wait_for(browser, image_loaded("#stylize-photo"))
    size = q(browser, "#stylize-size")
    size.clear()
    size.send_keys("160")
    shots("photo-chosen")
    q(browser, "#stylize-submit").click()
    wait_for(browser, image_loaded("#stylize-result"), 60, "no stylized image appeared")
    shots("result")
    width, height = browser.execute_script(
        "const i = document.querySelector('#stylize-result'); return [i.naturalWidth, i.naturalHeight];"
    )
    assert (width, height) == (160, 120)
    timing = text(browser, "#stylize-timing")
    assert "infer" in timing and "Round trip" in timing
    download = q(browser, "#stylize-download")
    assert download.get_attribute("href").startswith("blob:")
    assert download.get_attribute("download") == "atelier-starry_night.jpg"
    assert console_errors(browser) == []


def test_a_photo_larger_than_stylize_answers_is_painted_by_a_job_and_shown(
    browser, live_server, worker, settings, shots, images
):
    """The live server runs with the default sizes, as the session's settings have them."""
    open_page(browser, live_server, "stylize")
    wait_for(browser, "!document.querySelector('#stylize-size-hint').hidden")
    assert q(browser, "#stylize-size").get_attribute("max") == str(settings.stylize_job_max_size)
    assert text(browser, "#stylize-size-now") == str(settings.stylize_max_size)
    wait_for(browser, "document.querySelectorAll('#style-gallery input[type=radio]').length > 0")
    q(browser, "#stylize-file").send_keys(str(images["photo"]))
    wait_for(browser, image_loaded("#stylize-photo"))
    size = q(browser, "#stylize-size")
    size.clear()
    size.send_keys(str(settings.stylize_max_size + 100))
    q(browser, "#stylize-submit").click()
    wait_for(browser, "!document.querySelector('#stylize-job-view').hidden", 30, "no job was shown")
    shots("job")
    wait_for(
        browser, "document.querySelector('#stylize-job-state').textContent === 'finished'", 180, "no end"
    )
    wait_for(browser, image_loaded("#stylize-result"), 60, "the job's result was not shown")
    shots("finished")
    width, height = browser.execute_script(
        "const i = document.querySelector('#stylize-result'); return [i.naturalWidth, i.naturalHeight];"
    )
    longest = settings.stylize_max_size + 100
    assert (width, height) == (longest, longest * 3 // 4)
    assert "by a queue worker" in text(browser, "#stylize-timing")
    download = q(browser, "#stylize-download")
    assert download.get_attribute("download").endswith(".jpg") and not download.get_attribute("hidden")
    assert console_errors(browser) == []


def test_invalid_upload_shows_the_problem_in_plain_words(browser, live_server, shots, images):
    open_page(browser, live_server, "stylize")
    q(browser, "#stylize-submit").click()
    wait_for(browser, "!document.querySelector('#stylize-error').hidden")
    assert "Choose, drop or snap a photo first." in text(browser, "#stylize-error")
    shots("nothing-chosen")
    q(browser, "#stylize-file").send_keys(str(images["not_an_image"]))
    q(browser, "#stylize-submit").click()
    wait_for(browser, "document.querySelector('#stylize-error').textContent.includes('Unsupported')")
    shots("problem-shown")
    error = text(browser, "#stylize-error")
    assert "Unsupported media type" in error
    assert "'file' is not a recognised image" in error
    assert "About: Photo" in error
    assert re.search(r"Reference for a report: [0-9a-f]{32}", error), error  # the X-Request-ID
    assert q(browser, "#stylize-file").get_attribute("aria-invalid") == "true"
    assert q(browser, "#stylize-error").get_attribute("role") == "alert"
    expected = [m for m in console_errors(browser) if "status of 415" not in m]
    assert expected == []


def test_classify_several_images_shows_bars_per_image(browser, live_server, shots, images):
    open_page(browser, live_server, "classify")
    q(browser, "#classify-files").send_keys(f"{images['photo']}\n{images['photo2']}")
    top_k = q(browser, "#classify-top-k")
    top_k.clear()
    top_k.send_keys("4")
    shots("chosen")
    q(browser, "#classify-submit").click()
    wait_for(browser, "document.querySelectorAll('#classify-results > li').length === 2")
    shots("bars")
    cards = browser.execute_script(
        """return [...document.querySelectorAll('#classify-results > li')].map((card) => ({
             name: card.querySelector('h3').textContent,
             rows: [...card.querySelectorAll('.bar-row')].map((row) => ({
               label: row.querySelector('.label').textContent,
               value: row.querySelector('.value').textContent,
               width: row.querySelector('.bar span').getBoundingClientRect().width,
             })),
           }));"""
    )
    assert [c["name"] for c in cards] == ["photo.png", "second.jpg"]
    for card in cards:
        assert len(card["rows"]) == 4
        values = [float(r["value"].rstrip("%")) for r in card["rows"]]
        assert values == sorted(values, reverse=True) and 0 < sum(values) <= 100.01
        assert all(re.fullmatch(r"\d+\.\d%", r["value"]) for r in card["rows"])
        assert card["rows"][0]["width"] > card["rows"][-1]["width"] > 0
    assert "Done in" in text(browser, "#classify-status")
    assert console_errors(browser) == []


def fill_gatys_form(browser, images: dict[str, Path], steps: int) -> None:
    """The Gatys tab's form: the test photo and painting, 48 px, ``steps`` steps."""
    q(browser, "#job-content").send_keys(str(images["photo"]))
    q(browser, "#job-style").send_keys(str(images["painting"]))
    for css, value in (("#job-size", "48"), ("#job-steps", str(steps))):
        field = q(browser, css)
        field.clear()
        field.send_keys(value)


def test_gatys_job_runs_live_to_100_percent_and_survives_a_reload(
    browser, live_server, worker, shots, images
):
    open_page(browser, live_server, "jobs")
    fill_gatys_form(browser, images, steps=6)
    shots("form")
    q(browser, "#job-submit").click()
    wait_for(browser, "!document.querySelector('#job-view').hidden")
    shots("submitted")
    assert "server-sent events" in text(browser, "#job-transport")
    wait_for(browser, "document.querySelector('#server-status').textContent.includes('1 job worker')")
    wait_for(browser, "document.querySelector('#job-state').textContent === 'finished'", 120)
    wait_for(browser, image_loaded("#job-result"), 30, "the job's result was not shown")
    shots("finished")
    assert browser.execute_script("return document.querySelector('#job-progress').value") == 100
    assert text(browser, "#job-percent") == "100%"
    assert text(browser, "#job-step") == "step 6 of 6"
    assert q(browser, "#job-chart").get_attribute("aria-label").startswith("Losses at step 6")
    assert q(browser, "#job-download").get_attribute("href").startswith("blob:")
    assert q(browser, "#job-preview-box").get_attribute("hidden")  # the result replaces the preview
    job_id = q(browser, "#job-id").get_attribute("title")

    browser.refresh()
    wait_for(browser, "document.body.dataset.ready === 'true'")
    wait_for(browser, image_loaded("#job-result"), 30, "the job was not shown again after a reload")
    shots("after-reload")
    assert q(browser, "#job-id").get_attribute("title") == job_id
    assert job_id[:8] in text(browser, "#recent-jobs")
    assert text(browser, "#job-state") == "finished"
    assert q(browser, "#job-chart").get_attribute("aria-label").startswith("Losses at step 6")
    assert console_errors(browser) == []


def test_a_job_queued_by_a_script_is_listed_and_can_be_deleted_from_the_page(
    browser, live_server, shots, images
):
    """GET /jobs: the list is the server's, so another browser's or a script's job is there too; an
    ended one can be deleted with everything it stored."""
    files = [
        ("content", ("photo.png", images["photo"].read_bytes(), "image/png")),
        ("style", ("painting.png", images["painting"].read_bytes(), "image/png")),
    ]
    answer = httpx.post(f"{live_server.url}/jobs/optimize", files=files, data={"size": "32"}, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    short = job_id[:8]
    assert httpx.delete(f"{live_server.url}/jobs/{job_id}", timeout=10).status_code == 200
    deadline = time.monotonic() + 60  # queued: canceled at once; picked up by a worker: at its next step
    while httpx.get(f"{live_server.url}/jobs/{job_id}", timeout=10).json()["state"] != "canceled":
        assert time.monotonic() < deadline, "the job was not canceled"
        time.sleep(0.2)
    open_page(browser, live_server, "jobs")
    wait_for(browser, f"document.querySelector('#recent-jobs').textContent.includes('{short}')", 30)
    shots("listed")
    assert "any browser or script" in text(browser, "#recent-note")
    assert not browser.find_elements("css selector", f"#recent-jobs button[aria-label='Forget job {short}']")
    q(browser, f"#recent-jobs button[aria-label='Delete job {short}']").click()
    shots("asked")
    q(browser, f"#recent-jobs button[data-confirm-delete='{job_id}']").click()
    wait_for(browser, f"!document.querySelector('#recent-jobs').textContent.includes('{short}')", 30)
    shots("deleted")
    assert "everything it stored were deleted" in text(browser, "#job-status")
    assert httpx.get(f"{live_server.url}/jobs/{job_id}", timeout=10).status_code == 404
    assert console_errors(browser) == []


def test_a_submission_whose_answer_was_lost_gets_its_job_back(browser, live_server, worker, shots, images):
    """The first POST reaches the server but its answer is lost; clicking again shows that same job."""
    open_page(browser, live_server, "jobs")
    browser.execute_script(
        """
        const realFetch = window.fetch;
        window.fetch = async (...args) => {
          const response = await realFetch(...args);
          if (args[0] === '/jobs/optimize' && !window.lostJob) {
            window.lostJob = (await response.json()).id;  // queued on the server, never seen by the page
            throw new TypeError('Failed to fetch');
          }
          return response;
        };
        """
    )
    fill_gatys_form(browser, images, steps=2)
    q(browser, "#job-submit").click()
    wait_for(browser, "document.querySelector('#job-error').textContent.includes('Cannot reach the server')")
    shots("answer-lost")
    q(browser, "#job-submit").click()
    wait_for(browser, "document.querySelector('#job-id').title === window.lostJob", 30)
    shots("same-job")
    assert console_errors(browser) == []


def test_a_running_job_can_be_canceled_from_the_page(browser, live_server, worker, shots, images):
    open_page(browser, live_server, "jobs")
    fill_gatys_form(browser, images, steps=2000)
    shown_before = q(browser, "#job-id").get_attribute("title")  # the last job is shown at load
    q(browser, "#job-submit").click()
    wait_for(browser, f"document.querySelector('#job-id').title !== '{shown_before}'")
    wait_for(
        browser,
        "document.querySelector('#job-state').textContent === 'started'"
        " && document.querySelector('#job-progress').value > 0",
        120,
        "no progress of the running job reached the page",
    )
    wait_for(browser, image_loaded("#job-preview"), 30, "no preview of the running job was shown")
    shots("running")
    assert text(browser, "#job-preview-caption").startswith("As it stands: step ")
    assert q(browser, "#job-preview-download").get_attribute("hidden")  # offered once it has stopped
    q(browser, "#job-cancel").click()
    wait_for(browser, "document.querySelector('#job-state').textContent === 'canceled'", 60)
    wait_for(
        browser, "!document.querySelector('#job-preview-download').hidden", 30, "no download of the preview"
    )
    shots("canceled")
    assert "canceled before it finished" in text(browser, "#job-failure")
    assert browser.execute_script("return document.querySelector('#job-progress').value") < 100
    assert text(browser, "#job-preview-caption").startswith("Where it got to: step ")
    assert q(browser, "#job-preview-download").get_attribute("href").startswith("blob:")
    assert console_errors(browser) == []


def test_live_webcam_frames_come_back_stylized(browser, live_server, shots):
    open_page(browser, live_server, "live")
    q(browser, "#live-start").click()
    frames_back = "Number(document.querySelector('#live-frames').textContent)"
    wait_for(browser, f"{frames_back} >= 5", 90, "no frames came back")
    shots("streaming")
    fps = float(text(browser, "#live-fps"))
    assert fps > 0
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", text(browser, "#live-latency"))
    size, spread = browser.execute_script(
        """const c = document.querySelector('#live-canvas');
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let lo = 255, hi = 0;
           for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
           return [[c.width, c.height], hi - lo];"""
    )
    assert max(size) == 256 and spread > 30  # a painted 256 px frame, not a blank canvas
    q(browser, "#live-stop").click()
    wait_for(browser, "document.querySelector('#live-status').textContent === 'Stopped.'")
    shots("stopped")
    assert console_errors(browser) == []


def test_tabs_work_with_the_keyboard_and_the_layout_fits_a_phone(browser, live_server, shots):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, live_server, "stylize")
    q(browser, "#tab-stylize").send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, "!document.querySelector('#panel-video').hidden")
    assert browser.switch_to.active_element.get_attribute("id") == "tab-video"
    assert q(browser, "#tab-video").get_attribute("aria-selected") == "true"
    q(browser, "#tab-video").send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, "!document.querySelector('#panel-styles').hidden")
    q(browser, "#tab-styles").send_keys(Keys.END)
    wait_for(browser, "!document.querySelector('#panel-live').hidden")
    q(browser, "#tab-live").send_keys(Keys.ARROW_RIGHT)  # wraps around
    wait_for(browser, "!document.querySelector('#panel-stylize').hidden")
    assert browser.switch_to.active_element.get_attribute("id") == "tab-stylize"
    unlabeled = browser.execute_script(
        """return [...document.querySelectorAll('input, select')]
             .filter((e) => e.type !== 'radio' && !e.labels?.length && !e.getAttribute('aria-label'))
             .map((e) => e.id);"""
    )
    assert unlabeled == []

    size = browser.get_window_size()
    try:
        browser.set_window_size(390, 844)
        for tab in ("stylize", "video", "styles", "jobs", "classify", "live"):
            open_page(browser, live_server, tab)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{tab} scrolls sideways by {overflow}px at phone width"
            shots(f"phone-{tab}")
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_the_page_made_no_request_to_another_origin(browser, live_server):
    open_page(browser, live_server, "stylize")
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin);"
    )
    assert origins and set(origins) == {live_server.url}


def test_the_page_asks_for_an_api_key_keeps_it_and_sends_it(browser, settings, tmp_path, shots, images):
    """Against the API with ATELIER_API_KEYS on (tests/keyed_api.py): the dialog, the key remembered,
    and the live view, whose WebSocket carries the key as a subprotocol."""
    key = f"key-{uuid.uuid4().hex}"
    server = LiveServer(
        settings, tmp_path / "keyed.log", factory="tests.keyed_api:create_keyed_app", ATELIER_TEST_API_KEY=key
    )
    dialog_open = "document.querySelector('#key-dialog').open"
    try:
        browser.get("about:blank")
        browser.get(f"{server.url}/#stylize")
        wait_for(browser, dialog_open, 30, "no API key dialog")
        shots("asked")
        assert "Send a valid API key" in text(browser, "#key-dialog-reason")
        q(browser, "#key-input").send_keys("wrong-key")
        q(browser, "#key-form button[value=save]").click()
        wait_for(
            browser,
            f"{dialog_open} && "
            "document.querySelector('#key-dialog-reason').textContent.includes('not accepted')",
        )
        shots("refused")
        q(browser, "#key-input").send_keys(key)
        q(browser, "#key-form button[value=save]").click()
        wait_for(browser, "document.body.dataset.ready === 'true'", 30)
        assert "The Starry Night" in text(browser, "#style-gallery")
        assert browser.execute_script("return localStorage.getItem('atelier.apiKey')") == key

        q(browser, "#stylize-file").send_keys(str(images["photo"]))
        size = q(browser, "#stylize-size")
        size.clear()
        size.send_keys("96")
        q(browser, "#stylize-submit").click()
        wait_for(browser, image_loaded("#stylize-result"), 60, "no result with the key")
        shots("stylized-with-key")

        browser.refresh()  # the key is remembered: no dialog this time
        wait_for(browser, "document.body.dataset.ready === 'true'", 30)
        assert not browser.execute_script(f"return {dialog_open}")
        assert not q(browser, "#api-key-button").get_attribute("hidden")
        unexpected = [m for m in console_errors(browser) if "status of 401" not in m]
        assert unexpected == []

        q(browser, "#tab-live").click()
        q(browser, "#live-start").click()
        frames_back = "Number(document.querySelector('#live-frames').textContent)"
        wait_for(browser, f"{frames_back} >= 2", 90, "no frames came back over the keyed WebSocket")
        shots("live-with-key")
        q(browser, "#live-stop").click()
    finally:
        server.stop()


# --- video jobs -------------------------------------------------------------------------------------


def video_loaded(css: str, width: int) -> str:
    """A JavaScript expression: the <video> at ``css`` has its metadata and is ``width`` px wide."""
    return (
        f"(() => {{ const v = document.querySelector('{css}');"
        f" return !!v && v.tagName === 'VIDEO' && v.readyState >= 1 && v.videoWidth === {width}; }})()"
    )


def test_stylize_a_video_follow_it_and_play_the_result(browser, live_server, worker, shots, clips):
    open_page(browser, live_server, "video")
    assert not q(browser, "#tab-video").get_attribute("hidden")
    assert q(browser, "#tab-video").get_attribute("aria-selected") == "true"
    wait_for(browser, "document.querySelectorAll('#video-gallery input[type=radio]').length > 0")
    assert "The Great Wave off Kanagawa" in text(browser, "#video-gallery")
    q(browser, "#video-file").send_keys(str(clips["mp4"]))
    wait_for(browser, video_loaded("#video-source-media", 64), 30, "the chosen clip was not previewed")
    choose_style(browser, "#video-gallery", "great_wave")
    size = q(browser, "#video-size")
    size.send_keys("64")
    shots("form")
    # Every line of progress the page shows, as it changes, with the job it is about (the page may
    # still be showing the last video job of an earlier test).
    browser.execute_script(
        """const detail = document.querySelector('#video-job-detail');
           const id = document.querySelector('#video-job-id');
           window.seenProgress = [];
           new MutationObserver(() => window.seenProgress.push([id.title, detail.textContent]))
             .observe(detail, { childList: true, characterData: true, subtree: true });"""
    )
    q(browser, "#video-submit").click()
    wait_for(browser, "!document.querySelector('#video-job-view').hidden")
    assert "server-sent events" in text(browser, "#video-job-transport")
    wait_for(browser, "document.querySelector('#video-job-state').textContent === 'finished'", 120)
    wait_for(browser, video_loaded("#video-result", 64), 30, "the stylized video was not shown")
    shots("finished")
    job_id = q(browser, "#video-job-id").get_attribute("title")
    seen = [line for shown, line in browser.execute_script("return window.seenProgress") if shown == job_id]
    # The 202's status, shown at once, with its place in the queue.
    assert re.fullmatch(r"8 frames, waiting for a worker · (next to start|\d+ jobs? ahead)", seen[0]), seen
    assert re.fullmatch(r"8 of 8 frames · \d+(\.\d+)? frames/s", seen[-1]), seen
    done = [int(m[1]) for line in seen if (m := re.match(r"(\d+) of 8 frames", line))]
    assert done == sorted(done) and done[-1] == 8, seen
    assert browser.execute_script("return document.querySelector('#video-job-progress').value") == 100
    assert text(browser, "#video-job-percent") == "100%"
    assert q(browser, "#video-job-cancel").get_attribute("hidden")
    assert text(browser, "#video-result-info").startswith("8 frames · 64×48 · ")
    download = q(browser, "#video-download")
    assert download.get_attribute("href").startswith("blob:")
    assert re.fullmatch(r"atelier-great_wave-[0-9a-f]{8}\.mp4", download.get_attribute("download"))
    assert browser.execute_script("return document.querySelector('#video-result').controls") is True
    assert console_errors(browser) == []


def test_a_running_video_job_shows_its_newest_frame_and_keeps_the_last_when_canceled(
    browser, live_server, worker, shots, tmp_path
):
    long_clip = tmp_path / "long.mp4"
    long_clip.write_bytes(make_clip(frames=480, width=96, height=64, fps=24, audio=False))
    open_page(browser, live_server, "video")
    wait_for(browser, "document.querySelectorAll('#video-gallery input[type=radio]').length > 0")
    q(browser, "#video-file").send_keys(str(long_clip))
    choose_style(browser, "#video-gallery", "great_wave")
    q(browser, "#video-size").send_keys("256")
    shown_before = q(browser, "#video-job-id").get_attribute("title")  # the last job is shown at load
    q(browser, "#video-submit").click()
    wait_for(browser, f"document.querySelector('#video-job-id').title !== '{shown_before}'")
    wait_for(browser, image_loaded("#video-job-preview"), 60, "no frame of the running video job was shown")
    shots("running")
    assert re.fullmatch(r"The newest frame: \d+ of 480 done", text(browser, "#video-job-preview-caption"))
    preview = browser.execute_script("return document.querySelector('#video-job-preview').naturalWidth")
    assert preview == 256  # the output frame itself
    q(browser, "#video-job-cancel").click()
    wait_for(browser, "document.querySelector('#video-job-state').textContent === 'canceled'", 60)
    wait_for(browser, "!document.querySelector('#video-job-preview-download').hidden", 30, "no download")
    shots("canceled")
    assert re.fullmatch(r"The last frame it made: \d+ of 480", text(browser, "#video-job-preview-caption"))
    # The tab's list of videos (GET /jobs) has it, ended, so it can be deleted with what it stored.
    job_id = q(browser, "#video-job-id").get_attribute("title")
    short = job_id[:8]
    row = f"#video-jobs button[aria-label='Delete job {short}']"
    wait_for(browser, f'!!document.querySelector("{row}")', 30, "the video is not in the list")
    assert "480 frames · great_wave · canceled" in text(browser, "#video-jobs")
    q(browser, row).click()
    q(browser, f"#video-jobs button[data-confirm-delete='{job_id}']").click()
    wait_for(browser, f"!document.querySelector('#video-jobs').textContent.includes('{short}')", 30)
    shots("deleted")
    assert "everything it stored were deleted" in text(browser, "#video-status")
    assert q(browser, "#video-job-view").get_attribute("hidden")  # the job on display was the one deleted
    assert httpx.get(f"{live_server.url}/jobs/{job_id}", timeout=10).status_code == 404
    assert console_errors(browser) == []


def test_a_gif_comes_back_as_a_gif_and_the_job_survives_a_reload(browser, live_server, worker, shots, clips):
    open_page(browser, live_server, "video")
    wait_for(browser, "document.querySelectorAll('#video-gallery input[type=radio]').length > 0")
    q(browser, "#video-file").send_keys(str(clips["gif"]))
    wait_for(browser, image_loaded("#video-source-media"), 30, "the chosen GIF was not previewed")
    q(browser, "#video-submit").click()  # the first style, the GIF's own size, format auto
    wait_for(browser, "document.querySelector('#video-job-state').textContent === 'finished'", 120)
    wait_for(browser, image_loaded("#video-result"), 30, "the stylized GIF was not shown")
    shots("gif-finished")
    shown = browser.execute_script(
        "const i = document.querySelector('#video-result');"
        " return [i.tagName, i.naturalWidth, i.naturalHeight];"
    )
    assert shown == ["IMG", 48, 32]
    assert q(browser, "#video-download").get_attribute("download").endswith(".gif")
    job_id = q(browser, "#video-job-id").get_attribute("title")

    browser.refresh()
    wait_for(browser, "document.body.dataset.ready === 'true'")
    wait_for(browser, image_loaded("#video-result"), 30, "the video job was not shown again after a reload")
    shots("gif-after-reload")
    assert q(browser, "#video-job-id").get_attribute("title") == job_id
    assert text(browser, "#video-job-state") == "finished"
    assert console_errors(browser) == []


def test_a_file_that_is_not_a_video_is_named_as_the_problem(browser, live_server, shots, clips):
    open_page(browser, live_server, "video")
    shown_before = q(browser, "#video-job-id").get_attribute("title")  # the last job is shown at load
    q(browser, "#video-submit").click()
    wait_for(browser, "!document.querySelector('#video-error').hidden")
    assert "Choose or drop a video first." in text(browser, "#video-error")
    q(browser, "#video-file").send_keys(str(clips["text"]))
    q(browser, "#video-submit").click()
    wait_for(browser, "document.querySelector('#video-error').textContent.includes('not a video')", 30)
    shots("not-a-video")
    error = text(browser, "#video-error")
    assert "Unsupported media type" in error
    assert "'file' is not a video" in error
    assert "About: Video" in error
    assert q(browser, "#video-file").get_attribute("aria-invalid") == "true"
    assert q(browser, "#video-error").get_attribute("role") == "alert"
    assert q(browser, "#video-job-id").get_attribute("title") == shown_before  # nothing was queued
    assert text(browser, "#video-status") == ""
    # Choosing another file clears the mark.
    q(browser, "#video-file").send_keys(str(clips["mp4"]))
    wait_for(browser, "document.querySelector('#video-error').hidden")
    assert q(browser, "#video-file").get_attribute("aria-invalid") is None
    expected = [m for m in console_errors(browser) if "status of 415" not in m]
    assert expected == []


def test_a_result_video_shows_its_colours_in_the_browser(browser, tmp_path):
    """Chromium guesses an untagged clip's YUV matrix from its size (a portrait 720 px clip: BT.709);
    the pipeline tags what it writes, so the browser shows the frames' colours as they were made."""
    import base64

    import numpy as np

    from models.video import RenderOptions, render_stylized_video

    width, height = 208, 720  # a phone's portrait clip at the default video size
    src, dst = tmp_path / "bars.mp4", tmp_path / "out.mp4"
    make_lossless_clip(src, bars_frame(width, height), frames=4)
    render_stylized_video(src, dst, lambda frames: frames, RenderOptions(width, height, smoothing=0.0))
    browser.get("about:blank")
    shown = browser.execute_async_script(
        """
        const [url, done] = arguments;
        const v = document.createElement('video');
        v.muted = true;
        v.onerror = () => done('cannot play: ' + (v.error && v.error.message));
        v.onloadeddata = () => { v.currentTime = 0.1; };
        // A loaded machine may not have the seeked frame decoded when 'seeked' fires: the canvas then
        // reads black, so read again for a while (bars are never black; a black result still fails).
        const read = (tries) => {
          const c = document.createElement('canvas');
          [c.width, c.height] = [v.videoWidth, v.videoHeight];
          const g = c.getContext('2d');
          g.drawImage(v, 0, 0);
          const at = (i) => g.getImageData((i + 0.5) * c.width / 4, c.height / 2, 1, 1).data;
          const pixels = [0, 1, 2, 3].map((i) => [...at(i)].slice(0, 3));
          if (pixels.flat().every((x) => x === 0) && tries > 0) setTimeout(() => read(tries - 1), 100);
          else done(pixels);
        };
        v.onseeked = () => read(50);
        v.src = url;
        """,
        "data:video/mp4;base64," + base64.b64encode(dst.read_bytes()).decode(),
    )
    assert isinstance(shown, list), shown
    assert np.abs(np.array(shown) - COLOUR_BARS.astype(int)).max() <= 6, shown


# --- custom styles ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def style_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The API and a worker on a tiny stand-in network and six synthetic photos, as in
    tests/test_custom_styles_api.py, so that learning a style at 64 px takes seconds."""
    import torch

    from models.style_objective import StyleObjective
    from models.styles import publish, styles_dir
    from models.transformer import build, save_transformer
    from tests.test_custom_styles_api import BUILTIN, style_settings, worker_env

    root = tmp_path_factory.mktemp("web-styles")
    weights, data, paintings = root / "weights", root / "data", root / "paintings"
    for folder in (data / "photos", paintings):
        folder.mkdir(parents=True)
    torch.manual_seed(0)
    meta = {"atelier.styles": json.dumps(list(BUILTIN)), "atelier.objective": StyleObjective().to_json()}
    save_transformer(styles_dir(weights) / "multistyle.safetensors", build("fast", num_styles=2), meta)
    stripes(96, 96).save(paintings / "starry_night.jpg")
    publish(weights, "multistyle.safetensors", paintings, dict.fromkeys(BUILTIN, "experimental"))
    for i in range(6):
        photo_like(96, 72, seed=i).save(data / "photos" / f"photo_{i}.jpg", quality=92)

    settings = style_settings(redis_url, "web-styles", weights, data, custom_style_poll_s=0.3)
    env = worker_env(settings, init="nearest")
    worker = WorkerProcess(settings, extra_env=env)
    server = LiveServer(
        settings,
        root / "uvicorn.log",
        **env,
        ATELIER_CUSTOM_STYLE_POLL_S="0.3",
        ATELIER_CUSTOM_STYLE_DEFAULT_ITERATIONS="3",
        ATELIER_MAX_CUSTOM_STYLES="3",
    )
    yield server
    server.stop()
    worker.stop()
    _purge(settings)


def test_learn_a_style_from_a_painting_use_it_and_delete_it(browser, style_server, shots, images):
    open_page(browser, style_server, "styles")
    assert q(browser, "#tab-styles").get_attribute("aria-selected") == "true"
    assert "None yet" in text(browser, "#custom-styles")
    q(browser, "#new-style-image").send_keys(str(images["painting"]))
    wait_for(browser, image_loaded("#new-style-preview"))
    q(browser, "#new-style-title").send_keys("Starry Night")
    assert q(browser, "#new-style-name").get_attribute("value") == "starry_night"  # made from the title
    q(browser, "#new-style-submit").click()
    wait_for(browser, "document.querySelector('#new-style-error').textContent.includes('in use')", 30)
    shots("name-taken")
    error = text(browser, "#new-style-error")
    assert "The style name 'starry_night' is already in use." in error and "About: Short name" in error
    assert q(browser, "#new-style-name").get_attribute("aria-invalid") == "true"

    title, name = q(browser, "#new-style-title"), q(browser, "#new-style-name")
    title.clear()
    title.send_keys("Stripes in Blue")
    assert name.get_attribute("value") == "stripes_in_blue"
    assert name.get_attribute("aria-invalid") is None  # typing cleared the mark
    q(browser, "#new-style-artist").send_keys("A. Test")
    q(browser, "#panel-styles details summary").click()
    q(browser, "#new-style-iterations").send_keys("4")
    shots("form")
    q(browser, "#new-style-submit").click()
    wait_for(browser, "!document.querySelector('#style-job-view').hidden")
    assert "Learning “Stripes in Blue”" in text(browser, "#style-job-title")
    wait_for(browser, "document.querySelector('#style-job-state').textContent === 'finished'", 120)
    # Without a reload: the new style is listed here and in every gallery.
    wait_for(browser, "!!document.querySelector('#custom-styles li[data-style=stripes_in_blue]')", 30)
    wait_for(browser, "!!document.querySelector('#style-gallery input[value=stripes_in_blue]')")
    wait_for(browser, image_loaded("#style-job-result"), 30, "no preview of the new style")
    wait_for(browser, image_loaded("#custom-styles li[data-style=stripes_in_blue] img"), 30, "no thumbnail")
    shots("learned")
    assert text(browser, "#style-job-detail") == "iteration 4 of 4"
    assert q(browser, "#style-job-preview-box").get_attribute("hidden")  # the result replaces the preview
    assert text(browser, "#style-job-percent") == "100%"
    assert q(browser, "#style-job-chart").get_attribute("aria-label").startswith("Losses at step 4")
    item = text(browser, "#custom-styles li[data-style=stripes_in_blue]")
    assert "Stripes in Blue" in item and "custom" in item and "by A. Test" in item
    assert "Stripes in Blue" in text(browser, "#style-gallery")
    assert browser.execute_script(
        "return !!document.querySelector('#video-gallery input[value=stripes_in_blue]')"
        " && !!document.querySelector('#live-style option[value=stripes_in_blue]')"
    )

    q(browser, "#style-job-use").click()  # to the photo tab, with the new style chosen
    wait_for(browser, "!document.querySelector('#panel-stylize').hidden")
    assert browser.execute_script("return document.querySelector('#style-gallery input:checked').value") == (
        "stripes_in_blue"
    )
    q(browser, "#stylize-file").send_keys(str(images["photo"]))
    size = q(browser, "#stylize-size")
    size.clear()
    size.send_keys("96")
    q(browser, "#stylize-submit").click()
    wait_for(browser, image_loaded("#stylize-result"), 60, "the new style did not paint the photo")
    shots("used")
    assert q(browser, "#stylize-download").get_attribute("download") == "atelier-stripes_in_blue.jpg"

    q(browser, "#tab-styles").click()
    q(browser, "#custom-styles [data-delete=stripes_in_blue]").click()
    confirm = q(browser, "#custom-styles [data-confirm-delete=stripes_in_blue]")
    assert "for good?" in text(browser, "#custom-styles li[data-style=stripes_in_blue]")
    shots("confirm-delete")
    confirm.click()
    wait_for(browser, "!document.querySelector('#custom-styles li[data-style=stripes_in_blue]')", 30)
    shots("deleted")
    assert "None yet" in text(browser, "#custom-styles")
    assert "deleted" in text(browser, "#custom-styles-status")
    assert "Stripes in Blue" not in text(browser, "#style-gallery")
    assert httpx.get(f"{style_server.url}/styles/stripes_in_blue/thumbnail", timeout=10).status_code == 404
    expected = [m for m in console_errors(browser) if "status of 409" not in m]
    assert expected == []
