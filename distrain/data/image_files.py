"""Image files and bytes to uint8 tensors [C, H, W] and back, through PIL (Pillow: torchvision's own
dependency, and what its ImageFolder and transforms read with).

torchvision 0.29 deprecates torchvision.io's decode_image and encode_png in favour of TorchCodec, a
separate package with its own FFmpeg build; PIL stays, and decodes PNG bit for bit as libpng does
(lossless), so the figures of runs on PNG data are unchanged.

    image = decode(data_or_path, "rgb")   # uint8 [3, H, W]; "gray": [1, H, W]; "unchanged": the file's channels
    png = encode_png(image)               # bytes of a PNG file: [1, H, W] gray, [3, H, W] RGB, [4, H, W] RGBA
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Mode = Literal["unchanged", "rgb", "gray"]

_KEPT = ("L", "LA", "RGB", "RGBA")  # PIL modes "unchanged" returns as they are (1, 2, 3, 4 channels)


def decode(source: bytes | str | Path, mode: Mode = "unchanged") -> torch.Tensor:
    """An image file's pixels as uint8 [C, H, W] (uint16 for a 16-bit gray file, as torchvision's decoder gave
    them: its values are kept, never clipped to 255). Raises what PIL raises for an unreadable file (callers
    name the file or sample in their own error)."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit gray: keep every value
            deep = np.asarray(image).astype(np.uint16 if image.mode != "I" else np.int32)
            deep = np.repeat(deep[:, :, None], 3, axis=2) if mode == "rgb" else deep[:, :, None]
            return torch.from_numpy(deep.copy()).permute(2, 0, 1).contiguous()
        if mode == "rgb":
            image = image.convert("RGB")
        elif mode == "gray":
            image = image.convert("L")
        elif image.mode not in _KEPT:  # palette, 1-bit, CMYK, ...: 8-bit gray, RGB or RGBA, as libpng expands them
            alpha = image.mode in ("PA", "La") or "transparency" in image.info
            image = image.convert("RGBA" if alpha else ("L" if image.mode == "1" else "RGB"))
        pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def encode_png(image: torch.Tensor) -> bytes:
    """A uint8 [C, H, W] image (C: 1, 2, 3 or 4) as the bytes of a PNG file."""
    from PIL import Image

    pixels = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()  # the mode follows the shape: [H, W] gray, [H, W, 2] gray and alpha, RGB, RGBA
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()
