"""The web explorer on a small demo world: pages answer the planted questions, the SQL box is
read-only, thumbnails stay inside the image root, bad input is a message (not a 500).

The demo world plants the ground truth: 'red' shapes rise from 10% to 70% over the year (a drift
alert), circles sit on grass far more often than other shapes (a spurious correlation); the
manifest says which image is which.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import lance_concepts as lc  # noqa: E402
from lance_concepts.errors import InputError  # noqa: E402
from lance_concepts.serve.guard import check_read_only, lock_down, run_read_only  # noqa: E402
from lance_concepts.serve.server import PublicBindWarning, check_bind, serve  # noqa: E402
from lance_concepts.serve.thumbnails import ThumbnailCache, UnsafePathError, safe_local_path  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lance_concepts.demo.world import generate_dataset

    root = tmp_path_factory.mktemp("serve-world")
    manifest = generate_dataset(root / "data", n=200, seed=0)
    db = root / "demo.lancedb"
    lc.ingest(str(manifest), str(db), model="demo", vocab="demo", quiet=True)
    with open(manifest) as f:
        truth = {r["id"]: r for r in csv.DictReader(f)}
    return {"db": str(db), "truth": truth, "root": root / "data"}


@pytest.fixture(scope="module")
def server(world):
    s = serve(world["db"], port=0, background=True, warm_thumbnails=False, sql_timeout_s=2)
    yield s
    s.stop()


def get(server, path, **params):
    return httpx.get(server.url + path, params=params, timeout=120)


def ids_on(html: str) -> list[str]:
    return re.findall(r'class="tile" href="/image/[^"]+" data-id="([^"]+)"', html)


def error_on(html: str) -> str | None:
    m = re.search(r'id="error">([^<]*)<', html)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------- browse
def test_filter_by_label_returns_exactly_the_labelled_images(server, world):
    want = {i for i, r in world["truth"].items() if r["label"] == "circle"}
    got = set(ids_on(get(server, "/", where="label = 'circle'", size=200).text))
    assert got == want


def test_paging_covers_every_image_once(server, world):
    seen, page = [], 0
    while True:
        html = get(server, "/", size=48, page=page).text
        seen += ids_on(html)
        if 'id="next"' not in html:
            break
        page += 1
    assert page == 4 and len(seen) == len(set(seen)) == len(world["truth"])


def test_count_endpoint_matches_the_manifest(server, world):
    want = sum(r["label"] == "circle" for r in world["truth"].values())
    assert get(server, "/api/count", where="label = 'circle'").json() == {"count": want}
    assert get(server, "/api/count").json() == {"count": len(world["truth"])}
    assert "closest" in get(server, "/api/count", where="concept('redd') > 0").json()["error"]


def test_sort_by_concept_is_strongest_first_and_finds_red_shapes(server, world):
    html = get(server, "/", sort="red", size=24).text
    weights = [float(w) for w in re.findall(r"· ([0-9.]+)</span>", html)]
    assert weights and weights == sorted(weights, reverse=True)
    top = ids_on(html)[:10]
    assert sum(world["truth"][i]["colour"] == "red" for i in top) >= 9


@pytest.mark.parametrize("where, fragment", [
    ("concept('redd') > 0", "closest in the vocabulary: &#39;red&#39;"),
    ("label = ", "expected a value"),
    ("nosuchcolumn = 1", "nosuchcolumn"),
    ("1; DROP TABLE images", "DROP"),
])
def test_bad_condition_is_a_message_not_a_crash(server, where, fragment):
    r = get(server, "/", where=where)
    assert r.status_code == 400
    assert fragment in (error_on(r.text) or "")


def test_bad_page_and_size_are_messages(server):
    for params in ({"page": "abc"}, {"size": "7"}, {"page": "-1"}):
        r = get(server, "/", **params)
        assert r.status_code == 400 and error_on(r.text), params


def test_concept_autocomplete_lists_vocabulary_names(server):
    names = get(server, "/api/concepts", prefix="gra").json()
    assert names and names[0] == "grass"


# ------------------------------------------------------------------------------------ search/image
def test_text_search_finds_the_described_shape(server, world):
    found = ids_on(get(server, "/search", text="a photo of a red circle", k=10).text)
    assert sum(world["truth"][i]["colour"] == "red" and world["truth"][i]["shape"] == "circle" for i in found) >= 5


def test_more_like_this_keeps_the_filter(server, world):
    found = ids_on(get(server, "/search", like="img00001", where="label = 'heart'", k=10).text)
    assert found and all(world["truth"][i]["label"] == "heart" for i in found)
    assert "img00001" not in ids_on(get(server, "/image/img00001").text)  # not its own neighbour


def test_image_page_shows_metadata_and_strongest_concept(server, world):
    html = get(server, "/image/img00001").text
    assert world["truth"]["img00001"]["caption"] in html
    assert "SpLiCE cosine" in html and "concept-chart" in html
    assert get(server, "/image/nope").status_code == 404


# --------------------------------------------------------------------------------- drift, spurious
def test_drift_alert_links_to_red_images_of_that_window(server, world):
    html = get(server, "/drift", every="quarter").text
    links = re.findall(r'class="alert" href="([^"]+)"', html)
    assert len(links) == 1 and "concept=red" in links[0]
    page = httpx.get(server.url + links[0].replace("&amp;", "&"), timeout=120).text
    shown = ids_on(page.split("reference window")[0])
    assert shown and sum(world["truth"][i]["colour"] == "red" for i in shown) / len(shown) >= 0.8
    assert all(world["truth"][i]["timestamp"][5:7] in ("10", "11", "12") for i in shown)
    ref = ids_on(page.split("reference window")[1])
    assert all(world["truth"][i]["timestamp"][5:7] in ("01", "02", "03") for i in ref)


def test_spurious_finding_shows_circles_with_and_without_grass(server, world):
    html = get(server, "/spurious").text
    assert re.search(r"<td>circle</td>\s*<td><a class=\"finding\"[^>]*>grass</a>", html)
    page = get(server, "/spurious", label="circle", concept="grass").text
    with_part, without_part = page.split('id="without-concept"')
    with_ids = ids_on(with_part.split('id="with-concept"')[1])
    without_ids = ids_on(without_part.split("<!-- /examples -->")[0])
    assert with_ids and without_ids and not set(with_ids) & set(without_ids)
    assert all(world["truth"][i]["shape"] == "circle" for i in with_ids + without_ids)
    assert sum(world["truth"][i]["background"] == "grass" for i in with_ids) / len(with_ids) >= 0.8
    assert sum(world["truth"][i]["background"] == "grass" for i in without_ids) / len(without_ids) <= 0.2


# -------------------------------------------------------------------------------------------- SQL
def test_sql_box_runs_a_select_with_thumbnails(server, world):
    r = get(server, "/sql", sql="SELECT id, label FROM images WHERE label = 'heart' ORDER BY id")
    want = sorted(i for i, t in world["truth"].items() if t["label"] == "heart")
    assert r.status_code == 200
    assert re.findall(r"<td>(img\d+)</td>", r.text) == want
    assert "/thumb/" + want[0] in r.text


@pytest.mark.parametrize("sql", [
    "COPY images TO '/tmp/lc-serve-leak.csv'", "ATTACH '/tmp/x.db' AS x", "INSTALL httpfs", "LOAD httpfs",
    "SET threads = 1", "PRAGMA database_list", "CREATE TABLE t AS SELECT 1", "DELETE FROM images",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM glob('/etc/*')", "SELECT * FROM '/etc/passwd'",
    "SELECT 1; SELECT 2", "SELEC 1",
])
def test_sql_box_refuses_writes_files_and_settings(server, sql):
    r = get(server, "/sql", sql=sql)
    assert r.status_code == 400 and error_on(r.text)
    assert "root:" not in r.text
    assert not os.path.exists("/tmp/lc-serve-leak.csv")


def test_sql_time_limit_interrupts(world):
    con = lock_down(lc.connect(world["db"]))
    with pytest.raises(InputError, match="time limit"):
        run_read_only(con, "SELECT count(*) FROM range(100000000000) a", timeout_s=0.5)
    assert run_read_only(con, "SELECT 42 AS x")[0].to_pylist() == [{"x": 42}]  # still usable


def test_check_read_only_names_the_statement_type(world):
    con = lc.connect(world["db"])
    with pytest.raises(InputError, match="COPY"):
        check_read_only(con, "COPY images TO 'x.csv'")


def test_named_query_form_runs_with_parameters(server):
    r = get(server, "/sql", query="concept_drift", run="1", p_concepts="red")
    assert r.status_code == 200, error_on(r.text)
    assert "<td>red</td>" in r.text
    bad = get(server, "/sql", query="no_such_query", run="1")
    assert bad.status_code == 400 and "no named query" in error_on(bad.text)


# ------------------------------------------------------------------------------------- thumbnails
def test_thumbnail_is_made_once_and_is_a_jpeg(server):
    r1 = get(server, "/thumb/img00002", size=160)
    made = server.explorer.thumbs.made
    r2 = get(server, "/thumb/img00002", size=160)
    assert r1.status_code == r2.status_code == 200 and r1.content[:2] == b"\xff\xd8"
    assert r1.content == r2.content and server.explorer.thumbs.made == made


@pytest.mark.parametrize("path", ["/thumb/../../etc/passwd", "/thumb/%2e%2e/%2e%2e/etc/passwd", "/thumb//etc/passwd"])
def test_thumbnail_urls_cannot_name_files(server, path):
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code in (400, 404) and b"root:" not in r.content


def test_table_uris_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"s")
    (root / "link.png").symlink_to(secret)
    assert safe_local_path("ok.png", [str(root)]) == os.path.realpath(root / "ok.png")
    for uri in ["../secret.png", str(secret), "link.png", "file://" + str(secret), "/etc/passwd"]:
        with pytest.raises(UnsafePathError):
            safe_local_path(uri, [str(root)])
    cache = ThumbnailCache(tmp_path / "cache", [str(root)])
    with pytest.raises(UnsafePathError):
        cache.get("x", "../secret.png", 160)


# ----------------------------------------------------------------------------------------- binding
def test_public_bind_warns_and_local_does_not():
    with pytest.warns(PublicBindWarning, match="no login"):
        check_bind("0.0.0.0", 8765)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_bind("127.0.0.1", 8765)
    with pytest.raises(InputError, match="port"):
        check_bind("127.0.0.1", 70000)


def test_missing_db_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no database"):
        serve(str(tmp_path / "nope.lancedb"), port=0, background=True)


def test_cli_serve_help_and_missing_db(tmp_path):
    from click.testing import CliRunner

    from lance_concepts.cli import main

    res = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no database" in res.output


# ------------------------------------------------------------------------------ in a real browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium from the system packages (``make test`` installs them where it can)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
    driver_path = next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
    if not chromium or not driver_path:
        pytest.skip("no system Chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.implicitly_wait(10)
    drv.shots = Path(os.environ.get("LC_SERVE_SHOTS") or tmp_path_factory.mktemp("screenshots"))
    yield drv
    drv.quit()


def shot(browser, name):
    browser.save_screenshot(str(browser.shots / f"{name}.png"))


def tile_ids(browser, attempts: int = 40):
    """The grid's image ids, read in one script once the page has loaded (the grid is redrawn while a
    new page loads: element handles taken one by one can go stale)."""
    import time

    for _ in range(attempts):
        if browser.execute_script("return document.readyState") == "complete":
            ids = browser.execute_script(
                "return Array.from(document.querySelectorAll('.tile')).map(e => e.getAttribute('data-id'))")
            if ids:
                return ids
        time.sleep(0.25)
    return []


def test_browser_filter_open_image_and_more_like_this(browser, server, world):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "where")
    box.send_keys("concept('red') > 0.1 AND label = 'circle'")
    browser.find_element(By.ID, "apply").click()
    ids = tile_ids(browser)
    assert ids and all(world["truth"][i]["label"] == "circle" for i in ids)
    assert sum(world["truth"][i]["colour"] == "red" for i in ids) / len(ids) >= 0.8
    assert "where=concept" in browser.current_url  # the state is in the URL
    shot(browser, "grid")
    browser.find_elements(By.CSS_SELECTOR, ".tile")[0].click()
    assert browser.find_element(By.ID, "image-title").text == ids[0]
    assert browser.find_elements(By.CSS_SELECTOR, "#concept-chart .bars path, #concept-chart .point path")
    assert browser.execute_script(  # the thumbnail really decoded
        "return document.querySelector('img.big').naturalWidth") > 0
    shot(browser, "image")
    browser.find_element(By.ID, "more-like").click()
    assert tile_ids(browser)


def click_suggestion(browser, text: str, attempts: int = 20):
    """The suggestion list is redrawn after each keystroke: retry until one stays put long enough to click."""
    import time

    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(attempts):
        try:
            hits = [b for b in browser.find_elements(By.CSS_SELECTOR, ".suggestion") if b.text == text]
            if hits:
                hits[0].click()
                return
        except StaleElementReferenceException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"no clickable suggestion {text!r}")


def test_browser_concept_autocomplete_in_the_condition(browser, server, world):
    from urllib.parse import unquote_plus

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "where")
    box.send_keys("label = 'circle' AND concept('gra")
    click_suggestion(browser, "grass")
    assert box.get_attribute("value") == "label = 'circle' AND concept('grass')"
    box.send_keys(" = 0")
    browser.find_element(By.ID, "apply").click()  # "show me circles without grass"
    WebDriverWait(browser, 30).until(lambda b: "grass" in unquote_plus(b.current_url))
    ids = tile_ids(browser)
    assert ids and all(world["truth"][i]["shape"] == "circle" for i in ids)
    assert sum(world["truth"][i]["background"] != "grass" for i in ids) / len(ids) >= 0.8
    shot(browser, "circles-without-grass")


def test_browser_text_search(browser, server, world):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/search")
    browser.find_element(By.ID, "text").send_keys("a photo of a red circle")
    browser.find_element(By.ID, "where").send_keys("label = 'circle'")
    browser.find_element(By.ID, "go").click()
    ids = tile_ids(browser)
    want = lc.search(world["db"], "a photo of a red circle", where="label = 'circle'", k=48).column("id").to_pylist()
    assert ids == want  # the page shows what the library finds, in order
    shot(browser, "search")


def test_browser_drift_alert_shows_example_images(browser, server, world):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/drift?every=quarter")
    assert browser.find_elements(By.CSS_SELECTOR, "#drift-chart .scatterlayer .trace")
    shot(browser, "drift")
    browser.find_element(By.CSS_SELECTOR, "a.alert").click()
    ids = tile_ids(browser)
    assert "window=2024-Q4" in browser.current_url and ids
    shot(browser, "drift-examples")


def test_browser_spurious_finding(browser, server, world):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/spurious")
    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, "a.finding")
                if a.text == "grass" and "label=circle" in a.get_attribute("href"))
    link.click()
    with_ids = [e.get_attribute("data-id") for e in browser.find_elements(By.CSS_SELECTOR, "#with-concept .tile")]
    without_ids = [e.get_attribute("data-id") for e in browser.find_elements(By.CSS_SELECTOR, "#without-concept .tile")]
    assert with_ids and without_ids
    assert all(world["truth"][i]["background"] == "grass" for i in with_ids[:5])
    shot(browser, "spurious")


def test_browser_sql_query_and_bad_query(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/sql")
    box = browser.find_element(By.ID, "sql")
    box.send_keys("SELECT id, label, concept_weight(images, 'red') AS red FROM images ORDER BY red DESC LIMIT 5")
    browser.find_element(By.ID, "run-sql").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results tr")) == 6
    assert browser.execute_script("return document.querySelector('#results img').naturalWidth") > 0
    shot(browser, "sql")
    box = browser.find_element(By.ID, "sql")
    box.clear()
    box.send_keys("SELECT * FROM read_csv('/etc/passwd')")
    browser.find_element(By.ID, "run-sql").click()
    assert "disabled by configuration" in browser.find_element(By.ID, "error").text
    shot(browser, "sql-error")


def test_missing_image_file_is_a_message_not_a_500(server, monkeypatch):
    monkeypatch.setattr(server.explorer, "uri_of", lambda image_id: "images/deleted-since-ingest.png")
    r = get(server, "/thumb/img00003", size=256)  # a size no other test asks for: not cached
    assert r.status_code == 502 and "file not found" in r.text


def test_background_warmup_makes_every_thumbnail(world, tmp_path):
    from lance_concepts.serve.server import iter_ids
    from lance_concepts.serve.explorer import Explorer

    ex = Explorer(world["db"])
    cache = ThumbnailCache(tmp_path / "thumbs", ex.roots)
    cache.warm(iter_ids(ex), size=96).join(120)
    assert all(cache.path(i, 96).is_file() for i in world["truth"])


def test_http_image_uris_are_read_like_ingest_reads_them(world, tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(world["root"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/images/img00000.png"
        path = ThumbnailCache(tmp_path, roots=[]).get("img00000", url, 96)
        from PIL import Image

        with Image.open(path) as im:
            assert im.format == "JPEG" and max(im.size) <= 96
    finally:
        httpd.shutdown()
