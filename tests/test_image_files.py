"""Image files and bytes through PIL (distrain.data.image_files): PNG round trips bit for bit, the read
modes give the channels asked for, palette images are expanded, and a broken file raises."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from PIL import Image

from distrain.data.image_files import decode, encode_png


def pixels(channels: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (channels, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_a_png_round_trips_bit_for_bit(channels, tmp_path):
    image = pixels(channels)
    data = encode_png(image)
    assert data.startswith(b"\x89PNG") and torch.equal(decode(data), image)
    (tmp_path / "x.png").write_bytes(data)
    assert torch.equal(decode(tmp_path / "x.png"), image) and torch.equal(decode(str(tmp_path / "x.png")), image)


def test_the_modes_give_the_channels_asked_for():
    gray, rgb = encode_png(pixels(1)), encode_png(pixels(3))
    assert torch.equal(decode(gray, "rgb"), pixels(1).expand(3, -1, -1))
    assert torch.equal(decode(rgb, "rgb"), pixels(3)) and decode(rgb, "gray").shape == (1, 7, 9)
    assert decode(encode_png(pixels(4)), "rgb").shape == (3, 7, 9)


def test_decoding_matches_torchvision_on_png():
    # What torchvision.io.decode_image (deprecated since 0.29) gave, read back the same: the figures of runs
    # on PNG data stay bitwise.
    from torchvision.io import ImageReadMode, decode_image

    for channels in (1, 3):
        data = encode_png(pixels(channels, seed=channels))
        for mode, read_mode in (("unchanged", ImageReadMode.UNCHANGED), ("rgb", ImageReadMode.RGB)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                expected = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode)
            assert torch.equal(decode(data, mode), expected), (channels, mode)


def test_a_palette_image_is_expanded_to_rgb():
    buffer = io.BytesIO()
    Image.fromarray(pixels(3).permute(1, 2, 0).numpy()).convert("P").save(buffer, format="PNG")
    image = decode(buffer.getvalue())
    assert image.dtype == torch.uint8 and image.shape == (3, 7, 9)


def test_a_broken_file_raises():
    with pytest.raises(Exception):  # noqa: B017 - PIL's own type; callers name the file in their error
        decode(encode_png(pixels(3))[:20])


def test_a_16_bit_png_keeps_every_value():
    import numpy as np

    values = (np.arange(6 * 5, dtype=np.uint16) * 2000).reshape(6, 5)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")  # mode I;16
    expected = torch.from_numpy(values.astype(np.int32))
    for mode, channels in (("unchanged", 1), ("gray", 1), ("rgb", 3)):
        decoded = decode(buffer.getvalue(), mode)
        assert decoded.shape == (channels, 6, 5) and decoded.to(torch.int32).max() > 255
        assert all(torch.equal(decoded[c].to(torch.int32), expected) for c in range(channels))
