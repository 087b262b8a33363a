"""segtrack.sliding_window: tiled inference equals whole-image inference where it should, blends
overlapping windows, handles padding, subclasses and plain-function models, and agrees with MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segtrack import ConfigError, sliding_window
from segtrack.models.unet import build_unet


def _unet(dims: int, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_unet(in_channels=1, num_classes=num_classes, dims=dims, width=4, depth=2).eval()


def _image(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _conv(dims: int, kernel: int) -> nn.Module:
    """A translation-equivariant model: one convolution, zero-padded to keep the size."""
    torch.manual_seed(0)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 2, kernel, padding=kernel // 2)
    return conv.eval()


def _window_mean(x: torch.Tensor) -> torch.Tensor:
    """A model whose output depends on the whole window: its mean, everywhere."""
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).clone()


@pytest.mark.parametrize(
    ("shape", "roi_size"),
    [((2, 1, 16, 24), (16, 24)), ((2, 1, 16, 24), 0), ((2, 1, 16, 24), None), ((1, 1, 8, 12, 16), (8, None, 16))],
)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_a_window_covering_the_image_is_one_forward_pass(shape, roi_size, mode):
    model, image = _unet(len(shape) - 2), _image(*shape)
    with torch.no_grad():
        expected = model(image)
        result = sliding_window(model, image, roi_size, mode=mode)
    assert result.dtype == torch.float32 and result.shape == expected.shape
    assert torch.allclose(result, expected, atol=1e-6)


def test_a_window_larger_than_the_image_pads_both_sides_and_crops_back():
    model, image = _conv(2, 3), _image(2, 1, 10, 13)
    with torch.no_grad():
        result = sliding_window(model, image, 16)
        expected = model(image)  # zero padding around the image changes nothing for a zero-padded convolution
        mixed = sliding_window(model, _image(1, 1, 10, 40), 16, overlap=0.0, mode="constant")
    assert result.shape == (2, 2, 10, 13)
    assert torch.allclose(result, expected, atol=1e-6)
    assert mixed.shape == (1, 2, 10, 40)  # one axis padded, the other tiled


@pytest.mark.parametrize(("shape", "roi_size"), [((1, 1, 37, 53), 16), ((2, 1, 19, 23, 29), (8, 8, 12))])
def test_odd_sizes(shape, roi_size):
    with torch.no_grad():
        result = sliding_window(_unet(len(shape) - 2), _image(*shape), roi_size)
    assert result.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(result).all()


def test_gaussian_and_constant_blend_only_where_windows_overlap():
    image = _image(1, 1, 16, 24)  # windows 16x16 at columns 0 and 8: columns 8..15 are shared
    gaussian = sliding_window(_window_mean, image, 16, mode="gaussian")
    constant = sliding_window(_window_mean, image, 16, mode="constant")
    left, right = image[..., :16].mean(), image[..., 8:].mean()
    for result in (gaussian, constant):
        assert torch.allclose(result[..., :8], left) and torch.allclose(result[..., 16:], right)
        shared = result[..., 8:16]
        assert (shared >= min(left, right) - 1e-6).all() and (shared <= max(left, right) + 1e-6).all()
    assert torch.allclose(constant[..., 8:16], (left + right) / 2)
    assert not torch.allclose(gaussian[..., 8:16], constant[..., 8:16])


def test_batch_size_does_not_change_the_result():
    model, image = _unet(2), _image(2, 1, 40, 36)  # 2 images x 9 windows share batches
    with torch.no_grad():
        one, three, all_at_once = (sliding_window(model, image, 16, batch_size=size) for size in (1, 3, 100))
    assert torch.allclose(one, three, atol=1e-5) and torch.allclose(one, all_at_once, atol=1e-5)


@pytest.mark.parametrize(("roi_size", "overlap"), [(8, 0.5), (7, 0.25), ((5, 11), 0.0), (9, 0.9)])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_a_pointwise_model_gives_the_whole_image_result_for_any_tiling(roi_size, overlap, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Tanh(), nn.Conv2d(4, 2, 1)).eval()
    image = _image(2, 1, 21, 30)
    with torch.no_grad():
        result = sliding_window(model, image, roi_size, overlap=overlap, mode=mode)
        assert torch.allclose(result, model(image), atol=1e-5)


def test_a_3x3_convolution_gives_the_whole_image_result_away_from_window_seams():
    image = _image(1, 1, 40, 40, 40)
    model = _conv(3, 3)
    with torch.no_grad():
        result, expected = sliding_window(model, image, 20), model(image)
    # windows [0, 20), [10, 30), [20, 40) per axis: their inner edges 10, 19, 20, 29 see the window's zero padding
    keep = torch.ones(40, dtype=torch.bool)
    keep[[10, 19, 20, 29]] = False
    inner = result[..., keep, :, :][..., keep, :][..., keep]
    assert torch.allclose(inner, expected[..., keep, :, :][..., keep, :][..., keep], atol=1e-5)
    assert not torch.allclose(result, expected, atol=1e-5)  # the seams do differ: the mask above is needed


class Tagged(torch.Tensor):
    """A tensor subclass standing in for MONAI's MetaTensor."""


def test_a_tensor_subclass_gives_a_plain_tensor():
    image = _image(1, 1, 24, 24).as_subclass(Tagged)
    seen = []

    def model(x):
        seen.append(type(x))
        return x * 2

    result = sliding_window(model, image, 16)
    assert type(result) is torch.Tensor and set(seen) == {torch.Tensor}
    assert torch.allclose(result, image.as_subclass(torch.Tensor) * 2)


def test_a_monai_metatensor_gives_a_plain_tensor():
    monai_data = pytest.importorskip("monai.data")
    image = monai_data.MetaTensor(_image(1, 1, 24, 24), meta={"filename_or_obj": "a.nii"})
    with torch.no_grad():
        result = sliding_window(_unet(2), image, 16)
    assert type(result) is torch.Tensor and result.shape == (1, 3, 24, 24)


def test_a_plain_function_model_with_numpy_inside():
    def onnx_like(x: torch.Tensor) -> dict:
        array = x.numpy()
        return {"out": torch.from_numpy(np.concatenate([array, -array], axis=1))}

    image = _image(2, 1, 30, 20)
    result = sliding_window(onnx_like, image, (16, 8), overlap=0.25, batch_size=5)
    assert torch.allclose(result, torch.cat([image, -image], dim=1), atol=1e-6)


def test_half_precision_logits_are_summed_in_float32_and_no_graph_is_kept():
    model = _conv(2, 3)
    half = sliding_window(lambda x: (model(x).half(),), _image(1, 1, 24, 24), 16)
    assert half.dtype == torch.float32
    result = sliding_window(model, _image(1, 1, 24, 24, seed=2), 16)  # grad mode on: windows are detached
    assert not result.requires_grad


@pytest.mark.parametrize(
    ("dims", "shape", "roi_size"),
    [
        (3, (1, 1, 24, 40, 36), (16, 16, 16)),
        (2, (2, 1, 72, 60), 32),
        (3, (1, 1, 29, 40, 36), (32, 16, 16)),  # depth shorter than the window: padded on both sides
        (2, (1, 1, 13, 50), 16),  # one axis shorter, by an odd amount
    ],
)
def test_agrees_with_monai(dims, shape, roi_size):
    inferers = pytest.importorskip("monai.inferers")
    model, image = _unet(dims), _image(*shape)
    with torch.no_grad():
        ours = sliding_window(model, image, roi_size, overlap=0.5, mode="gaussian", sigma_scale=0.125)
        theirs = inferers.sliding_window_inference(
            image, roi_size, 4, model, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    theirs = torch.as_tensor(theirs).as_subclass(torch.Tensor)
    assert ours.shape == theirs.shape
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.99
    # the logits differ only where a window's weight is at its floor (MONAI floors the map before it is scaled to max 1)
    assert torch.allclose(ours, theirs, atol=1e-2)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"mode": "linear"}, "mode='linear'"),
        ({"overlap": 1.0}, "overlap=1.0"),
        ({"overlap": -0.1}, "overlap=-0.1"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"sigma_scale": 0.0}, "sigma_scale=0.0"),
        ({"roi_size": (8, 8, 8)}, "roi_size=(8, 8, 8)"),
        ({"roi_size": -4}, "roi_size=-4"),
        ({"roi_size": 2.5}, "roi_size=2.5"),
    ],
)
def test_bad_arguments_name_the_argument(arguments, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        sliding_window(_window_mean, _image(1, 1, 16, 16), **{"roi_size": 8, **arguments})
