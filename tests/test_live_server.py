"""The live viewer against hostile or careless clients, on a real `vosrt live` process: requests that would
stop inference, crash the process or hold up its exit, DNS rebinding, weak tokens, and recordings."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from vosrt.sdk.synthetic import generate_sequence, write_video

from live_support import PACKAGE, finish, free_port, start_live, vosrt_command, wait_for


def _request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _state(page: str) -> dict:
    return json.loads(_request(page + "api/state")[1])


def _wait(condition, timeout: float = 60) -> None:
    wait_for(condition, timeout, interval=0.2)


def _start_looping(folder):
    write_video(folder / "clip.mp4", generate_sequence(21, num_frames=20, height=96, width=128, num_objects=1))
    process, page = start_live([str(PACKAGE), "--source", "clip.mp4", "--realtime", "--loop",
                                "--save-dir", "saved", "--port", str(free_port())], cwd=folder)
    _wait(lambda: _state(page)["frames"] >= 3)
    return process, page, folder / "saved"


@pytest.fixture(scope="module")
def looping(tmp_path_factory):
    """`vosrt live` on a looping clip, shared by the tests that leave it running: (process, page URL, save
    folder). It must still exit cleanly at the end."""
    process, page, saved = _start_looping(tmp_path_factory.mktemp("looping"))
    yield process, page, saved
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, "".join(process.output)


@pytest.fixture
def own_viewer(tmp_path):
    """Like ``looping``, a process of the test's own (which it may stop)."""
    process, page, saved = _start_looping(tmp_path)
    yield process, page, saved
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.parametrize("body", [
    b'{"box": [0, 0, 1e309, 50]}', b'{"box": [NaN, 0, 40, 40]}', b'{"box": [1e308, 0, 1e308, 9]}',
    b'{"point": [Infinity, 5]}', b'{"box": [-1e300, 0, 40, 40]}', b'{"id": ' + b"9" * 5000 + b', "box": [1,1,9,9]}',
    b'\xff\xfe{"box": 1}', b'{"box": [1, 2, 3'])
def test_a_hostile_selection_is_refused_and_inference_goes_on(looping, body):
    process, page, _ = looping
    code, reply = _request(page + "api/select", body)
    assert code == 400, reply
    before = _state(page)["frames"]
    _wait(lambda: _state(page)["frames"] >= before + 3, timeout=30)   # the inference thread is alive
    state = _state(page)
    assert not state["status"].startswith("inference stopped"), state
    code, reply = _request(page + "api/select", b'{"box": [10, 10, 40, 40]}')   # and still takes selections
    assert code == 200, reply


def test_a_request_naming_another_host_gets_nothing_from_a_loopback_viewer(looping):
    """DNS rebinding: a page at attacker.example whose name now resolves to 127.0.0.1 sends its own Host and
    Origin, which agree with each other."""
    _, page, _ = looping
    port = urlsplit(page).port
    evil = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
    assert _request(page + "api/pause", b"{}", evil)[0] == 421
    assert _request(page + "api/latest.jpg", None, {"Host": f"attacker.example:{port}"})[0] == 421
    assert _request(page + "api/state", None, {"Host": f"localhost:{port}"})[0] == 200
    assert not _state(page)["paused"]


def test_recording_switched_on_and_off_quickly_neither_crashes_nor_reuses_a_name(looping):
    """The server's thread closes the writer while the inference thread writes frames to it."""
    process, page, saved = looping
    names = []
    for _ in range(40):
        code, reply = _request(page + "api/record", b'{"on": true}')
        assert code == 200, reply
        names.append(json.loads(reply)["file"])
        time.sleep(0.02)
        assert _request(page + "api/record", b'{"on": false}')[0] == 200
    assert process.poll() is None, "".join(process.output)
    assert len(set(names)) == len(names)     # two recordings within a second get two files
    assert {p.name for p in saved.glob("*.mp4")} <= set(names)


def test_careless_record_and_select_requests_are_refused_or_said_as_they_are(looping):
    _, page, saved = looping
    # "false" as a string was true: a recording started
    code, reply = _request(page + "api/record", b'{"on": "false"}')
    assert code == 400 and b"'on' takes true or false" in reply, reply
    assert not _state(page)["recording"]
    # a box off the frame, or of no size, was answered ok with an id that was never tracked
    for box in (b"[1000, 1000, 10, 10]", b"[10, 10, 0, 0]", b"[40, 30, -30, -20]"):
        code, reply = _request(page + "api/select", b'{"box": ' + box + b"}")
        assert code == 400 and "lie inside the 128\u00d796 frame" in json.loads(reply)["error"], reply
    # a recording stopped before any frame came said "saved NAME (0 frames)" of a file never made
    assert _request(page + "api/pause", b"{}")[0] == 200
    try:
        code, reply = _request(page + "api/record", b'{"on": true}')
        assert code == 200, reply
        name = json.loads(reply)["file"]
        code, reply = _request(page + "api/record", b'{"on": false}')
        assert code == 200 and json.loads(reply)["file"] is None, reply
        assert _state(page)["message"] == "nothing recorded: no frame came while the recording was on"
        assert not (saved / name).exists()
    finally:
        _request(page + "api/resume", b"{}")


def test_a_recording_whose_folder_is_removed_is_said_so_and_not_listed_at_exit(own_viewer):
    # it said "--video: ... is incomplete ... (a full disk or a file size limit?)", of a flag not given, and the
    # broken file was listed at exit as a recording made
    import shutil

    process, page, saved = own_viewer
    code, reply = _request(page + "api/record", b'{"on": true}')
    assert code == 200, reply
    before = _state(page)["frames"]
    _wait(lambda: _state(page)["frames"] >= before + 3, timeout=30)
    shutil.rmtree(saved)
    code, reply = _request(page + "api/record", b'{"on": false}')
    error = json.loads(reply)["error"]
    assert code == 400 and error.startswith("--save-dir: ") and "was removed while the video was" in error, reply
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    assert process.returncode == 0 and "recording:" not in output, output


@pytest.mark.slow
def test_a_page_that_stops_reading_does_not_hold_up_the_exit(own_viewer):
    process, page, _ = own_viewer
    parts = urlsplit(page)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    stalled.sendall((f"GET /ws HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        time.sleep(12)                       # frames pile up until the server's sends block
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=30) == 0, "".join(process.output)
        assert time.monotonic() - started < 20
    finally:
        stalled.close()


def test_recording_after_the_stream_ended_is_refused(tmp_path):
    write_video(tmp_path / "clip.mp4", generate_sequence(22, num_frames=6, height=64, width=96, num_objects=1))
    process, page = start_live([str(PACKAGE), "--source", "clip.mp4", "--save-dir", "saved",
                                "--port", str(free_port())], cwd=tmp_path)
    try:
        _wait(lambda: _state(page)["ended"])
        _wait(lambda: _request(page + "api/record", b'{"on": true}')[0] == 400, timeout=10)
        code, reply = _request(page + "api/record", b'{"on": true}')
        assert "stream has ended" in json.loads(reply)["error"]
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process)
    assert process.returncode == 0 and "recording:" not in output, output
    assert not list((tmp_path / "saved").glob("*.mp4"))


@pytest.mark.parametrize("token", ["", "short", "abc+defgh12", "has space 12", "pässwörd123"])
def test_an_empty_short_or_unprintable_in_a_url_token_is_refused(tmp_path, token):
    # '+', '#', '&' or a space gave a printed ?token= URL that was refused (401); a non-ASCII one a page whose every
    # button answered 500 (the browser sends the header as Latin-1)
    write_video(tmp_path / "clip.mp4", generate_sequence(23, num_frames=3, height=64, width=96, num_objects=1))
    # a process (with a time limit), since a viewer that did start would serve until stopped
    done = subprocess.run(vosrt_command("live", str(PACKAGE), "--source", "clip.mp4", "--host", "0.0.0.0",
                                        "--token", token, "--port", str(free_port())),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--token" in done.stderr, done.stdout + done.stderr


def test_the_printed_url_of_an_ipv6_viewer_is_a_valid_url(tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    write_video(tmp_path / "clip.mp4", generate_sequence(24, num_frames=10, height=64, width=96, num_objects=1))
    process, page = start_live([str(PACKAGE), "--source", "clip.mp4", "--loop", "--host", "::1",
                                "--port", str(port)], cwd=tmp_path)
    try:
        assert page == f"http://[::1]:{port}/"
        assert _request(page + "api/state")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_a_client_that_goes_away_mid_request_leaves_no_traceback(tmp_path):
    """A page reloaded or closed (or a browser stopped with vosrt, as Ctrl-C in a terminal stops both) drops its
    connections under the server: a WebSocket handshake, or a command whose body had not all arrived. The
    ConnectionResetError raised in the handler was logged by aiohttp as "Error handling request" with its
    traceback (the body read every time; the handshake when the reset came before its reply)."""
    process, page, _ = _start_looping(tmp_path)
    parts = urlsplit(page)

    def reset_after(request: bytes) -> None:
        client = socket.create_connection((parts.hostname, parts.port))
        client.sendall(request)
        if b"Content-Length" in request:
            time.sleep(0.5)     # the handler is waiting for the rest of the body (a reset before it reads it is
                                # an incomplete body, refused quietly as bad JSON)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close with a reset
        client.close()

    try:
        reset_after((f"POST /api/select HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 100\r\n\r\n{{\"box\"").encode())
        for _ in range(30):
            key = base64.b64encode(os.urandom(16)).decode()
            reset_after((f"GET /ws HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        assert _state(page)["frames"] > 0                     # still serving
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process)
    assert process.returncode == 0 and "Traceback" not in output and "Error handling" not in output, output


def test_a_save_folder_that_cannot_be_made_is_a_clear_error_on_the_page(tmp_path):
    # snapshot and record raised the OSError of making --save-dir: a 500 with a traceback on the server, and
    # "Internal Server Error" on the page
    (tmp_path / "saved").write_text("a file where the folder should be")
    process, page, _ = _start_looping(tmp_path)
    try:
        for command, body in (("snapshot", b"{}"), ("record", b'{"on": true}')):
            code, reply = _request(page + "api/" + command, body)
            assert code == 400, reply
            assert json.loads(reply)["error"].startswith("--save-dir: cannot make folder saved: "), reply
        before = _state(page)["frames"]
        _wait(lambda: _state(page)["frames"] > before + 2)
        assert not _state(page)["recording"]
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process)
    assert process.returncode == 0 and "Traceback" not in output, output
