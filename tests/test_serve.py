"""rapidpose serve: answers equal offline predict, dynamic batching across clients under load, every error
path answered and survived, health and metrics, graceful shutdown. Servers run in-process on a free
loopback port (one test starts the command itself, to send it SIGTERM); nothing leaves this machine."""
import contextlib
import functools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ASSETS, RTMDET

from rapidpose.io import read_image
from rapidpose.serve import Batcher, Upload, bind, header, make_app, make_server, predict_uploads, url_of
from rapidpose.topdown.estimator import PoseEstimator

IMAGES = ASSETS / "images"
PHOTOS = sorted((IMAGES / "coco-mmpose").glob("*.jpg")) + sorted((IMAGES / "coco-val2017-100").glob("*.jpg"))[:26]
LIMIT = 1 << 20  # the body limit of the shared server: every photo is under it
BOXES = [[280.0, 40.0, 490.0, 380.0, 0.9], [60.0, 70.0, 200.0, 400.0]]


@contextlib.contextmanager
def running(app):
    """`app` served by uvicorn on a thread, on a free loopback port: (base url, uvicorn server)."""
    sock = bind("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock), server
    finally:
        server.should_exit = True  # what SIGINT / SIGTERM do
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint, tmp_path_factory):
    """The tiny model through ONNX Runtime, whose CPU kernels give each crop the same heatmaps in any batch
    (torch's batch of one differs by 3e-7, which DARK turns into 0.06 px where a random network's heatmap
    is nearly flat): a server's batches, made of whoever came together, can then equal offline exactly."""
    from rapidpose.deploy.export import export_onnx
    from rapidpose.model.weights import load_model

    onnx = export_onnx(load_model(tiny_checkpoint, "cpu"), tmp_path_factory.mktemp("serve") / "tiny.onnx")
    return PoseEstimator(onnx, detector=str(RTMDET), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def offline(estimator):
    """Offline PoseEstimator.predict of every photo, detector boxes: {file name: Poses}."""
    poses = estimator.predict([read_image(p) for p in PHOTOS])
    return {p.name: r for p, r in zip(PHOTOS, poses)}


@pytest.fixture(scope="module")
def served(estimator, offline):  # offline first: the estimator is the server's worker from here on
    """The server as a GPU host runs it: uploads decoded by worker processes (the command's threads,
    what it does on CPUs, are test_the_command_serves_and_stops_on_sigterm's)."""
    from rapidpose.photos.decode import DecodePool

    batcher = Batcher([functools.partial(predict_uploads, estimator)], max_batch_size=16, max_wait=0.005,
                      queue_size=64)
    info = {**header(estimator, "vitpose-tiny"), "server": {"max_batch_size": 16}}
    with DecodePool(workers=2) as pool, running(make_app(batcher, info, max_body_bytes=LIMIT,
                                                         decode=pool.decode)) as (url, _):
        assert pool.decode(PHOTOS[0].read_bytes()).shape == read_image(PHOTOS[0]).shape
        assert pool.on_threads is None and len(pool.pids()) == 2  # the processes, not the thread fallback
        yield url


def post(url, path: Path, boxes=None, form=False, client=httpx):
    """POST /predict with a photo: its raw bytes as the body, or the file field of a multipart form."""
    data = path.read_bytes()
    if form:
        fields = {} if boxes is None else {"boxes": json.dumps(boxes)}
        return client.post(f"{url}/predict", files={"image": (path.name, data, "image/jpeg")}, data=fields, timeout=60)
    params = {} if boxes is None else {"boxes": json.dumps(boxes)}
    return client.post(f"{url}/predict", content=data, params=params, headers={"content-type": "image/jpeg"},
                       timeout=60)


def assert_same(answer: dict, poses, name: str, size):
    """An answer is the photo_record of the offline poses: keypoints within 1e-3 px of them, past the
    JSON's own rounding (0.01 px, scores 1e-4)."""
    assert answer["image"] == name and (answer["width"], answer["height"]) == size
    assert len(answer["people"]) == len(poses), f"{name}: {len(answer['people'])} people, offline {len(poses)}"
    for person, box, box_score, keypoints, scores in zip(answer["people"], poses.boxes, poses.box_scores,
                                                         poses.keypoints, poses.keypoint_scores):
        np.testing.assert_allclose(person["box"], box, atol=0.005 + 1e-3, err_msg=name)
        assert abs(person["box_score"] - box_score) < 5e-5 + 1e-4
        got = np.asarray(person["keypoints"])
        np.testing.assert_allclose(got[:, :2], keypoints, atol=0.005 + 1e-3, err_msg=name)
        np.testing.assert_allclose(got[:, 2], scores, atol=5e-5 + 1e-4, err_msg=name)


def metric(text: str, name: str, **labels) -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))).strip(",") == want:
            return float(m.group(3))
    return 0.0


# ---------------------------------------------------------------- answers

def test_answers_equal_offline_predict(served, offline, estimator):
    path = PHOTOS[0]
    image = read_image(path)
    size = (image.shape[1], image.shape[0])
    raw = post(served, path)
    assert raw.status_code == 200, raw.text
    assert len(offline[path.name]) > 0  # the detector found people: the comparison means something
    assert_same(raw.json(), offline[path.name], "upload", size)  # a raw body has no file name
    assert_same(post(served, path, form=True).json(), offline[path.name], path.name, size)

    # boxes given (query parameter and form field): the detector is not asked; a box without a score has 1
    (given,) = estimator.predict([image], [np.array([BOXES[0], BOXES[1] + [1.0]], np.float32)])
    for form in (False, True):
        answer = post(served, path, boxes=BOXES, form=form)
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), given, path.name if form else "upload", size)
        assert [p["box"] for p in answer.json()["people"]] == [b[:4] for b in BOXES]
    assert post(served, path, boxes=[]).json()["people"] == []  # no boxes: nobody


def test_concurrent_clients_get_their_own_answers_in_shared_batches(served, offline):
    """12 clients, 60 requests over 30 photos (each twice), on loopback: every answer is its photo's
    offline result, none lost, and requests of several clients shared model calls."""
    before = httpx.get(f"{served}/metrics").text
    jobs = [PHOTOS[i % len(PHOTOS)] for i in range(60)]

    def client(k):
        with httpx.Client(timeout=60) as session:
            return [(path, post(served, path, form=True, client=session)) for path in jobs[k::12]]

    with ThreadPoolExecutor(12) as pool:
        answers = [a for part in pool.map(client, range(12)) for a in part]
    assert len(answers) == 60
    for path, answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert_same(body, offline[path.name], path.name, (body["width"], body["height"]))
    after = httpx.get(f"{served}/metrics").text
    count = functools.partial(metric, endpoint="/predict", code="200")
    assert metric(after, "rapidpose_requests_total", **count.keywords) - \
        metric(before, "rapidpose_requests_total", **count.keywords) == 60
    batches = metric(after, "rapidpose_batch_size_count") - metric(before, "rapidpose_batch_size_count")
    images = metric(after, "rapidpose_batch_size_sum") - metric(before, "rapidpose_batch_size_sum")
    singles = metric(after, "rapidpose_batch_size_bucket", le="1.0") - metric(before, "rapidpose_batch_size_bucket", le="1.0")
    assert images == 60 and batches < 60 and singles < batches, (images, batches, singles)  # batches above 1


# ---------------------------------------------------------------- errors, each answered and survived

@pytest.mark.parametrize("send, status, says", [
    (dict(content=b"\x00garbage, not a picture", headers={"content-type": "image/jpeg"}), 422,
     "could not be decoded as an image"),
    (dict(content=(IMAGES / "coco-mmpose" / "000000000785.jpg").read_bytes()[:5000],
          headers={"content-type": "image/jpeg"}), 422, "truncated JPEG"),
    (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "the request has no image"),
    (dict(files={"other": ("a.jpg", b"xx", "image/jpeg")}), 400, "the form has no field 'image'"),
    (dict(files={"image": ("a.jpg", b"", "image/jpeg")}), 400, "the request has no image"),
    (dict(content=b"{}", headers={"content-type": "application/json"}), 415, "Content-Type 'application/json'"),
    (dict(content=b"x", headers={"content-type": "multipart/form-data"}), 400, "multipart form could not be read"),
])
def test_bad_images_get_4xx_naming_the_fault(served, send, status, says):
    answer = httpx.post(f"{served}/predict", timeout=60, **send)
    assert answer.status_code == status and says in answer.json()["error"], answer.text
    assert post(served, PHOTOS[0]).status_code == 200  # and the server goes on


@pytest.mark.parametrize("boxes, status, says", [
    ("[[1, 2, 3]]", 400, "box 0 is [1, 2, 3]"),
    ("[[1, 2, 30, 40], [1, 2, \"x\", 4]]", 400, "box 1 is"),
    ("{\"x1\": 1}", 400, "boxes are a JSON dict, not a list"),
    ("[[1, 2, 30, 40]", 400, "boxes are not JSON"),
    ("[[10, 20, 5, 40]]", 422, "box 0 [10, 20, 5, 40] has no area"),
    ("[[NaN, 20, 50, 40]]", 422, "is not finite"),
    ("[[1e400, 20, 50, 40]]", 422, "is not finite"),
    ("[[10, 20, 50, 1" + "0" * 400 + "]]", 422, "too large"),
    ("[[700, 20, 900, 400]]", 422, "box 0 [700, 20, 900, 400] lies outside the 640x425 image"),
])
def test_malformed_boxes_get_4xx_naming_the_box(served, boxes, status, says):
    path = IMAGES / "coco-mmpose" / "000000000785.jpg"
    for answer in (httpx.post(f"{served}/predict", params={"boxes": boxes}, content=path.read_bytes(), timeout=60),
                   httpx.post(f"{served}/predict", files={"image": (path.name, path.read_bytes())},
                              data={"boxes": boxes}, timeout=60)):
        assert answer.status_code == status and says in answer.json()["error"], answer.text
    assert post(served, path).status_code == 200


def test_an_oversized_body_gets_413_and_the_server_goes_on(served):
    big = b"\xff\xd8" + bytes(LIMIT)  # just over the limit
    with httpx.Client(timeout=60) as session:  # 8 MB: answered before it is read, the connection kept
        declared = session.post(f"{served}/predict", content=bytes(8 * LIMIT), headers={"content-type": "image/jpeg"})
        assert declared.status_code == 413 and "over this server's limit of 1 MB" in declared.json()["error"]
        assert post(served, PHOTOS[0], client=session).status_code == 200

    def chunks():  # no Content-Length: the limit is found while the body streams in
        for _ in range(4):
            yield bytes(LIMIT // 3)

    streamed = httpx.post(f"{served}/predict", content=chunks(), headers={"content-type": "image/jpeg"}, timeout=60)
    assert streamed.status_code == 413 and "more than 1,048,576 bytes" in streamed.json()["error"]
    form = httpx.post(f"{served}/predict", files={"image": ("big.jpg", big, "image/jpeg")}, timeout=60)
    assert form.status_code == 413
    assert post(served, PHOTOS[1]).status_code == 200


def test_a_model_exception_fails_its_batch_only(served, estimator, monkeypatch):
    real = estimator.predict
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (a test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(estimator, "predict", fails_once)
    failed = post(served, PHOTOS[0])
    assert failed.status_code == 500
    assert "RuntimeError: out of memory (a test)" in failed.json()["error"] and "send the image again" in failed.json()["error"]
    assert post(served, PHOTOS[0]).status_code == 200  # the next batch runs
    metrics = httpx.get(f"{served}/metrics").text
    assert metric(metrics, "rapidpose_batch_failures_total") >= 1
    assert metric(metrics, "rapidpose_requests_total", endpoint="/predict", code="500") >= 1


class Gate:
    """A stand-in model that holds each batch until the test opens the gate."""

    def __init__(self):
        self.entered, self.open, self.batches = threading.Semaphore(0), threading.Event(), []

    def __call__(self, uploads):
        self.batches.append(len(uploads))
        self.entered.release()
        assert self.open.wait(30)
        return [{"image": u.name, "width": u.image.shape[1], "height": u.image.shape[0], "people": []} for u in uploads]


def test_a_full_queue_gets_503_with_retry_after_at_once():
    gate = Gate()
    batcher = Batcher([gate], max_batch_size=1, max_wait=0, queue_size=1)
    photo = PHOTOS[0]
    with running(make_app(batcher, {}, max_body_bytes=LIMIT)) as (url, _), ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, photo)
        assert gate.entered.acquire(timeout=30)  # the worker holds the first request
        second = pool.submit(post, url, photo)
        deadline = time.monotonic() + 30
        while batcher.depth < 1:  # the second waits in the queue, which is now full
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start = time.monotonic()
        refused = post(url, photo)
        assert time.monotonic() - start < 2  # at once, no hang
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "1 requests are waiting already (--queue-size)" in refused.json()["error"]
        assert metric(httpx.get(f"{url}/metrics").text, "rapidpose_queue_depth") == 1
        gate.open.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert post(url, photo).status_code == 200  # room again
        assert gate.batches == [1, 1, 1]

        batcher.close()  # as at shutdown: no new work
        assert httpx.get(f"{url}/health").status_code == 503
        closing = post(url, photo)
        assert closing.status_code == 503 and "shutting down" in closing.json()["error"]


def test_shutdown_answers_the_requests_in_hand():
    gate = Gate()
    batcher = Batcher([gate], max_wait=0)
    with ThreadPoolExecutor(1) as pool, running(make_app(batcher, {})) as (url, server):
        pending = pool.submit(post, url, PHOTOS[0])
        assert gate.entered.acquire(timeout=30)
        server.should_exit = True  # SIGTERM's doing
        time.sleep(0.2)
        gate.open.set()
        answer = pending.result(timeout=30)
    assert answer.status_code == 200 and answer.json()["image"] == "upload"
    assert not batcher.alive


# ---------------------------------------------------------------- health, info, metrics

def test_health_info_and_metrics(served):
    assert httpx.get(f"{served}/health").json() == {"status": "ok", "workers": 1}
    info = httpx.get(f"{served}/info").json()
    assert info["model"] == "vitpose-tiny" and info["name"] == "coco" and len(info["keypoint_names"]) == 17
    assert info["skeleton"][0] == [15, 13] and info["server"] == {"max_batch_size": 16}
    assert httpx.get(f"{served}/nowhere").json() == {"error": "Not Found"}
    httpx.post(f"{served}/predict", content=b"junk", headers={"content-type": "image/png"})
    answer = httpx.get(f"{served}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    for name, kind in [("rapidpose_requests", "counter"), ("rapidpose_request_seconds", "histogram"),
                       ("rapidpose_batch_size", "histogram"), ("rapidpose_batch_seconds", "histogram"),
                       ("rapidpose_queue_depth", "gauge")]:
        assert re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.M), name  # counters: _total in newer clients
    assert metric(text, "rapidpose_requests_total", endpoint="/predict", code="422") >= 1
    assert metric(text, "rapidpose_requests_total", endpoint="other", code="404") >= 1
    assert metric(text, "rapidpose_requests_total", endpoint="/health", code="200") >= 1
    assert metric(text, "rapidpose_request_seconds_count") >= 1 and metric(text, "rapidpose_queue_depth") == 0


# ---------------------------------------------------------------- the command

def test_the_command_serves_and_stops_on_sigterm(tiny_checkpoint, tmp_path):
    command = [sys.executable, "-m", "rapidpose", "serve", "--model", str(tiny_checkpoint), "--detector", "none",
               "--device", "cpu", "--backend", "torch", "--precision", "fp32", "--port", "0"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        said = ""
        while not (found := re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", said)):
            line = process.stderr.readline()
            assert line, f"the server ended before it listened: {said}"
            said += line
        url = found.group(1)
        answer = post(url, PHOTOS[0])
        assert answer.status_code == 200 and len(answer.json()["people"]) == 1  # no detector: the whole image
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM  # after shutting down, it ends as the signal asks
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_port_in_use_stops_the_command_before_the_model_loads(capsys):
    from rapidpose.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "no-such-model", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1 port {port}" in err and "no-such-model" not in err


def test_every_serve_option_has_help_that_shows_its_default():
    import argparse

    from rapidpose.cli.serve import add_serve_parser

    sub = argparse.ArgumentParser().add_subparsers()
    add_serve_parser(sub)
    parser = sub.choices["serve"]
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and action.default not in (None, False):
            value = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
            assert f"default {value}" in " ".join(action.help.split()), action.option_strings


def test_uploads_without_boxes_are_detected_together_with_boxes_given(estimator, offline):
    """A batch mixing uploads with and without boxes: one est.detect for those without, one predict."""
    a, b = (read_image(p) for p in PHOTOS[:2])
    given = np.array([BOXES[0]], np.float32)
    records = predict_uploads(estimator, [Upload(a, "a"), Upload(b, "b", given)])
    assert_same(records[0], offline[PHOTOS[0].name], "a", (a.shape[1], a.shape[0]))
    assert [p["box"] for p in records[1]["people"]] == [BOXES[0][:4]]


def test_uploads_are_decoded_by_processes_beside_a_gpu_and_on_threads_beside_a_cpu():
    from rapidpose.cli.serve import _decode_pool
    from rapidpose.photos.decode import default_workers

    assert _decode_pool(None, on_gpu=False) is None and _decode_pool(0, on_gpu=True) is None
    for asked, on_gpu, count in ((None, True, default_workers()), (3, False, 3)):
        pool = _decode_pool(asked, on_gpu)
        try:
            assert pool.workers == count
        finally:
            pool.close()
