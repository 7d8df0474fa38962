"""The drawing page in a real browser: headless Chromium, driven by Selenium.

Chromium and its driver come from the system's packages (Debian's
`chromium` and `chromium-driver`, which .ci/run installs); nothing is
downloaded. Strokes are drawn on the pad with W3C pointer actions (mouse,
pen and touch), as a person draws, and the page must show the digit the
trained run reads in them; an upload must show what predict reads in the
same file; a bad file, the server's sentence. The screenshot of the page
that docs/serve.png shows is saved where $MNIST_JAX_SCREENSHOT says
(`MNIST_JAX_SCREENSHOT=docs/serve.png python -m pytest -n 0
tests/test_serve_browser.py` makes docs' copy anew), else in the test's
temporary folder.
"""

import os
import pathlib
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_load import DRAWINGS, PAD
from mnist_jax import digits, predict, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page_url(quick_runs):
    """The page of a server reading with the quick CNN run, in a thread."""
    run_dir = quick_runs.get("cnn")["workdir"]
    classifier = predict.Classifier(predict.load_classifier(run_dir))
    server = serve.make_server(classifier, run_dir, port=0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", classifier
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail(
            "the browser test needs Chromium and its driver on PATH: install them with "
            "apt-get install -y chromium chromium-driver (Debian's packages), as .ci/run does"
        )
    options = Options()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=820,720",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def answers(driver) -> int:
    return int(driver.find_element("tag name", "body").get_attribute("data-answers") or 0)


def wait_for_answers(driver, count: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: answers(d) >= count)


def draw(driver, strokes, kind: str) -> None:
    """Each stroke as one pointer down, moves along it, up, of a `kind`
    pointer (mouse, pen, touch); waits for the page's answer to each."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    scale = pad.size["width"] / PAD  # CSS pixels of the pad per pixel of its canvas.
    for stroke in strokes:
        before = answers(driver)
        actions = ActionBuilder(
            driver, mouse=PointerInput(getattr(interaction, f"POINTER_{kind.upper()}"), kind)
        )
        points = [stroke[0]]
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):  # A move every few pixels, as a hand.
            points += [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in np.linspace(0.1, 1, 10)]
        for i, (x, y) in enumerate(points):  # Offsets from the pad's centre.
            actions.pointer_action.move_to(
                pad, round((x - PAD / 2) * scale), round((y - PAD / 2) * scale)
            )
            if i == 0:
                actions.pointer_action.pointer_down()
        actions.pointer_action.pointer_up()
        actions.perform()
        wait_for_answers(driver, before + 1)


def shown(driver) -> tuple[str, str, np.ndarray]:
    """(digit shown, error shown, the 28x28 picture shown) on the page."""
    pixels = driver.execute_script(
        "return Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data);"
    )
    picture = np.array(pixels, np.uint8).reshape(28, 28, 4)[..., 0]
    text = driver.find_element("id", "digit").text
    return text, driver.find_element("id", "error").text, picture


def test_strokes_drawn_with_mouse_pen_and_finger_are_read_as_the_digits(
    page_url, browser, tmp_path
):
    url, _ = page_url
    browser.get(url)
    kinds = ("mouse", "pen", "touch")
    for i, (digit, strokes) in enumerate(DRAWINGS.items()):
        browser.find_element("id", "clear").click()
        draw(browser, strokes, kinds[i % len(kinds)])
        text, error, picture = shown(browser)
        assert (text, error) == (str(digit), ""), f"drew {digit} with a {kinds[i % 3]}"
        assert picture.max() == 255 and picture[0].max() == 0  # A digit, in MNIST's frame.
        bars = browser.find_elements("css selector", "#bars .bar")
        assert len(bars) == 3 and bars[0].text.startswith(str(digit))
    screenshot = pathlib.Path(os.environ.get("MNIST_JAX_SCREENSHOT") or tmp_path / "serve.png")
    assert browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] >= 600
    assert "Read by cnn" in browser.find_element("id", "model").text


def test_an_uploaded_photo_reads_as_predict_reads_the_file(page_url, browser, real_mnist, tmp_path):
    url, classifier = page_url
    browser.get(url)
    picture = real_mnist.test.images[0]  # (28, 28, 1)
    photo = Image.fromarray(255 - picture[..., 0]).resize((140, 140), Image.Resampling.BILINEAR)
    path = tmp_path / "photo.jpg"
    photo.convert("RGB").save(path)
    expected = predict.predict_files(classifier, [path])[0]
    browser.find_element("id", "upload").send_keys(str(path))
    wait_for_answers(browser, 1)
    text, error, shown_picture = shown(browser)
    assert (text, error) == (str(expected["digit"]), "")
    np.testing.assert_array_equal(shown_picture, digits.load_digit(path)[..., 0])


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("notes.txt", b"not a picture", "the body must be an image"),
        ("broken.png", b"\x89PNG\r\n\x1a\nbroken", "not an image Pillow can read"),
        ("blank.png", None, "blank"),
    ],
)
def test_a_bad_upload_shows_the_servers_sentence(page_url, browser, tmp_path, name, content, words):
    url, _ = page_url
    browser.get(url)
    path = tmp_path / name
    if content is None:
        Image.new("L", (100, 100), 255).save(path)
    else:
        path.write_bytes(content)
    browser.find_element("id", "upload").send_keys(str(path))
    wait_for_answers(browser, 1)
    text, error, _ = shown(browser)
    assert text == "" and words in error and "Traceback" not in error
    draw(browser, DRAWINGS[1], "mouse")  # The page and the server go on.
    assert shown(browser)[:2] == ("1", "")
