"""`vosrt live` in a real browser: headless Chromium driven by Playwright against the real server,
the shipped stcn-lite package and a generated video standing in for a camera on a desk."""
from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from live_support import PACKAGE, desk_video, free_port, start_live
from media import video_frames

playwright_api = pytest.importorskip("playwright.sync_api", reason="PyPI playwright (vosrt[dev]) not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)", allow_module_level=True)

TOKEN = "test-token-1234"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """The running server (with a token) and the clip's truth: (process, url, mask, box, save_dir)."""
    folder = tmp_path_factory.mktemp("live-browser")
    mask, box = desk_video(folder / "desk.mp4")
    process, url = start_live([str(PACKAGE), "--source", "desk.mp4", "--realtime", "--loop",
                               "--port", str(free_port()), "--token", TOKEN, "--save-dir", "saved",
                               "--video", "overlay.mp4"], cwd=folder)
    yield process, url, mask, box, folder / "saved"
    process.send_signal(signal.SIGTERM)      # ends the server cleanly, the recording playable
    assert process.wait(timeout=60) == 0, "".join(process.output)
    assert video_frames(folder / "overlay.mp4") > 10


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(viewer, browser):
    process, url, *_ = viewer
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("window.vosrt.framesShown() > 3 && window.vosrt.state()", timeout=30_000)
    resets = page.evaluate("window.vosrt.state().resets")
    page.request.post(url.split("?")[0] + "api/reset", headers={"X-Vosrt-Token": TOKEN})
    page.wait_for_function(f"window.vosrt.state().resets > {resets} && window.vosrt.state().objects.length === 0",
                           timeout=15_000)
    yield page
    page.close()


def redness(page, box) -> float:
    """Mean red-minus-green of the shown video inside ``box`` (object 1's overlay colour is red)."""
    x, y, w, h = box
    return page.evaluate(
        """([x, y, w, h]) => {
             const data = document.getElementById('video').getContext('2d').getImageData(x, y, w, h).data;
             let sum = 0;
             for (let i = 0; i < data.length; i += 4) sum += data[i] - data[i + 1];
             return sum / (data.length / 4);
           }""", list(box))


def drag(page, box) -> None:
    """Drag the mouse over ``box`` (frame pixels) on the page's video."""
    canvas = page.locator("#draw").bounding_box()
    size = page.evaluate("[document.getElementById('draw').width, document.getElementById('draw').height]")
    sx, sy = canvas["width"] / size[0], canvas["height"] / size[1]
    x, y, w, h = box
    page.mouse.move(canvas["x"] + x * sx, canvas["y"] + y * sy)
    page.mouse.down()
    page.mouse.move(canvas["x"] + (x + w / 2) * sx, canvas["y"] + (y + h / 2) * sy, steps=4)
    page.mouse.move(canvas["x"] + (x + w) * sx, canvas["y"] + (y + h) * sy, steps=4)
    page.mouse.up()


def wait_for_files(folder: Path, pattern: str, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(list(folder.glob(pattern))) < count:
        assert time.monotonic() < deadline, f"no {count} files {pattern} in {folder}"
        time.sleep(0.1)


def frames_after(page, count: int) -> None:
    shown = page.evaluate("window.vosrt.framesShown()")
    page.wait_for_function(f"window.vosrt.framesShown() >= {shown + count}", timeout=30_000)


def test_page_loads_and_frames_arrive(page, viewer):
    mask = viewer[2]
    assert page.evaluate("[document.getElementById('video').width, document.getElementById('video').height]") \
        == [mask.shape[1], mask.shape[0]]
    state = page.evaluate("window.vosrt.state()")
    assert state["frames"] > 0 and state["takes_mask"] is True
    assert "Drag a box" in page.locator("#hint").inner_text()


def test_dragging_a_box_tracks_the_object_in_later_frames(page, viewer):
    box = viewer[3]
    before = redness(page, box)
    drag(page, box)
    page.wait_for_selector('#objects li[data-id="1"]', timeout=15_000)
    frames_after(page, 5)
    state = page.evaluate("window.vosrt.state()")
    assert [o["id"] for o in state["objects"]] == [1]
    mask = viewer[2]
    assert state["objects"][0]["pixels"] > 0.5 * mask.sum()
    assert "object 1" in page.locator('#objects li[data-id="1"]').inner_text()
    # the swatch is the colour the overlay blends object 1 in (DAVIS palette: 128, 0, 0)
    swatch = page.locator('#objects li[data-id="1"] .swatch').evaluate("e => getComputedStyle(e).backgroundColor")
    assert swatch == "rgb(128, 0, 0)", swatch
    assert redness(page, box) > before + 20     # the red overlay of object 1 is on the video


def test_remove_button_stops_tracking(page, viewer):
    box = viewer[3]
    drag(page, box)
    page.wait_for_selector('#objects li[data-id="1"] button.remove', timeout=15_000)
    frames_after(page, 3)
    tracked = redness(page, box)
    page.click('#objects li[data-id="1"] button.remove')
    page.wait_for_function("window.vosrt.state().objects.length === 0", timeout=15_000)
    frames_after(page, 3)
    assert page.locator("#objects li").count() == 0
    assert redness(page, box) < tracked - 20


def test_a_drag_out_of_the_picture_ends_at_its_edge_and_only_the_main_button_picks(page, viewer):
    # a drag that left the picture sent the last point inside it (or a click box where it started); a right or
    # middle click added an object; the remove buttons were all called "remove"
    canvas = page.locator("#draw").bounding_box()
    width, height = page.evaluate("[document.getElementById('draw').width, document.getElementById('draw').height]")
    sx, sy = canvas["width"] / width, canvas["height"] / height
    page.mouse.click(canvas["x"] + 40 * sx, canvas["y"] + 30 * sy, button="right")
    page.mouse.click(canvas["x"] + 40 * sx, canvas["y"] + 30 * sy, button="middle")
    with page.expect_request("**/api/select") as sent:
        page.mouse.move(canvas["x"] + (width - 40) * sx, canvas["y"] + (height - 30) * sy)
        page.mouse.down()
        page.mouse.move(canvas["x"] + canvas["width"] + 60, canvas["y"] + canvas["height"] + 60, steps=2)
        page.mouse.up()
    x, y, w, h = json.loads(sent.value.post_data)["box"]
    assert (x, y) == pytest.approx((width - 40, height - 30), abs=1) and (x + w, y + h) == pytest.approx((width, height))
    page.wait_for_selector('#objects li[data-id="1"] button.remove', timeout=15_000)
    assert [o["id"] for o in page.evaluate("window.vosrt.state()")["objects"]] == [1]   # the clicks added none
    assert page.get_attribute('#objects li[data-id="1"] button.remove', "aria-label") == "remove object 1"


def key_box_drawn(page) -> int:
    """Yellow pixels on the page's drawing layer (where the keyboard's box is shown)."""
    return page.evaluate("""() => {
        const c = document.getElementById('draw'), data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) n += data[i] > 200 && data[i + 1] > 200 && data[i + 2] < 60;
        return n;
    }""")


def test_an_object_can_be_picked_from_the_keyboard(page, viewer):
    # picking needed a mouse: the picture took no focus and no key
    mask, box = viewer[2], viewer[3]
    width, height = page.evaluate("[document.getElementById('draw').width, document.getElementById('draw').height]")
    page.keyboard.press("Tab")     # the picture comes first in the page's order
    assert page.evaluate("document.activeElement.id") == "draw"
    assert "arrow keys" in page.locator("#hint").inner_text()
    page.keyboard.press("ArrowRight")              # the first key shows the box, in the middle
    assert key_box_drawn(page) > 0
    page.keyboard.press("Escape")
    assert key_box_drawn(page) == 0
    page.keyboard.press("Enter")
    step = max(1, round(min(width, height) / 40))
    x0, y0, w0, h0 = round(width * 3 / 8), round(height * 3 / 8), round(width / 4), round(height / 4)
    x, y, w, h = box
    for key, count in (("ArrowRight", round((x - x0) / step)), ("ArrowDown", round((y - y0) / step)),
                       ("Shift+ArrowRight", round((w - w0) / step)), ("Shift+ArrowDown", round((h - h0) / step))):
        if count < 0:
            key, count = key.replace("Right", "Left").replace("Down", "Up"), -count
        for _ in range(count):
            page.keyboard.press(key)
    assert page.evaluate("window.scrollY") == 0                   # the keys moved the box, not the page
    drawn = key_box_drawn(page)
    page.keyboard.press("Alt+ArrowLeft")                          # the browser's keys stay the browser's
    page.keyboard.press("Control+Enter")
    assert key_box_drawn(page) == drawn and not page.evaluate("window.vosrt.state().objects.length")
    with page.expect_request("**/api/select") as sent:
        page.keyboard.press("Enter")
    sent_box = json.loads(sent.value.post_data)["box"]
    assert sent_box == pytest.approx(list(box), abs=step), (sent_box, box)
    assert key_box_drawn(page) == 0
    page.wait_for_selector('#objects li[data-id="1"]', timeout=15_000)
    frames_after(page, 5)
    state = page.evaluate("window.vosrt.state()")
    assert [o["id"] for o in state["objects"]] == [1] and state["objects"][0]["pixels"] > 0.5 * mask.sum()


def test_snapshot_and_recording_buttons_write_files(page, viewer):
    saved = viewer[4]
    page.click("#snapshot")
    wait_for_files(saved, "snapshot-*.png", 2)
    assert len(list(saved.glob("snapshot-*-mask.png"))) == 1
    page.click("#record")
    page.wait_for_function("window.vosrt.state().recording", timeout=10_000)
    frames_after(page, 10)
    page.click("#record")
    page.wait_for_function("!window.vosrt.state().recording", timeout=10_000)
    recordings = list(saved.glob("recording-*.mp4"))
    assert len(recordings) == 1 and video_frames(recordings[0]) >= 10


def test_requests_without_the_token_are_refused(viewer):
    url = viewer[1].split("?")[0]
    for path, data in (("", None), ("api/state", None), ("api/latest.jpg", None),
                       ("api/select", json.dumps({"box": [1, 1, 20, 20]}).encode())):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + path, data=data), timeout=10)
        assert refused.value.code == 401
    with urllib.request.urlopen(url + f"api/state?token={TOKEN}", timeout=10) as answer:
        assert json.load(answer)["frames"] > 0


def test_a_frame_decoded_after_a_newer_one_is_not_drawn(viewer, browser):
    # The page decodes each frame asynchronously (createImageBitmap). Here the first frame's decode is held back
    # until the third frame is drawn, so it ends after later frames' decodes: drawn then, it would step the
    # picture back in time.
    process, url, *_ = viewer
    page = browser.new_page()
    page.add_init_script("""
        const decode = window.createImageBitmap.bind(window);
        let calls = 0;
        window.drawnFrames = [];
        window.createImageBitmap = async (blob) => {
          const n = ++calls;
          const image = await decode(blob);
          if (n === 1) await new Promise((done) => {
            const wait = setInterval(() => { if (window.drawnFrames.includes(3)) { clearInterval(wait); done(); } }, 5);
          });
          image.vosrtFrame = n;
          return image;
        };
        const draw = CanvasRenderingContext2D.prototype.drawImage;
        CanvasRenderingContext2D.prototype.drawImage = function (image, ...rest) {
          if (image && image.vosrtFrame) window.drawnFrames.push(image.vosrtFrame);
          return draw.call(this, image, ...rest);
        };
    """)
    try:
        page.goto(url)
        # the first frame's decode is over (frame 3 was drawn) and frames have arrived after it
        page.wait_for_function("window.drawnFrames.includes(3) && window.drawnFrames.length > 5", timeout=30_000)
        drawn = page.evaluate("window.drawnFrames")
    finally:
        page.close()
    assert drawn == sorted(drawn) and len(set(drawn)) == len(drawn), drawn   # never back in time
    assert 1 not in drawn, drawn


def drawn_while_dragging(page, box) -> int:
    """Pixels of the selection rectangle on the drawing layer while the mouse is held down over ``box``."""
    canvas = page.locator("#draw").bounding_box()
    x, y, w, h = box
    page.mouse.move(canvas["x"] + x, canvas["y"] + y)
    page.mouse.down()
    page.mouse.move(canvas["x"] + x + w, canvas["y"] + y + h, steps=4)
    drawn = page.evaluate("""() => { const d = document.getElementById('draw');
                                     const data = d.getContext('2d').getImageData(0, 0, d.width, d.height).data;
                                     let n = 0; for (let i = 3; i < data.length; i += 4) n += data[i] > 0; return n; }""")
    page.mouse.up()
    return drawn


def controls(page) -> dict:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('aside button')].map(
                              (b) => [b.id || b.className, b.disabled]))""")


def test_an_ended_stream_and_a_stopped_server_are_said_and_offer_nothing_that_cannot_work(browser, tmp_path):
    # Once a file ended, the page still said "Drag a box", drew the box, and its remove, pause and reset
    # were answered ok and did nothing; once the server stopped it said only "disconnected".
    mask, box = desk_video(tmp_path / "short.mp4", frames=20)
    process, url = start_live([str(PACKAGE), "--source", "short.mp4", "--port", str(free_port()),
                               "--select", "box:" + ",".join(map(str, box))], cwd=tmp_path)
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_function("window.vosrt.state() && window.vosrt.state().ended", timeout=30_000)
        page.wait_for_selector('#objects li[data-id="1"]', timeout=15_000)
        assert "ended" in page.locator("#hint").inner_text()
        assert page.locator("#objects button.remove").count() == 0
        assert controls(page) == {"pause": True, "reset": True, "snapshot": False, "record": True}
        assert page.locator("#draw").evaluate("e => getComputedStyle(e).cursor") != "crosshair"
        assert drawn_while_dragging(page, box) == 0
        assert "stream has ended" in page.locator("#message").inner_text()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "".join(process.output)
        page.wait_for_function("document.getElementById('status').textContent.includes('vosrt live stopped')",
                               timeout=15_000)
        assert page.locator("#hint").inner_text() == "not connected"
        assert all(controls(page).values())      # every button disabled while nothing answers
        time.sleep(2.5)                          # failed reconnects no longer replace the server's reason
        assert "vosrt live stopped" in page.locator("#status").inner_text()
        # started again with a token, the server refuses this page for good: it said only "reconnecting" for ever
        port = url.rsplit(":", 1)[1].split("/")[0]
        process, _ = start_live([str(PACKAGE), "--source", "short.mp4", "--port", port, "--token", "another-token"],
                                cwd=tmp_path)
        page.wait_for_function("document.getElementById('status').textContent.includes('needs vosrt live')",
                               timeout=30_000)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(process.output)
    finally:
        page.close()
        if process.poll() is None:
            process.kill()


def test_a_mask_free_package_s_page_offers_no_picking(browser, tmp_path):
    # A 3dc-seg page said "nothing to pick" yet showed a crosshair and drew the dragged box.
    from sdk_packages import tiny_package
    from vosrt.sdk.synthetic import generate_sequence, write_video

    write_video(tmp_path / "clip.mp4", generate_sequence(21, num_frames=24, height=64, width=64, num_objects=1))
    process, url = start_live([str(tiny_package("3dc-seg")), "--source", "clip.mp4", "--realtime", "--loop",
                               "--port", str(free_port())], cwd=tmp_path)
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_function("window.vosrt.framesShown() > 0 && window.vosrt.state()", timeout=60_000)
        assert "automatic segmentation" in page.locator("#hint").inner_text()
        assert page.locator("#draw").evaluate("e => getComputedStyle(e).cursor") != "crosshair"
        assert drawn_while_dragging(page, (5, 5, 40, 40)) == 0
        assert "segment automatically" in page.locator("#message").inner_text()
        page.evaluate("document.getElementById('message').textContent = ''")
        assert page.get_attribute("#draw", "tabindex") == "-1"    # no Tab stop where there is nothing to pick
        page.focus("#draw")
        page.keyboard.press("Enter")            # nor from the keyboard
        assert key_box_drawn(page) == 0 and "segment automatically" in page.locator("#message").inner_text()
        assert controls(page) == {"pause": False, "reset": False, "snapshot": False, "record": False}
    finally:
        page.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_a_refusal_is_shown_to_the_viewer_that_asked_not_to_the_others(page, viewer, browser):
    other = browser.new_page()
    try:
        other.goto(viewer[1])
        other.wait_for_function("window.vosrt.framesShown() > 0 && window.vosrt.state()", timeout=30_000)
        page.evaluate("post('remove', {id: 99})")      # what the page's own buttons call
        page.wait_for_function("document.getElementById('message').textContent.includes('object 99')", timeout=10_000)
        frames_after(other, 5)
        frames_after(page, 5)
        assert "object 99" in page.locator("#message").inner_text()    # not wiped by the next state
        assert "object 99" not in other.locator("#message").inner_text()
    finally:
        other.close()


def test_a_double_click_on_pause_or_record_acts_once(page, viewer):
    # each click read the state that had not caught up with the one before: a double click paused twice (the
    # stream stayed paused) and asked for a recording twice where the second meant "stop"
    sent = []
    page.on("request", lambda request: sent.append((request.url.rsplit("/", 1)[1], request.post_data))
            if "/api/" in request.url else None)
    page.dblclick("#pause")
    page.wait_for_function("window.vosrt.state().paused === true", timeout=15_000)
    time.sleep(0.5)
    assert [name for name, _ in sent] == ["pause"], sent
    page.click("#pause")
    page.wait_for_function("window.vosrt.state().paused === false", timeout=15_000)
    assert [name for name, _ in sent][-1] == "resume"
