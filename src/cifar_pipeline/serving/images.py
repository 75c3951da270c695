"""A PNG or JPEG file's bytes -> the uint8 (32, 32, 3) RGB image the model takes, as an image viewer shows
it (EXIF orientation applied, 16-bit grayscale scaled to 8 bits) and downscaled as CIFAR-10's images were.
The predict command and the served model both read images here, so a file gets the same answer from each."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_pipeline.serving.classifier import CIFAR_SIZE, ImageInputError, resize_to_cifar

FORMATS = ("PNG", "JPEG")
SIXTEEN_BIT_GRAY = {"I;16", "I;16B", "I;16L", "I"}  # how Pillow opens a 16-bit grayscale PNG
SIXTEEN_TO_EIGHT_BITS = 257  # 65535 / 255: maps 0..65535 onto 0..255, and 257 * v back onto v


def decode(data: bytes, name: str) -> np.ndarray:
    """The image in `data` as uint8 (32, 32, 3); `name` (a path, "image 3") is what an error calls it."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            ImageOps.exif_transpose(image, in_place=True)
            rgb = to_rgb(image)
    except UnidentifiedImageError:
        raise ImageInputError(f"{name} is not an image (PNG or JPEG expected)") from None
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{name} is too large: {exc} Downscale it first.") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageInputError(f"{name} is a corrupt image ({exc})") from None
    return to_cifar(rgb)


def to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3); 16-bit grayscale is scaled, where Pillow's convert("RGB") would clip it to white."""
    if image.mode in SIXTEEN_BIT_GRAY:
        gray = np.asarray(image).astype(np.float32).clip(0, 65535) / SIXTEEN_TO_EIGHT_BITS
        return np.repeat(gray.round().astype(np.uint8)[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))  # a writable copy, as torch.from_numpy wants


def to_cifar(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (32, 32, 3), with the model's antialiased downscale."""
    if rgb.shape[:2] == (CIFAR_SIZE, CIFAR_SIZE):  # as resize_to_cifar leaves it, without torch's per-call cost
        return rgb
    small = resize_to_cifar(torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255))
    return small[0].permute(1, 2, 0).mul_(255).round_().to(torch.uint8).numpy()
