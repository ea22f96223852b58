"""A chunk's crops in one Triton kernel (topdown/crop_kernel.py): the crop table, the upload's layout, and on
GPUs (or by Triton's interpreter without one) the crops of cv2 and of the torch warp from regions packed in one
buffer."""
import numpy as np
import pytest
import torch
from conftest import GPU, INTERPRETED_TRITON
from test_gpu_ops import BOXES, LEVEL, cv2_warp_is_float_bilinear, photo  # noqa: F401 (photo: a fixture)

from rapidpose.topdown import crop_kernel
from rapidpose.topdown.geometry import boxes_to_center_scale, normalize_crops, udp_matrices, warp_crops
from rapidpose.topdown.gpu_ops import PinnedUploader, crop_regions, inverse_affines, warp_crops_batch


def chunk(photo):
    """Four images (a strided view and a 1-pixel-high one among them), their crops' regions and matrices."""
    small, tiny = np.ascontiguousarray(photo[50:300, 100:500]), np.full((1, 3, 3), 200, np.uint8)
    images = [photo, small, photo[:, ::-1], tiny]
    boxes = np.concatenate([BOXES, BOXES[3:5], BOXES[:2], [[-1, -1, 2, 1]]])
    counts = [len(BOXES), 2, 2, 1]
    matrices = udp_matrices(*boxes_to_center_scale(boxes))
    views, moved = crop_regions(images, matrices, counts)
    return images, matrices, counts, views, moved


def test_the_upload_layout_aligns_every_array():
    offsets, total = PinnedUploader.layout([10, 64, 0, 65, 1])
    assert offsets == [0, 64, 128, 128, 256] and total == 320


def test_the_crop_table_holds_each_crops_inverse_and_its_regions_place(photo):
    _, _, counts, views, moved = chunk(photo)
    offsets, _ = PinnedUploader.layout([v.nbytes for v in views])
    table = crop_kernel.crop_table(moved, views, counts, offsets)
    assert table.shape == (len(moved), crop_kernel.TABLE_COLUMNS) and table.dtype == np.float64
    assert np.array_equal(table[:, :6], inverse_affines(moved).reshape(-1, 6))
    owner = np.repeat(np.arange(len(views)), counts)  # the region each crop reads
    assert np.array_equal(table[:, 6], np.asarray(offsets, np.float64)[owner])
    assert np.array_equal(table[:, 7:], np.array([v.shape[:2] for v in views], np.float64)[owner])


def test_no_kernel_off_the_gpu():
    assert not crop_kernel.available("cpu")


def packed_on(views, moved, counts, device="cuda"):
    offsets, total = PinnedUploader.layout([v.nbytes for v in views])
    buffer = np.zeros(total, np.uint8)
    for view, start in zip(views, offsets):
        buffer[start:start + view.nbytes] = np.ascontiguousarray(view).ravel()
    table = crop_kernel.crop_table(moved, views, counts, offsets)
    return torch.from_numpy(buffer).to(device), torch.from_numpy(table).to(device)


@pytest.mark.parametrize("device, mean", [
    pytest.param("cuda", "default", marks=[pytest.mark.gpu, GPU]),
    pytest.param("cuda", None, marks=[pytest.mark.gpu, GPU]),
    # CPU-only runs: the kernel by Triton's interpreter (12 crops in about 16 s), on CPU tensors
    pytest.param("cpu", "default", marks=pytest.mark.skipif(not INTERPRETED_TRITON, reason="GPU runs: compiled above")),
])
def test_the_kernel_gives_the_torch_warps_and_cv2s_crops(photo, device, mean):
    images, matrices, counts, views, moved = chunk(photo)
    assert crop_kernel.available("cuda") or device == "cpu"
    options = {} if mean else {"mean": None}
    got = crop_kernel.warp_crops_packed(*packed_on(views, moved, counts, device), **options).cpu().numpy()
    torch_warp = warp_crops_batch([torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in views], moved,
                                  counts, **options).cpu().numpy()
    step = LEVEL if mean else 1.0  # one 0..255 level
    differ = np.abs(got - torch_warp) > 1e-6 * step
    assert np.abs(got - torch_warp).max() <= step * 1.0001 and differ.mean() < 1e-3  # a tie rounded the other way
    starts = np.cumsum([0] + counts[:-1])
    crops = np.concatenate([warp_crops(np.ascontiguousarray(image), matrices[s:s + n])
                            for image, s, n in zip(images, starts, counts)])
    want = normalize_crops(crops) if mean else crops.transpose(0, 3, 1, 2).astype(np.float32)
    if cv2_warp_is_float_bilinear():
        assert np.abs(got - want).max() <= step * 1.0001 and (np.abs(got - want) > 1e-6 * step).mean() < 1e-3


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_crops_are_the_float32_ones_rounded(photo, dtype):
    _, _, counts, views, moved = chunk(photo)
    buffer, table = packed_on(views, moved, counts)
    single = crop_kernel.warp_crops_packed(buffer, table)
    assert torch.equal(crop_kernel.warp_crops_packed(buffer, table, dtype=dtype), single.to(dtype))


@pytest.mark.gpu
@GPU
def test_an_empty_table_gives_no_crops():
    out = crop_kernel.warp_crops_packed(torch.zeros(64, dtype=torch.uint8, device="cuda"),
                                        torch.zeros((0, crop_kernel.TABLE_COLUMNS), dtype=torch.float64, device="cuda"))
    assert out.shape == (0, 3, 256, 192)
