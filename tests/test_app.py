"""The chat page (issue #37) in a real browser: `python -m prism_mm.app` on the tiny model on the CPU, driven through
headless Chromium (Debian's chromium + chromium-driver, which scripts/setup.sh installs) by Selenium."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from prism_mm.app.page import stream
from prism_mm.testing.clips import make_demo_video

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

MISSING_MODEL = "prism-mm-tests/no-such-model"  # a hub id: not available offline (tests run with HF_HUB_OFFLINE=1)
WAIT_S = 90  # for one step in the page (the first includes the tiny model's load)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app's URL, serving chat.mp4 and new.mp4 (each one test's alone) and demo.mp4, taking videos up to 10 s,
    uploads up to 1 MB."""
    tmp = tmp_path_factory.mktemp("app")
    clips = [make_demo_video(tmp / "chat.mp4"), make_demo_video(tmp / "demo.mp4"), make_demo_video(tmp / "new.mp4")]
    port = free_port()
    cmd = [sys.executable, "-m", "prism_mm.app", "--model", "tiny-qwen2.5-vl", "--model", MISSING_MODEL,
           "--device", "cpu", "--port", str(port), "--max-seconds", "10", "--max-upload-mb", "1",
           "--video", *map(str, clips)]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "uploads")}
    url = f"http://127.0.0.1:{port}/"
    with open(tmp / "app.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the app exited: {(tmp / 'app.log').read_text()[-3000:]}"
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"the app did not serve in 120 s: {(tmp / 'app.log').read_text()}"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver (scripts/setup.sh "
                    "does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(app, browser):
    """A fresh page (a new browser session of the app: no video chosen)."""
    browser.get(app)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#question textarea"))
    return browser


def wait(browser, condition, what="the page"):
    return WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(condition, f"waiting for {what}")


def text(browser, css: str) -> list[str]:
    """The shown text of each element matching `css`, read at one instant (the page re-renders as answers stream)."""
    return browser.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", css)


def status(browser) -> str:
    return text(browser, "#status")[0]


def choose(browser, dropdown: str, option: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#{dropdown} input").click()
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, f'li[aria-label="{option}"]')).click()


def choose_video(browser, name: str) -> None:
    choose(browser, "video-choice", name)
    wait(browser, lambda b: "is ready" in status(b), f"{name}'s prefix")


def answers(browser) -> list[str]:
    return text(browser, '#chat [data-testid="bot"]')


def ask(browser, question: str) -> str:
    """Type the question, press Enter, and return the answer once its stats line shows it is complete."""
    before = len(answers(browser))
    box = browser.find_element(By.CSS_SELECTOR, "#question textarea")
    box.send_keys(question, Keys.ENTER)
    wait(browser, lambda b: len(answers(b)) > before and "first token" in answers(b)[-1], f"the answer to {question!r}")
    return answers(browser)[-1]


def test_chat_answers_two_questions_reuses_the_prefix_and_survives_a_file_that_is_not_a_video(page, tmp_path):
    choose_video(page, "chat.mp4")
    first, second = ask(page, "What happens?"), ask(page, "What colour is the square?")
    assert "prefix built for this answer" in first and "meaningless" in first
    assert "prefix reused" in second

    not_video = tmp_path / "notes.mp4"
    not_video.write_text("these are notes, not a video\n")
    page.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(not_video))
    wait(page, lambda b: "Error" in status(b), "the upload's message")
    assert "cannot decode notes.mp4: not a video" in status(page)

    third = ask(page, "And then?")
    assert len(answers(page)) == 3 and "prefix reused" in third


def test_a_video_longer_than_the_app_takes_gets_a_message(page, tmp_path):
    long_clip = make_demo_video(tmp_path / "long.mp4", seconds=12, fps=4, height=64, width=64)
    page.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(long_clip))
    wait(page, lambda b: "Error" in status(b), "the upload's message")
    assert "long.mp4 is 12 s long; this app takes videos up to 10 s" in status(page)


def test_an_upload_over_the_size_limit_is_refused(page, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(2_000_000))
    page.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(big))
    wait(page, lambda b: "exceed the maximum allowed size" in b.execute_script("return document.body.innerText"),
         "gradio's message")
    assert 'maximum allowed size of 1.0 Mb: "big.mp4"' in page.execute_script("return document.body.innerText")


def test_compare_answers_the_question_both_ways_side_by_side(page):
    choose_video(page, "demo.mp4")
    page.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("What moves?")
    page.find_element(By.ID, "compare").click()
    wait(page, lambda b: all("first token" in t for t in text(b, "#compare-prism, #compare-dense")), "both answers")
    prism, dense = text(page, "#compare-prism, #compare-dense")
    assert "prism · first token" in prism and "dense · first token" in dense


def test_new_chat_keeps_the_prefix(page):
    choose_video(page, "new.mp4")  # no other test asks about it: its first answer pays for the prefix
    assert "prefix built for this answer" in ask(page, "What happens?")
    page.find_element(By.ID, "new-chat").click()
    wait(page, lambda b: not answers(b), "an empty chat")
    assert "prefix reused" in ask(page, "What happens?")


def test_a_model_that_is_not_available_gets_a_message(page):
    choose_video(page, "demo.mp4")
    choose(page, "model", MISSING_MODEL)
    wait(page, lambda b: "Error" in status(b), "the model's message")
    assert MISSING_MODEL in status(page)


def test_the_server_serves_no_file_but_its_own(app):
    for path in ("/etc/passwd", __file__):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app}gradio_api/file={path}", timeout=10)
        assert refused.value.code in (403, 404)


def test_an_answer_streams_as_its_tokens_come():
    """page.stream: one update per token that comes on its own, then the whole answer with its record."""
    shown = [threading.Event() for _ in range(3)]

    def ask(on_token):  # each token waits until the page has shown the one before
        for i, token in enumerate(b"ABC"):
            on_token(token)
            shown[i].wait(30)
        return SimpleNamespace(answer="ABC")

    session = SimpleNamespace(processor=SimpleNamespace(decode=lambda ids, skip_special_tokens: bytes(ids).decode()))
    updates = []
    for text, record in stream(session, ask):
        updates.append((text, record))
        if len(updates) <= 3:
            shown[len(updates) - 1].set()
    assert [text for text, _ in updates] == ["A", "AB", "ABC", "ABC"]
    assert [record is None for _, record in updates] == [True, True, True, False]
