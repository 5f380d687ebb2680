"""jobs.view in a real headless chromium (tests/webdriver.py): the gallery over a real output on
S3 (the reference job: a real local Ray and SeaweedFS), filtered to incorrect predictions, sorted
by kept fraction, a sample opened, and its drawn map compared pixel by pixel with the stored map
after the same colour mapping (jobs.reporting.view_colors); then jobs.analyze on that output, its clusters
page and a cluster's gallery."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests import webdriver

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(webdriver.missing() is not None, reason=str(webdriver.missing()))]

READY = "return document.body.dataset.ready"


@pytest.fixture(scope="module")
def viewer(reference):
    from jobs.view import make_server

    assert reference["code"] == 0
    server = make_server(reference["url"], reference["options"], port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    b = webdriver.Browser()
    yield b
    b.close()


def _stored(reference) -> "pd.DataFrame":  # noqa: F821
    from storage.maps.reader import read_maps

    return read_maps(reference["url"], storage_options=reference["options"],
                     columns=["sample_id", "method", "label", "predicted", "kept_fraction"])


def _cards(browser) -> list[str]:
    return browser.script("return [...document.querySelectorAll('.card')].map(c => c.dataset.sample)")


def test_gallery_filter_sort_and_sample_page(reference, viewer, browser, tmp_path):
    from jobs.reporting.view_colors import colorize
    from storage.maps.reader import read_sample

    stored = _stored(reference)
    browser.get(viewer + "/")
    assert browser.wait(READY) == "1", browser.script("return document.getElementById('message').textContent")
    methods = sorted(stored.method.unique())
    first_method = stored[stored.method == methods[0]]  # the gallery filters and sorts the first method's rows
    assert _cards(browser) == list(first_method["sample_id"][:24])  # source order, first page
    assert f"of {len(first_method)}" in browser.script("return document.getElementById('count').textContent")
    # each card shows its sample's map by every method
    assert browser.script("return [...document.querySelectorAll('.card')].map(c => [...c.querySelectorAll('canvas.map')]"
                          ".map(m => m.dataset.method).sort().join())") == [",".join(methods)] * 24
    legend = browser.script("return document.getElementById('legend').textContent")
    assert "red" in legend and "blue" in legend and "target logit" in legend

    # filter: the pathway's rows, incorrect predictions only; sort: kept fraction, largest first
    pruned = stored[stored.kept_fraction.notna()]
    label = pruned.method.iloc[0]
    browser.script(f"document.querySelector('[name=method]').value = '{label}';"
                   "document.querySelector('[name=correct]').value = 'incorrect';"
                   "document.querySelector('[name=sort]').value = 'kept_fraction';"
                   "document.querySelector('[name=order]').value = 'desc';")
    browser.script("document.body.dataset.ready = ''")
    browser.click("button[type=submit]")
    assert browser.wait(READY) == "1"
    pruned = pruned[pruned.method == label]
    wrong = pruned[(pruned.label >= 0) & (pruned.predicted != pruned.label)]
    assert len(wrong), "the tiny model gets some Fashion-MNIST images wrong"
    expected = wrong.sort_values(["kept_fraction", "method", "sample_id"], ascending=[False, True, True],
                                 na_position="last")
    assert _cards(browser) == list(expected["sample_id"][:24])
    assert f"of {len(wrong)}" in browser.script("return document.getElementById('count').textContent")

    # open the first card: its sample page draws every method's map
    first = expected.iloc[0]
    browser.script("document.querySelector('.card a').click()")
    assert browser.wait(READY) == "1", browser.script("return document.getElementById('message').textContent")
    assert browser.script("return location.pathname") == "/sample.html"
    drawn = browser.script(
        "const c = document.querySelector('canvas.map');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);"
        "return {h: c.height, w: c.width, method: c.dataset.method, sample: c.dataset.sample, px: Array.from(d.data)}")
    assert drawn["sample"] == first["sample_id"]
    rgba = np.array(drawn["px"], dtype=np.int64).reshape(drawn["h"], drawn["w"], 4)
    row = read_sample(reference["url"], first["sample_id"], drawn["method"], reference["options"]).iloc[0]
    want = colorize(np.asarray(row["map"]), "both").astype(np.int64)
    assert rgba.shape[:2] == want.shape[:2]
    assert (rgba[..., 3] == 255).all()
    assert np.abs(rgba[..., :3] - want).max() <= 2  # one colour-scale step at most (JS and numpy rounding)
    assert (rgba[..., :3] == want).all(axis=-1).mean() > 0.99
    assert len(set(map(tuple, want.reshape(-1, 3)))) > 10, "a map that is not a flat colour"
    # the image under it is the source's, and the details and run history are shown
    assert browser.wait("const i = document.querySelector('.method img'); return i && i.complete && i.naturalWidth")
    text = browser.script("return document.body.textContent")
    assert "kept_fraction" in text and "complete" in text
    browser.screenshot(str(tmp_path / "sample.png"))
    # the gallery again, with the positive polarity, side by side
    browser.get(viewer + "/?polarity=positive&layout=side&correct=incorrect")
    assert browser.wait(READY) == "1"
    browser.screenshot(str(tmp_path / "gallery.png"))
    print("screenshots:", tmp_path)


def test_clusters_page_and_a_clusters_gallery(reference, viewer, browser, monkeypatch, tmp_path):
    """jobs.analyze on the reference output, then its clusters page: the mean maps drawn as the stored
    .npy after the same colour mapping, and a cluster's link filtering the gallery to exactly that
    cluster's samples (as the class's Parquet says); its sample page shows the cluster."""
    import io
    import json

    import pandas as pd

    from jobs import analyze
    from jobs.reporting.view_colors import colorize
    from storage.io.location import Location

    stored = _stored(reference)
    method = sorted(stored.method.unique())[0]
    monkeypatch.setenv("STORAGE_OPTIONS", json.dumps(reference["options"]))
    assert analyze.main([reference["url"], "--method", method, "--max-per-class", "20", "--clusters", "2",
                         "--layout", "spectral", "--in-process"]) == 0  # the page is the subject, not Ray
    where = Location(f"{reference['url']}/_analysis/{method}", reference["options"])
    table = pd.read_parquet(io.BytesIO(where.get("clusters/class-0003.parquet")))
    means = np.load(io.BytesIO(where.get("means/class-0003.npy")))

    browser.get(f"{viewer}/clusters.html?method={method}&class=3")
    assert browser.wait(READY) == "1", browser.script("return document.getElementById('message').textContent")
    assert browser.script("return [...document.querySelectorAll('.cluster h3')].map(h => h.textContent)") == [
        f"cluster {k}: {n} maps" for k, n in enumerate(table.groupby("cluster").size())]
    for k in range(len(means)):
        drawn = browser.script(
            f"const c = document.querySelector('canvas.mean[data-cluster=\"{k}\"]');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);"
            "return {h: c.height, w: c.width, px: Array.from(d.data)}")
        rgba = np.array(drawn["px"], dtype=np.int64).reshape(drawn["h"], drawn["w"], 4)
        want = colorize(means[k], "absolute", 0, 100).astype(np.int64)  # |map| means: the magnitude scale
        assert rgba.shape[:2] == means[k].shape and np.abs(rgba[..., :3] - want).max() <= 2
        assert len(set(map(tuple, want.reshape(-1, 3)))) > 10, "a mean map that is not a flat colour"
    assert browser.script("return document.querySelectorAll('#scatter circle').length") == len(table)
    browser.screenshot(str(tmp_path / "clusters.png"))

    # cluster 1's link: the gallery of exactly its samples, in source order
    browser.script("document.body.dataset.ready = '';"
                   "document.querySelector('.cluster[data-cluster=\"1\"] a.cluster-link').click()")
    assert browser.wait(READY) == "1", browser.script("return document.getElementById('message').textContent")
    ids = set(table[table.cluster == 1].sample_id)
    rows = stored[(stored.method == method) & stored.sample_id.isin(ids)]
    assert len(rows) == len(ids) > 0
    assert _cards(browser) == list(rows.sample_id[:24])
    assert f"of {len(ids)}" in browser.script("return document.getElementById('count').textContent")
    browser.script("document.body.dataset.ready = ''; document.querySelector('.card a').click()")
    assert browser.wait(READY) == "1"
    text = browser.script("return document.getElementById('sample-clusters').textContent")
    assert "cluster 1: its samples" in text
    assert "Per-sample scores: none stored" in browser.script("return document.getElementById('evaluation').textContent")


def test_errors_page_filters_by_kind(browser, tmp_path):
    """The errors page over an output with error rows (the synthetic one of benchmarks/bench_view.py)."""
    from jobs.view import make_server
    from tests.jobs.test_view import _bench

    _bench().write_output(tmp_path / "out", 2100, 512)
    server = make_server(str(tmp_path / "out"), {}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/errors.html")
        assert browser.wait(READY) == "1"
        assert browser.script("return [...document.querySelectorAll('[name=kind] option')].map(o => o.textContent)"
                              ) == ["all", "decode (2)"]
        browser.script("document.querySelector('[name=kind]').value = 'decode'; document.body.dataset.ready = ''")
        browser.click("button[type=submit]")
        assert browser.wait(READY) == "1"
        assert "kind=decode" in browser.script("return location.search")
        cells = browser.script("return [...document.querySelectorAll('#errors tr')].slice(1)"
                               ".map(r => r.cells[0].textContent)")
        assert cells == ["00000999", "00001999"]
    finally:
        server.shutdown()
        server.server_close()
