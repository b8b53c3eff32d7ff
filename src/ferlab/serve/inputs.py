"""Reading requests: uploads and base64 JSON decoded in memory, with size and pixel limits.

Nothing from a request is ever written to disk or used as a path: the upload's file name is
only echoed back as a label.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..data import EMOTIONS, IMAGE_FORMATS, open_image
from ..media import TooManyPixels, limited_rgb


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class _InMemoryParser(MultiPartParser):
    # Starlette spools uploads over 1 MB to a temporary file; the request size is already
    # bounded by the caller, so keep every upload in memory and write nothing to disk.
    spool_max_size = 2**62


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from encoded image bytes, honouring EXIF orientation.

    Raises ApiError: 413 over ``max_bytes`` or ``max_pixels``, 415 not an image format ferlab
    reads, 422 an image that is empty, truncated or corrupt.
    """
    if len(data) > max_bytes:
        raise ApiError(413, f"image is {len(data)} bytes, over the limit of {max_bytes}")
    if not data:
        raise ApiError(422, "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = open_image(io.BytesIO(data))
    except UnidentifiedImageError:
        kinds = ", ".join(f.lower() for f in IMAGE_FORMATS)
        raise ApiError(415, f"not a supported image; send one of: {kinds}") from None
    except Image.DecompressionBombError as e:
        raise ApiError(413, f"image has too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise _corrupt(data, e) from None
    with im:
        try:
            return limited_rgb(im, max_pixels)
        except TooManyPixels as e:
            raise ApiError(413, str(e)) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise _corrupt(data, e, im.format) from None


# formats by their first two bytes; Pillow calls PBM, PGM and PPM all "PPM"
_MAGIC = {
    b"\xff\xd8": "JPEG",
    b"\x89P": "PNG",
    b"P1": "PBM",
    b"P4": "PBM",
    b"P2": "PGM",
    b"P5": "PGM",
    b"P3": "PPM",
    b"P6": "PPM",
}


def _corrupt(data: bytes, error: Exception, fmt: str | None = None) -> ApiError:
    """422 "corrupt PGM image (...)", or "corrupt image (...)" when the format is unknown."""
    kind = _MAGIC.get(data[:2]) or fmt
    return ApiError(422, f"corrupt {kind + ' ' if kind else ''}image ({error})")


def decode_base64(text: Any) -> bytes:
    """Bytes of a base64 string, plain or a ``data:image/...;base64,`` URL."""
    if not isinstance(text, str):
        got = "null" if text is None else type(text).__name__
        raise ApiError(422, f"expected a base64 string, got {got}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "image is not valid base64") from None


class ByteBudget:
    """Bytes of request bodies held in memory by all requests of an app: past ``limit`` a
    request gets 503, so a burst of large uploads cannot exhaust memory (each request is
    already capped; this caps their sum). Used from the event loop only, so no lock."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    @contextmanager
    def hold(self) -> Iterator[Callable[[int], None]]:
        """A ``take(n)`` for one request; what it took is given back when the block ends."""
        held = 0

        def take(n: int) -> None:
            nonlocal held
            if self.used + n > self.limit:
                raise ApiError(
                    503, f"server busy: {self.used} bytes of uploads in progress; retry shortly"
                )
            self.used += n
            held += n

        try:
            yield take
        finally:
            self.used -= held


async def _limited(
    request: Request, limit: int, take: Callable[[int], None]
) -> AsyncGenerator[bytes, None]:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        take(len(chunk))
        yield chunk


@dataclass
class Upload:
    images: list[tuple[str | None, bytes]]  # (file name or None, encoded bytes)
    fields: dict[str, Any]  # options sent with the images (form fields, JSON keys)


async def read_upload(
    request: Request, batch: bool, limit: int, max_images: int, take: Callable[[int], None]
) -> Upload:
    """The images of a multipart (``file``/``files``) or JSON (``image``/``images``) request;
    ``take`` books each chunk of the body against the app's :class:`ByteBudget`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, over the limit of {limit}")
    ctype = request.headers.get("content-type", "").lower()
    multipart = ctype.startswith("multipart/form-data")
    most = max_images if batch else 1
    if multipart:
        upload = await _read_multipart(request, batch, limit, most, take)
    elif ctype.startswith("application/json"):
        upload = await _read_json(request, batch, limit, take)
    else:
        raise ApiError(
            415,
            "send multipart/form-data with a 'file' field (batch: 'files') or application/json "
            'with {"image": "<base64>"} (batch: {"images": [...]})',
        )
    if not upload.images:
        field = ("file" if multipart else "image") + ("s" if batch else "")
        raise ApiError(422, f"no image in the request: expected a '{field}' field")
    if len(upload.images) > most:
        raise _too_many(len(upload.images), most, batch)
    return upload


def _too_many(count: int | str, most: int, batch: bool) -> ApiError:
    hint = "" if batch else ": use /v1/predict/batch for several"
    return ApiError(413, f"{count} images, over the limit of {most}{hint}")


async def _read_multipart(
    request: Request, batch: bool, limit: int, most: int, take: Callable[[int], None]
) -> Upload:
    # one file over the limit is parsed, so that read_upload counts it as for JSON; past
    # that the parser stops reading, and its "too many files" is the same 413, not a 400
    parser = _InMemoryParser(
        request.headers, _limited(request, limit, take), max_files=most + 1, max_fields=20
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise _too_many(f"more than {most + 1}", most, batch) from None
        raise ApiError(400, f"malformed multipart body: {e.message}") from None
    images, fields = [], {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key in ("file", "files"):
                images.append((value.filename, await value.read()))
            await value.close()
        else:
            fields[key] = value
    return Upload(images, fields)


async def _read_json(
    request: Request, batch: bool, limit: int, take: Callable[[int], None]
) -> Upload:
    body = b"".join([chunk async for chunk in _limited(request, limit, take)])
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ApiError(422, 'the JSON body must be an object such as {"image": "<base64>"}')
    if batch:
        items = doc.pop("images", None)
        if items is None:
            items = []
        elif not isinstance(items, list):
            raise ApiError(422, '"images" must be a list of base64 strings')
    else:  # a missing or null "image" is answered as "no image in the request"
        item = doc.pop("image", None)
        items = [] if item is None else [item]
    images: list[tuple[str | None, bytes]] = []
    for i, item in enumerate(items):
        # a null inside a batch is an error, not skipped: skipping would shift every later
        # result onto the wrong index, and JSON results carry no name to match them by
        try:
            images.append((None, decode_base64(item)))
        except ApiError as e:  # which of the batch's images, not just that one is bad
            raise ApiError(e.status, f"images[{i}]: {e.message}" if batch else e.message) from None
    return Upload(images, doc)


@dataclass(frozen=True)
class Options:
    detector: str
    top_k: int  # 0: no "top" list


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(422, f"{name} must be true or false, got {value!r}")


def parse_options(values: Mapping[str, Any], default: str, available: list[str]) -> Options:
    """Validate ``detector``, ``no_detect`` and ``top_k`` from query parameters or the body."""
    unknown = sorted(set(values) - {"detector", "no_detect", "top_k"})
    if unknown:  # a misspelt option (top-k) must not be ignored silently
        raise ApiError(422, f"unknown option {unknown}; expected detector, no_detect, top_k")
    detector = str(values.get("detector") or default)
    if _as_bool(values.get("no_detect", False), "no_detect"):
        detector = "none"
    if detector not in available:
        raise ApiError(
            422, f"detector {detector!r} is unknown or not installed; available: {available}"
        )
    top = values.get("top_k", 0)
    # whole numbers only, as int or digits: int() would also turn 2.9, true or [] into a k
    if isinstance(top, str) and top.strip().isdigit():
        top = int(top)
    if isinstance(top, bool) or not isinstance(top, int):
        raise ApiError(422, f"top_k must be an integer 0..{len(EMOTIONS)}, got {top!r}")
    top_k = top
    if not 0 <= top_k <= len(EMOTIONS):
        raise ApiError(422, f"top_k must be 0..{len(EMOTIONS)}, got {top_k}")
    return Options(detector, top_k)
