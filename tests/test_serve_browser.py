"""End to end in headless Chromium: the page served by `smolite serve` streams a reply, keeps the conversation,
switches theme and clears. A screenshot is saved to `$SMOLITE_TEST_ARTIFACTS` (default `test-artifacts/`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from smolite_hf.chat import generate_reply, load_chat_model
from smolite_hf.serving import create_app

from .conftest import REPO
from .serving import running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("SMOLITE_TEST_ARTIFACTS", REPO / "test-artifacts"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them where apt-get can run as root)",
    ),
]


@pytest.fixture(scope="module")
def greedy_server(converted_dir):
    model, tokenizer = load_chat_model(converted_dir, device="cpu")
    model.generation_config.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=25)
    handle = model.get_decoder().register_forward_pre_hook(lambda module, args: __import__("time").sleep(0.03))  # visible streaming
    with running(create_app(model, tokenizer, name="smolite-tiny")) as url:
        yield url, model, tokenizer
    handle.remove()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="smolite-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=900,700", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_streams_a_reply_and_keeps_the_conversation(greedy_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, model, tokenizer = greedy_server
    message = "안녕하세요 반가워요"
    expected = generate_reply(model, tokenizer, [{"role": "user", "content": message}])
    browser.get(url + "/")
    assert "smolite-tiny" in browser.find_element(By.ID, "model").text
    # count the distinct texts the reply bubble shows while it streams
    browser.execute_script("""
        window.seen = new Set();
        new MutationObserver(() => {
            const reply = document.querySelector('.assistant');
            if (reply) window.seen.add(reply.textContent);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    """)
    box = browser.find_element(By.ID, "input")
    box.send_keys(message)
    box.send_keys(Keys.ENTER)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant") and
               not d.find_elements(By.CSS_SELECTOR, ".assistant.streaming"))
    reply = browser.find_element(By.CSS_SELECTOR, ".assistant").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve-chat-page.png"))
    assert reply.strip() == expected
    assert len([t for t in browser.execute_script("return [...window.seen]") if t]) >= 2  # it grew piece by piece
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".user")] == [message]

    # the conversation survives a reload (it lives in the browser) and the theme toggles
    browser.refresh()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant"))
    stored = browser.execute_script("return JSON.parse(localStorage.getItem('smolite-chat-messages'))")
    assert stored == [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
    before = browser.execute_script("return document.documentElement.dataset.theme")
    browser.find_element(By.ID, "theme").click()
    after = browser.execute_script("return document.documentElement.dataset.theme")
    assert {before, after} == {"light", "dark"}
    browser.find_element(By.ID, "clear").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")
    assert browser.execute_script("return localStorage.getItem('smolite-chat-messages')") == "[]"
