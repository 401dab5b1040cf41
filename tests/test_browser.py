"""The search page in a real headless browser: type a query, see reranked results.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/checks`` installs them where it
can) and selenium; skips with the reason otherwise. The server is the real app on uvicorn
on 127.0.0.1, in a thread of this process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the server extra (fastapi)")
selenium = pytest.importorskip("selenium", reason="needs selenium (requirements-dev.txt)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from test_server import ServerThread  # noqa: E402
from tinyce import random_cross_encoder  # noqa: E402
from twostage.collection import Collection  # noqa: E402
from twostage.config import EngineConfig  # noqa: E402
from twostage.document import Document  # noqa: E402
from twostage.encoder import Encoder  # noqa: E402
from twostage.server import ServerSettings, create_app  # noqa: E402
from twostage.stdlib_docs import stdlib_docs  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("browser")
    with Collection.create(root / "col", Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(60)))
        # A title with markup: the page must show it as text, never run it.
        col.add([Document("xss", "gzip compression of files", title="<img src=x onerror=boom()>")])
    ce = random_cross_encoder(root / "models" / "ce", seed=1)
    settings = ServerSettings(
        collection=root / "col",
        insecure_no_auth=True,
        model_roots=(root / "models",),
        reranker=str(ce),
        reranker_precision="fp32",
        engine=EngineConfig(budget_ms=10_000),
        sanity_check=False,  # a random model (mechanics only)
    )
    with ServerThread(create_app(settings)) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    assert CHROMIUM is not None and DRIVER is not None
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1200,1600")
    # An explicit driver path: selenium's manager would otherwise try to download one.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_type_a_query_and_see_results(
    server: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "documents"))
    assert "61 documents" in browser.find_element(By.ID, "status").text
    box = browser.find_element(By.ID, "q")
    box.send_keys("how do I compress files with gzip")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li.hit")) == 10)
    hits = browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
    assert all(h.find_element(By.CSS_SELECTOR, ".title").text for h in hits)
    assert all(h.get_attribute("data-reranked") == "true" for h in hits)
    assert all(h.find_element(By.CSS_SELECTOR, ".badge").text == "reranked" for h in hits)
    assert all("score " in h.find_element(By.CSS_SELECTOR, ".meta").text for h in hits)
    summary = browser.find_element(By.ID, "summary").text
    assert "reranked by ce@" in summary and "10 hits" in summary
    cells = browser.find_elements(By.CSS_SELECTOR, "#timings td")
    assert [c.get_attribute("data-stage") for c in cells] == [
        "queue",
        "encode",
        "ann",
        "bm25",
        "fetch",
        "rerank",
        "total",
    ]
    assert (
        all(float(c.text) >= 0 for c in cells)
        and browser.find_element(By.ID, "timings").is_displayed()
    )
    # The document whose title is markup shows as text; nothing of it ran.
    titles = wait.until(
        lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, "#results li.hit .title")]
    )
    if "<img src=x onerror=boom()>" in titles:
        assert not browser.find_elements(By.CSS_SELECTOR, "#results img")
    browser.save_screenshot(str(tmp_path / "results.png"))

    # The first stage alone: unticking "rerank" shows first-stage badges, in index order.
    browser.find_element(By.ID, "rerank").click()
    box.send_keys(Keys.ENTER)
    wait.until(
        lambda d: all(
            h.get_attribute("data-reranked") == "false"
            for h in d.find_elements(By.CSS_SELECTOR, "#results li.hit")
        )
    )
    assert "first stage only" in browser.find_element(By.ID, "summary").text

    # The BM25 first stage, chosen on the page: the answer says which first stage made it.
    Select(browser.find_element(By.ID, "first-stage")).select_by_value("bm25")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: "bm25 first stage" in d.find_element(By.ID, "summary").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#results li.hit")


def test_an_error_shows_its_message(server: str, browser: webdriver.Chrome) -> None:
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    k = browser.find_element(By.ID, "k")
    # Past the server's limit (the field's own max is lifted so the request is sent).
    browser.execute_script("arguments[0].removeAttribute('max')", k)
    k.clear()
    k.send_keys("5000")
    box = browser.find_element(By.ID, "q")
    box.send_keys("gzip")
    box.send_keys(Keys.ENTER)
    wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert browser.find_element(By.ID, "error").text.startswith("k_out_of_range: k must be")
