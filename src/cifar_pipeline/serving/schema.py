"""What the MLflow model takes and answers: one `image` column of PNG or JPEG file bytes (base64 in JSON,
which MLflow decodes for a binary column), one row per image of any size; one row back per image, the
predicted `class`, then the probability of each class. Its signature says so, and its input example is
two images."""

from __future__ import annotations

import io

import numpy as np

from cifar_pipeline.serving.classifier import CLASS_COLUMN, ImageInputError
from cifar_pipeline.serving.images import decode

IMAGE_COLUMN = "image"
BASE64_STARTS = (b"iVBORw0KGgo", b"/9j/")  # a PNG's and a JPEG's first bytes, base64-encoded
HOW_TO_SEND = (
    "over HTTP send each file base64-encoded in `dataframe_split` or `dataframe_records` "
    "(MLflow decodes base64 there, not in `inputs`)"
)


def model_signature(classes: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.binary, IMAGE_COLUMN)])
    outputs = Schema([ColSpec(DataType.string, CLASS_COLUMN), *(ColSpec(DataType.float, c) for c in classes)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) array as a PNG file (lossless)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def input_example(images: np.ndarray):
    """uint8 (N, H, W, 3) images as the model's input: a DataFrame of their PNG files."""
    import pandas as pd

    return pd.DataFrame({IMAGE_COLUMN: [png_bytes(image) for image in images]})


def decode_column(frame) -> np.ndarray:
    """The request's images, uint8 (N, 32, 32, 3). An error names the row and what is wrong with it,
    never its data."""
    if len(frame) == 0:
        raise ImageInputError(f"no images: send one row per image in the `{IMAGE_COLUMN}` column")
    images = []
    for row, value in enumerate(frame[IMAGE_COLUMN]):
        if not isinstance(value, bytes | bytearray):
            raise ImageInputError(
                f"image {row} is a {type(value).__name__}, not the bytes of a PNG or JPEG file; {HOW_TO_SEND}"
            )
        if value.startswith(BASE64_STARTS):
            raise ImageInputError(f"image {row} is base64 text that MLflow did not decode; {HOW_TO_SEND}")
        images.append(decode(bytes(value), f"image {row}"))
    return np.stack(images)
