"""Reading photos: EXIF orientation applied as viewers apply it, every format and depth as before, and
the same pixels from the decoding worker processes (photos/decode.py) as from io.read_image."""
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import ASSETS
from PIL import Image, ImageOps

from rapidpose.errors import InputError, RapidPoseError
from rapidpose.io import decode_image, exif_orientation, read_image
from rapidpose.photos import decode
from rapidpose.photos.decode import DecodePool, GpuJpegDecoder, gpu_decoding_unavailable

COCO_MMPOSE = sorted((ASSETS / "images" / "coco-mmpose").glob("*.jpg"))
COCO_MINI = sorted((ASSETS / "images" / "coco-mini" / "images").glob("*.jpg"))
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def pool():
    with DecodePool(workers=2, window=8) as pool:
        yield pool


@pytest.fixture(scope="module")
def photo():
    """A real photo, cropped to an asymmetric shape, so that any wrong turn or flip shows."""
    return Image.open(COCO_MMPOSE[0]).convert("RGB").crop((40, 30, 360, 230))  # 320 x 200


def save_turned(photo, path, orientation, **options):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    photo.save(path, exif=exif, **options)
    return path


def todays_reader(path) -> np.ndarray:
    """io.read_image before EXIF orientation: the same pixels for every file without an orientation tag."""
    from rapidpose.io import as_rgb

    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return as_rgb(image)


def as_viewers_show(path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


FORMATS = {"jpeg": ("jpg", dict(quality=92)), "png": ("png", {}), "webp": ("webp", dict(lossless=True)),
           "tiff": ("tif", dict(compression="tiff_lzw"))}


@pytest.mark.parametrize("orientation", [3, 6, 8, 2, 4, 5, 7])
@pytest.mark.parametrize("kind", list(FORMATS))
def test_exif_orientation_is_applied_as_viewers_show_it(photo, tmp_path, pool, kind, orientation):
    suffix, options = FORMATS[kind]
    path = save_turned(photo, tmp_path / f"turned-{orientation}.{suffix}", orientation, **options)
    assert exif_orientation(path.read_bytes()) == orientation
    shown = as_viewers_show(path)
    assert shown.shape[:2] == ((320, 200) if orientation >= 5 else (200, 320))  # PIL turned it
    got = read_image(path)
    assert got.shape == shown.shape
    if kind == "jpeg":  # two libjpeg builds may round an odd pixel differently; a wrong turn differs everywhere
        assert np.abs(got.astype(int) - shown).mean() < 0.5
    else:
        np.testing.assert_array_equal(got, shown)
    [(_, pooled)] = list(pool.map([path]))
    np.testing.assert_array_equal(pooled, got)
    np.testing.assert_array_equal(decode_image(path.read_bytes(), path), got)


def test_opencvs_own_readers_agree_on_orientation(photo, tmp_path):
    """cv2.imread and cv2.imdecode with IMREAD_COLOR turn JPEGs by their EXIF tag; IMREAD_UNCHANGED (what
    read_image decodes with, to keep depth and alpha) does not, so read_image turns them itself."""
    path = save_turned(photo, tmp_path / "six.jpg", 6, quality=92)
    data = np.frombuffer(path.read_bytes(), np.uint8)
    ours = read_image(path)
    for bgr in (cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.imdecode(data, cv2.IMREAD_COLOR)):
        np.testing.assert_array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ours)
    assert cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape[:2] == (200, 320)  # as stored, not as shown


def test_the_orientation_tag_is_found_in_either_byte_order_and_nonsense_is_ignored(photo, tmp_path):
    def jpeg_with(tiff: bytes) -> bytes:
        plain = tmp_path / "plain.jpg"
        photo.save(plain)
        data = plain.read_bytes()
        segment = b"Exif\x00\x00" + tiff
        return data[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + data[2:]

    big_endian = b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + \
        (ORIENTATION).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + \
        (8).to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
    data = jpeg_with(big_endian)
    assert exif_orientation(data) == 8
    assert decode_image(data).shape == (320, 200, 3)
    assert exif_orientation(jpeg_with(big_endian[:-10])) == 1  # cut short: no tag, no exception
    nine = big_endian.replace((8).to_bytes(2, "big") + b"\x00\x00", (9).to_bytes(2, "big") + b"\x00\x00")
    assert exif_orientation(jpeg_with(nine)) == 1  # not an orientation
    assert exif_orientation(jpeg_with(b"garbage")) == 1
    photo.save(tmp_path / "untagged.jpg")
    assert exif_orientation((tmp_path / "untagged.jpg").read_bytes()) == 1
    assert exif_orientation(b"") == 1 and exif_orientation(b"\xff\xd8\xff") == 1


def test_every_format_depth_and_channel_count_reads_as_before(photo, tmp_path, pool):
    """PNG, WebP, BMP, TIFF, JPEG from a real photo; gray, alpha and 16 bits as as_rgb converts them."""
    rgb = np.asarray(photo)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    alpha = np.linspace(1, 255, rgb.shape[1], dtype=np.uint8)[None].repeat(rgb.shape[0], 0)
    rgba = np.dstack([rgb, alpha])
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    wide = rgb.astype(np.uint16) * 257 + np.arange(rgb.shape[1], dtype=np.uint16)[None, :, None] % 200
    cases = {}
    for suffix in ("png", "bmp", "tif", "webp"):
        cv2.imwrite(str(tmp_path / f"cv.{suffix}"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == "webp" else [])
        cases[f"cv.{suffix}"] = rgb
    for suffix, options in (("png", {}), ("webp", dict(lossless=True)), ("tif", {}), ("bmp", {})):
        photo.save(tmp_path / f"pil.{suffix}", **options)
        cases[f"pil.{suffix}"] = rgb
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cases["gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    cv2.imwrite(str(tmp_path / "gray.jpg"), gray)
    cases["gray.jpg"] = np.repeat(cv2.imread(str(tmp_path / "gray.jpg"), cv2.IMREAD_GRAYSCALE)[:, :, None], 3, axis=2)
    for suffix, options in (("png", {}), ("webp", dict(lossless=True, exact=True)), ("tif", {})):
        Image.fromarray(rgba).save(tmp_path / f"rgba.{suffix}", **options)
        cases[f"rgba.{suffix}"] = rgb  # alpha dropped, colour kept
    cases["rgba.tif"] = None  # OpenCV reads a TIFF's (unassociated) alpha through libtiff, premultiplied: as before
    for suffix in ("png", "tif"):
        cv2.imwrite(str(tmp_path / f"16bit.{suffix}"), cv2.cvtColor(wide, cv2.COLOR_RGB2BGR))
        cases[f"16bit.{suffix}"] = (wide >> 8).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "16bit-gray.png"), wide[:, :, 1])
    cases["16bit-gray.png"] = np.repeat((wide[:, :, 1] >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    photo.save(tmp_path / "photo.jpg", quality=90)
    cases["photo.jpg"] = cv2.cvtColor(cv2.imread(str(tmp_path / "photo.jpg")), cv2.COLOR_BGR2RGB)

    paths = [tmp_path / name for name in cases]
    for (path, pooled), (name, want) in zip(pool.map(paths), cases.items()):
        assert path.name == name
        got = read_image(path)
        want = todays_reader(path) if want is None else want
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(got, todays_reader(path), err_msg=name)
        np.testing.assert_array_equal(pooled, got, err_msg=name)


def test_pool_gives_read_images_pixels_exactly_in_input_order(pool):
    paths = COCO_MMPOSE + COCO_MINI
    got = list(pool.map(iter(paths)))  # any iterable, read a window ahead
    assert [p for p, _ in got] == paths
    for path, image in got:
        want = read_image(path)
        np.testing.assert_array_equal(image, want, err_msg=str(path))
        np.testing.assert_array_equal(want, todays_reader(path))  # no orientation tag: as before
    assert pool.on_threads is None and len(pool.pids()) == 2


def test_bad_files_come_back_as_their_errors_in_their_place(pool, tmp_path):
    good = COCO_MMPOSE[0]
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    bad = [tmp_path / n for n in ("missing.jpg", "text.jpg", "empty.png", "folder.jpg")]
    paths = [good, *bad, tmp_path / "truncated.jpg", good]
    results = list(pool.map(paths))
    assert [p for p, _ in results] == paths
    for path, result in results[1:5]:
        assert isinstance(result, InputError) and path.name in str(result), (path, result)
        with pytest.raises(InputError) as raised:
            read_image(path)
        assert str(result) == str(raised.value)  # read_image's own error, word for word
    truncated = results[5][1]  # OpenCV may keep the rows before the cut, or say it is truncated
    assert isinstance(truncated, np.ndarray) or "truncated JPEG" in str(truncated)
    for _, image in (results[0], results[-1]):
        np.testing.assert_array_equal(image, read_image(good))
    named = list(pool.map_data([("in memory.jpg", data), ("nothing.jpg", b"")]))
    np.testing.assert_array_equal(named[0][1], read_image(good))
    assert isinstance(named[1][1], InputError) and "nothing.jpg" in str(named[1][1])


def test_an_abandoned_map_leaves_nothing_behind(pool):
    for i, _ in enumerate(pool.map(COCO_MINI)):
        if i == 2:
            break
    backend = pool._backend  # white box: the answers still in flight are dropped as they come, not kept
    deadline = time.monotonic() + 30
    while (backend._results or backend._dropped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not backend._results and not backend._dropped
    got = list(pool.map(COCO_MMPOSE))
    assert [p for p, _ in got] == COCO_MMPOSE
    for path, image in got:
        np.testing.assert_array_equal(image, read_image(path))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_a_worker_that_dies_on_a_file_costs_that_file_alone(tmp_path):
    """A file that kills its worker is reported by name; the worker is replaced and the rest goes on.
    (A named pipe stands for such a file: its worker waits on it until the test kills the worker.)"""
    os.mkfifo(tmp_path / "stuck.jpg")
    paths = [COCO_MMPOSE[0], tmp_path / "stuck.jpg", COCO_MMPOSE[1], COCO_MMPOSE[2]]

    def unstick():  # should a worker still wait on the pipe (a broken pool), feed it: a failure, not a hang
        try:
            pipe = os.open(tmp_path / "stuck.jpg", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # nobody reads it: nothing waits on it
        os.write(pipe, b"not an image")
        os.close(pipe)

    timer = threading.Timer(30, unstick)
    timer.start()
    with DecodePool(workers=1, window=8) as one:
        results = one.map(paths)
        path, image = next(results)
        np.testing.assert_array_equal(image, read_image(path))
        [pid] = one.pids()
        os.kill(pid, signal.SIGKILL)
        path, error = next(results)
        assert path.name == "stuck.jpg" and isinstance(error, InputError)
        assert "stuck.jpg" in str(error) and "signal 9" in str(error)
        for path, image in results:
            np.testing.assert_array_equal(image, read_image(path))
        assert len(one.pids()) == 1 and one.pids() != [pid] and one.on_threads is None
    timer.cancel()


def test_workers_need_no_main_module_to_import(tmp_path):
    """Workers are fresh interpreters that import only rapidpose: a script with no `__main__` guard, whose
    file is gone by the time workers start, still decodes on processes (multiprocessing's spawn and
    forkserver would run the script again in each worker, or fail to find it)."""
    script = tmp_path / "no_guard.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        os.remove(__file__)
        from rapidpose.photos.decode import DecodePool
        paths = {[str(p) for p in COCO_MMPOSE]!r}
        pool = DecodePool(workers=2)
        shapes = [image.shape for _, image in pool.map(paths)]
        print("ran once", pool.on_threads, shapes)
        pool.close()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ran once") == 1 and "ran once None" in done.stdout
    assert str([read_image(p).shape for p in COCO_MMPOSE]) in done.stdout


def test_without_worker_processes_it_decodes_on_threads_and_says_why_once(monkeypatch, caplog):
    monkeypatch.setattr(decode, "_said", set())
    monkeypatch.setattr(sys, "executable", "/bin/false")  # workers that exit before they are ready
    caplog.set_level(logging.INFO, logger="rapidpose")
    for _ in range(2):
        with DecodePool(workers=2) as threads:
            for path, image in threads.map(COCO_MMPOSE):
                np.testing.assert_array_equal(image, read_image(path))
            assert "before it was ready" in threads.on_threads and threads.pids() == []
    said = [r for r in caplog.records if "decoded on threads" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    with DecodePool(workers=2, processes=False) as threads:
        assert [p for p, _ in threads.map(COCO_MMPOSE)] == COCO_MMPOSE and threads.pids() == []


def test_the_gpu_decoder_without_a_gpu_decodes_on_the_cpu_and_says_why_once(monkeypatch, caplog, pool):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.setattr(decode, "_said", set())
    caplog.set_level(logging.INFO, logger="rapidpose")
    data = [p.read_bytes() for p in COCO_MMPOSE] + [b"not an image"]
    for _ in range(2):
        gpu = GpuJpegDecoder("cuda", pool=pool)
        assert "CUDA" in gpu.reason and gpu.device.type == "cpu"
        images = gpu.decode(data, [p.name for p in COCO_MMPOSE] + ["junk.jpg"])
        for path, image in zip(COCO_MMPOSE, images):
            assert image.dtype == torch.uint8
            np.testing.assert_array_equal(image.numpy(), read_image(path))
        assert isinstance(images[-1], RapidPoseError) and "junk.jpg" in str(images[-1])
    said = [r for r in caplog.records if "decoded on the CPU" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    mapped = list(gpu.map([*COCO_MMPOSE, COCO_MMPOSE[0].parent / "missing.jpg"], batch_size=3))
    assert [p for p, _ in mapped] == [*COCO_MMPOSE, COCO_MMPOSE[0].parent / "missing.jpg"]
    assert isinstance(mapped[-1][1], InputError) and "missing.jpg" in str(mapped[-1][1])
    np.testing.assert_array_equal(mapped[0][1].numpy(), read_image(COCO_MMPOSE[0]))


def test_the_gpu_decoder_says_what_is_missing(monkeypatch):
    torch = pytest.importorskip("torch")
    assert "not a CUDA device" in gpu_decoding_unavailable("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # as if not installed
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "pip install 'rapidpose[gpu-decode]'" in gpu_decoding_unavailable("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "pip install 'nvidia-nvimgcodec-cu12[nvjpeg]'" in gpu_decoding_unavailable("cuda")


def _nvimgcodec_missing():
    try:
        import torch
    except ImportError:
        return "needs torch"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return gpu_decoding_unavailable("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(_nvimgcodec_missing() is not None, reason=f"{_nvimgcodec_missing()}")
def test_jpegs_decoded_on_the_gpu_look_like_the_cpus(photo, tmp_path):
    import torch

    turned = [save_turned(photo, tmp_path / f"turned-{o}.jpg", o, quality=92) for o in (3, 6, 8)]
    photo.save(tmp_path / "lossless.png")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    paths = [*COCO_MMPOSE, *COCO_MINI[:12], *turned, tmp_path / "lossless.png", tmp_path / "junk.jpg"]
    with GpuJpegDecoder("cuda", workers=2) as gpu:
        assert gpu.reason is None
        results = list(gpu.map(paths, batch_size=8))
        assert gpu.decoded_on_gpu == len(paths) - 2  # every real JPEG; the PNG and the junk went to the CPU
    assert [p for p, _ in results] == paths
    for path, image in results[:-1]:
        want = read_image(path)
        assert isinstance(image, torch.Tensor) and image.is_cuda and image.dtype == torch.uint8, path
        assert tuple(image.shape) == want.shape, path  # turned as the CPU turns it
        diff = np.abs(image.cpu().numpy().astype(int) - want)
        if path.suffix == ".png":
            assert diff.max() == 0
        else:  # nvJPEG's IDCT and upsampling round differently from libjpeg-turbo's; a wrong turn is far off
            assert diff.mean() < 2.0 and np.mean(diff > 16) < 0.01, (path, diff.mean(), np.mean(diff > 16))
    assert isinstance(results[-1][1], InputError) and "junk.jpg" in str(results[-1][1])
