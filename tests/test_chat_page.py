"""`recipe chat`: the page in a real headless browser, and its user errors.

The browser is Debian's chromium driven through its chromium-driver by selenium. tests/browser/install.sh installs
them when missing (`make test-browser` runs it first, and the `browser` fixture runs it too); when they cannot be
installed the browser tests fail with a message saying so, they never skip.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.evaluate import chat_page, generate
from runner.recipe import loading

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL = Path(__file__).parent / "browser" / "install.sh"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900"]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "chat.png"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium (selenium WebDriver); installs Debian's chromium + chromium-driver when missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        installed = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=1200)
        if installed.returncode != 0 or not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
            pytest.fail(f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium and "
                        f"chromium-driver), and {INSTALL.name} could not install them (exit {installed.returncode}):\n"
                        f"{(installed.stdout + installed.stderr)[-2000:]}\nInstall them as root with `bash "
                        "tests/browser/install.sh` (or apt-get install chromium chromium-driver).", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)  # given paths: no downloads
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 120, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=f"waiting for {what}")


def _value(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


def _open(driver, url: str) -> None:
    """Load the page and wait until it is live (typing before that is lost when the page sets its values)."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: chat_page.READY in "".join(e.text for e in d.find_elements(By.ID, "status")),
          what="the page")


def _ask(driver, prompt: str) -> tuple[str, str]:
    """Press Clear, type a prompt, press Answer, wait for both answers; returns (base, fine-tuned) as shown."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "clear").click()  # no answer or status from an earlier request is left
    _wait(driver, lambda d: not d.find_element(By.ID, "status").text and not _value(d, "base-answer"), what="Clear")
    box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.send_keys(prompt)
    driver.find_element(By.ID, "answer").click()
    _wait(driver, lambda d: "Answered in" in d.find_element(By.ID, "status").text, what="both answers")
    return _value(driver, "base-answer"), _value(driver, "finetuned-answer")


@pytest.fixture
def chat_command(tmp_path):
    """chat_command(*args) -> URL of a `recipe chat *args` subprocess, once it serves; stopped (SIGTERM) after."""
    started = []

    def start(*args: str, timeout: float = 300) -> str:
        log = tmp_path / f"chat-{len(started)}.err"
        process = subprocess.Popen([sys.executable, "-m", "runner", "chat", *args], stdout=subprocess.DEVNULL,
                                   stderr=log.open("w"), text=True)
        started.append((process, log))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            line = next((x for x in log.read_text().splitlines() if x.startswith("chat page: ")), None)
            if line:
                return line.split()[2]
            time.sleep(0.2)
        pytest.fail(f"`recipe chat` did not come up (exit {process.poll()}):\n{log.read_text()[-3000:]}")

    yield start
    for process, log in started:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]  # a clean stop, as on Ctrl-C
        assert log.read_text().rstrip().endswith("chat: stopped")


@pytest.mark.browser
@pytest.mark.model
def test_the_page_answers_as_recipe_generate(browser, chat_command, own_trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    run = own_trained_run
    url = chat_command("tiny-cpu", "--run", run.run_id, "--port", str(_free_port()))
    _open(browser, url)
    assert run.run_id in browser.find_element(By.ID, "header").text
    settings = browser.find_element(By.ID, "settings").text
    assert "greedy decoding" in settings and "'### Instruction:'" in settings  # the alpaca template's stop
    assert _value(browser, "max-new-tokens") == "32"  # tiny-cpu's eval.max_new_tokens
    system = browser.find_element(By.CSS_SELECTOR, "#system textarea")
    assert not system.is_enabled() and "has no system prompt" in browser.find_element(By.ID, "system").text

    prompt = "Give three tips for staying healthy."
    started = time.monotonic()
    base, finetuned = _ask(browser, prompt)
    answered_s = time.monotonic() - started
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, height + 200)  # the whole page, status line included
    browser.save_screenshot(str(tmp_path / "chat.png"))
    if not DOCS_SCREENSHOT.exists():  # the README's picture, made once (delete it to make it again)
        shutil.copy(tmp_path / "chat.png", DOCS_SCREENSHOT)

    expected = generate.generate(run, [prompt])[0]  # what `recipe generate tiny-cpu --run ID` prints
    assert (base, finetuned) == (expected["base"], expected["finetuned"])
    assert base != finetuned  # both columns are filled, each by its own model
    assert answered_s < 60


def _untrained_run(overrides: list[str]):
    """A planned tiny-cpu run (through the real `plan`) with a random, untrained LoRA adapter as its model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.train.plan import plan_run

    run = plan_run(loading.load("tiny-cpu", overrides))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(run.manifest().base_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)  # B != 0
    get_peft_model(model, config).save_pretrained(run.file("model"))
    return run


@pytest.mark.browser
@pytest.mark.model
def test_an_edited_system_prompt_reaches_both_models(browser, project, tiny_model_dir):
    """falcon-instruct renders the system prompt: the page starts with the recipe's, answers with the edited one,
    and refuses a request longer than the model's context while staying up."""
    from selenium.webdriver.common.by import By

    run = _untrained_run(["data.template=falcon-instruct", "data.system=Answer in one word."])
    pair = generate.load_pair(run)
    page = chat_page.build(pair)
    url = chat_page.launch(page, "127.0.0.1", _free_port())  # in this process: the models are loaded once
    try:
        _open(browser, url)
        system = browser.find_element(By.CSS_SELECTOR, "#system textarea")
        assert system.get_attribute("value") == "Answer in one word." and system.is_enabled()
        system.clear()
        system.send_keys("Answer in French.")
        prompt = "What are the three primary colors?"
        expected = pair.answer(prompt, system="Answer in French.")
        assert expected["rendered"].startswith("<s>###Instruction: Answer in French.\n###Question: ")
        assert _ask(browser, prompt) == (expected["base"], expected["finetuned"])
        assert expected != pair.answer(prompt)  # the recipe's own system prompt answers otherwise

        browser.find_element(By.ID, "clear").click()
        browser.find_element(By.ID, "answer").click()  # with no prompt
        _wait(browser, lambda d: "Type a prompt first." in "".join(e.text for e in d.find_elements(By.CSS_SELECTOR,
              ".toast-body")), what="the empty-prompt error")
        limit = browser.find_element(By.CSS_SELECTOR, "#max-new-tokens input")
        limit.clear()
        limit.send_keys("512")  # the tiny model's whole context, so no prompt fits
        browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(prompt)
        browser.find_element(By.ID, "answer").click()
        _wait(browser, lambda d: "over the model's context of 512 tokens" in "".join(
            e.text for e in d.find_elements(By.CSS_SELECTOR, ".toast-body")), what="the too-long error")
        limit.clear()
        limit.send_keys("4")
        assert _ask(browser, prompt) == tuple(pair.answer(prompt, "Answer in French.", 4)[k]
                                              for k in ("base", "finetuned"))  # still serving
    finally:
        page.close()


def test_chat_refuses_a_port_in_use_before_loading_anything(project, run_cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run_cli("chat", "tiny-cpu", "--port", str(port))
    assert code == 2 and out == ""
    assert err == (f"error: 127.0.0.1:{port}: port in use: another program listens there; stop it "
                   "or choose another port with --port\n")


@pytest.mark.model
def test_chat_refuses_a_run_without_a_model(project, run_cli, tiny_model_dir):
    port = str(_free_port())
    code, _, err = run_cli("chat", "tiny-cpu", "--port", port)
    assert code == 2 and "recipe 'tiny-cpu' has no runs yet; run `recipe train tiny-cpu` first" in err
    code, out, _ = run_cli("plan", "tiny-cpu")
    assert code == 0
    run_id = out.split()[1].rstrip(":").split("/")[-1]
    code, _, err = run_cli("chat", "tiny-cpu", "--run", run_id, "--port", port)
    assert code == 2 and err.count("\n") == 1
    assert f"no trained model in runs/tiny-cpu/{run_id}/model (status: planned); train it first" in err
    code, _, err = run_cli("chat", "tiny-cpu", "--host", "no-such-host.invalid")
    assert code == 2 and "--host: cannot resolve 'no-such-host.invalid'" in err
