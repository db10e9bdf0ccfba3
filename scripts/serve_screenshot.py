"""Screenshot of the `smolite serve` page answering a message, as shown in the README.

    python scripts/serve_screenshot.py runs/quickstart docs/serve.png --theme light

Needs Debian's chromium and chromium-driver (scripts/test.sh installs them) and selenium (the `test` extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smolite_hf.chat import load_chat_model  # noqa: E402
from smolite_hf.serving import create_app  # noqa: E402
from tests.serving import running  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("output", type=Path)
    parser.add_argument("--messages", nargs="+", default=["안녕하세요!", "주말에 뭐 하면 좋을까?"])
    parser.add_argument("--theme", choices=["light", "dark"], default="light")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tokenizer = load_chat_model(args.model_dir, device="cpu")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--window-size=820,560", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        with running(create_app(model, tokenizer, name=Path(args.model_dir).name)) as url:
            driver.get(url + "/")
            driver.execute_script(f"localStorage.setItem('smolite-chat-theme', '{args.theme}')")
            driver.refresh()
            for i, message in enumerate(args.messages, start=1):
                box = driver.find_element(By.ID, "input")
                box.send_keys(message)
                box.send_keys(Keys.ENTER)
                WebDriverWait(driver, 120).until(
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant")) == i
                    and not d.find_elements(By.CSS_SELECTOR, ".streaming"))
            args.output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.output))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
