"""The web app in a real browser: `run_app` serves the page on 127.0.0.1 with the tiny model, headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium; nothing downloads a browser) uploads a real chorale,
asks for 2 bars and checks the piano roll, the audio player and the MIDI download; then broken uploads.

Run by hand, it saves screenshots under outputs/browser/ (not under CI=true).
"""

import os
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import symusic

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[app,dev]')")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from hf_music_xl.app import AppSettings, run_app  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "outputs" / "browser"
WAIT_S = 120  # an upper bound for a slow, shared machine; every wait ends as soon as its condition holds

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        f"no browser: {CHROMIUM} and {CHROMEDRIVER} come from Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_model_dir, tmp_path_factory):
    port = free_port()
    page = run_app(
        AppSettings(str(tiny_model_dir), port=port, output_dir=str(tmp_path_factory.mktemp("app_out"))), block=False
    )
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    if not os.environ.get("CI"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def open_page(driver, url: str):
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(EC.element_to_be_clickable((By.ID, "generate")))


def upload(driver, path: Path) -> None:
    """Put a file in the prompt's file input and wait until the page lists it."""
    driver.find_element(By.CSS_SELECTOR, "#prompt input[type=file]").send_keys(str(path))
    WebDriverWait(driver, WAIT_S).until(lambda d: path.stem in d.find_element(By.ID, "prompt").text)


def set_number(driver, element_id: str, value: int) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=number]")
    field.clear()
    field.send_keys(str(value))
    field.send_keys("\t")  # the slider takes the value on change


def status_text(driver, contains: str) -> str:
    WebDriverWait(driver, WAIT_S).until(lambda d: contains in d.find_element(By.ID, "status").text)
    return driver.find_element(By.ID, "status").text


def test_upload_generate_and_get_picture_audio_and_midi(browser, app_url, chorale_midi_files, tmp_path):
    open_page(browser, app_url)
    upload(browser, chorale_midi_files[0])
    set_number(browser, "bars", 2)
    set_number(browser, "prompt-bars", 2)
    browser.find_element(By.ID, "generate").click()
    status = status_text(browser, "Generated")
    # "Generated 2 bars, ..." (or "0 of 2 bars": a random model may never move time forward before its token bound)
    assert re.match(r"Generated (\d of )?2 bars, \d+ new notes after \d+ prompt notes \(seed 0\)", status), status

    picture = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.CSS_SELECTOR, "#piano-roll img"))
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture)
    )
    assert browser.execute_script("return arguments[0].naturalWidth", picture) > 300

    from hf_music_xl.render import find_renderer, find_soundfont

    if find_renderer() and find_soundfont():  # the audio extra (midirenderer + pretty_midi's soundfont)
        wav = WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#audio a[download$='.wav']")
        )
        assert browser.find_element(By.ID, "audio").is_displayed()
        data = urllib.request.urlopen(wav.get_attribute("href"), timeout=60).read()
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 44_100  # over a quarter second of sound

    link = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.CSS_SELECTOR, "#midi a[download$='.mid']"))
    href = link.get_attribute("href")
    assert href.startswith(app_url) and ".mid" in href
    midi = tmp_path / "downloaded.mid"
    midi.write_bytes(urllib.request.urlopen(href, timeout=60).read())
    score = symusic.Score(str(midi))
    prompt_notes = symusic.Score(str(chorale_midi_files[0])).note_num()
    assert 0 < score.note_num() and score.note_num() != prompt_notes  # two bars of prompt plus two new bars
    screenshot(browser, "app-generated")


def test_broken_uploads_give_a_message_and_the_server_goes_on(browser, app_url, tmp_path):
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd but not really a MIDI file")
    too_large = tmp_path / "huge.mid"
    too_large.write_bytes(b"MThd" + b"\0" * 1_500_000)
    for path, message in ((broken, "not a readable MIDI file"), (too_large, "too large")):
        open_page(browser, app_url)
        upload(browser, path)
        browser.find_element(By.ID, "generate").click()
        assert message in status_text(browser, "Error")
        screenshot(browser, f"app-{path.stem}")
    # and the server still generates (from nothing this time)
    open_page(browser, app_url)
    set_number(browser, "bars", 1)
    browser.find_element(By.ID, "generate").click()
    assert re.match(r"Generated (\d of )?1 bar, \d+ new notes \(seed 0\)", status_text(browser, "Generated"))
