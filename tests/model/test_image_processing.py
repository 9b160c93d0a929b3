import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training_core.model import hd_geometry, hd_transform, num_image_tokens
from training_core.model.image_processing import CLIP_MEAN, CLIP_STD, Phi3VImageProcessor, normalize


@pytest.mark.parametrize(
    ("width", "height", "num_crops", "tokens"),
    [
        (672, 672, 4, 757),  # 2x2 crops
        (1344, 1344, 16, 2509),  # 4x4 crops
        (800, 600, 16, 1921),  # -> 1344x1008, 3x4 crops
        (100, 100, 16, 2509),  # small square images are upsampled to the full grid
        (50, 50, 4, 757),
        (336, 336, 1, 313),  # 1 crop: (1+1)*144 + 1 + 2*12
    ],
)
def test_documented_token_counts(width, height, num_crops, tokens):
    assert num_image_tokens(width, height, num_crops) == tokens


def test_portrait_is_transposed_and_back():
    # 600x800 portrait: processed as 800x600 landscape, then transposed back -> HD 1008 wide x 1344 high
    geo = hd_geometry(600, 800, 16)
    assert (geo.hd_w, geo.hd_h, geo.transposed) == (1008, 1344, True)
    # the newline term follows the number of crop *rows* (4 here, 3 for the landscape twin)
    assert num_image_tokens(600, 800, 16) == (12 + 1) * 144 + 1 + (4 + 1) * 12 == 1933
    assert num_image_tokens(800, 600, 16) == 1921


@pytest.mark.parametrize("bad", [0, 17, -1, 2.5, "4", True])
def test_num_crops_out_of_range_rejected(bad):
    with pytest.raises(ValueError, match="num_crops"):
        num_image_tokens(800, 600, bad)
    with pytest.raises(ValueError, match="num_crops"):
        Phi3VImageProcessor(num_crops=bad)


def test_hd_transform_size_and_centred_white_padding():
    image = Image.new("RGB", (800, 500), (10, 20, 30))  # ratio 1.6: scale 4 -> 1344 x 840, padded to 1008
    hd = hd_transform(image, 16)
    assert hd.size == (1344, 1008)
    top = int((1008 - 840) / 2)
    pixels = hd.load()
    assert pixels[700, top - 1] == (255, 255, 255)
    assert pixels[700, top] == (10, 20, 30)
    assert pixels[700, top + 839] == (10, 20, 30)
    assert pixels[700, top + 840] == (255, 255, 255)
    assert pixels[0, 0] == (255, 255, 255) and pixels[1343, 1007] == (255, 255, 255)


def test_portrait_padding_is_on_the_width_after_transpose_back():
    image = Image.new("RGB", (500, 800), (10, 20, 30))
    hd = hd_transform(image, 16)
    assert hd.size == (1008, 1344)
    pixels = hd.load()
    assert pixels[0, 700] == (255, 255, 255) and pixels[500, 700] == (10, 20, 30)


def test_greyscale_and_rgba_are_converted_to_rgb(make_image):
    processor = Phi3VImageProcessor(num_crops=4)
    grey = make_image(300, 200).convert("L")
    rgba = make_image(300, 200).convert("RGBA")
    for image in (grey, rgba):
        out = processor([image])
        assert out["pixel_values"].shape == (1, 5, 3, 336, 336)


def test_pixel_values_global_view_crops_and_zero_padding(make_image):
    processor = Phi3VImageProcessor(num_crops=16)
    image = make_image(800, 600)
    out = processor([image])
    pv = out["pixel_values"]
    assert pv.shape == (1, 17, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[1008, 1344]]
    assert out["num_img_tokens"] == [1921]
    hd = normalize(hd_transform(image, 16))
    assert hd.shape == (3, 1008, 1344)
    # global view: bicubic resize of the *normalised* HD tensor (aspect ratio not kept)
    expected_global = F.interpolate(hd[None], size=(336, 336), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(pv[0, 0], expected_global)
    # local crops: row-major over the 3x4 grid
    for row in range(3):
        for col in range(4):
            crop = hd[:, row * 336 : (row + 1) * 336, col * 336 : (col + 1) * 336]
            torch.testing.assert_close(pv[0, 1 + row * 4 + col], crop)
    # 1 + 12 used slots, the other 4 are zeros
    assert torch.count_nonzero(pv[0, 13:]) == 0


def test_normalisation_uses_clip_statistics():
    white = normalize(Image.new("RGB", (2, 2), (255, 255, 255)))
    expected = [(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    for c in range(3):
        assert white[c, 0, 0].item() == pytest.approx(expected[c], rel=1e-6)


def test_several_images_keep_their_own_sizes(make_image):
    processor = Phi3VImageProcessor(num_crops=4)
    out = processor([make_image(672, 672), make_image(900, 300, seed=1)])
    assert out["pixel_values"].shape == (2, 5, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[672, 672], [336, 1008]]
    assert out["num_img_tokens"] == [757, num_image_tokens(900, 300, 4)]


@pytest.mark.parametrize("size", [(800, 600), (600, 800), (1700, 2200), (333, 100), (100, 333), (56, 56), (3, 500)])
@pytest.mark.parametrize("num_crops", [1, 4, 16])
def test_fast_hd_tensor_equals_the_reference_transform_bit_for_bit(make_image, size, num_crops):
    from training_core.model.image_processing import hd_tensor

    image = make_image(*size)
    reference = normalize(hd_transform(image, num_crops))
    fast = hd_tensor(image, num_crops)
    assert fast.shape == reference.shape
    assert torch.equal(fast, reference)


def test_too_elongated_images_are_a_clear_error():
    with pytest.raises(ValueError, match="too elongated"):
        num_image_tokens(1, 5000, 1)
