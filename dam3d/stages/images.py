"""Loading catalogue and query images: every odd file either becomes plain RGB(A) or a one-line reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dam3d.errors import AssetError

# Pillow's own bomb guard raises a DecompressionBombError only at twice its
# limit; we want our own, configurable refusal with a readable reason.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 50_000_000


def load_image(path: str | Path, asset: str, *, stage: str = "cutout", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `path` as 8-bit RGB or RGBA, or raise AssetError naming the asset and the reason.

    Handles CMYK, 16-bit, palette (with or without transparency), greyscale and
    EXIF orientation; refuses empty, non-image, truncated and oversized files.
    """
    path = Path(path)
    if not path.exists():
        raise AssetError(asset, stage, f"image not found: {path}")
    if path.stat().st_size == 0:
        raise AssetError(asset, stage, f"image file is empty (0 bytes): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            width, height = img.size
            if width * height > max_pixels:
                raise AssetError(
                    asset, stage,
                    f"image is {width}x{height} ({width * height / 1e6:.0f} MP), over the limit of "
                    f"{max_pixels / 1e6:.0f} MP (cutout.max_pixels): {path}",
                )
            img.load()
    except AssetError:
        raise
    except UnidentifiedImageError:
        from PIL import features

        if path.suffix.lower() == ".avif" and not features.check("avif"):
            # Not the photo's fault: a RuntimeError, so the SKU is tried again next run (a Pillow
            # with AVIF changes no key), where an AssetError would be final until the photo changes.
            raise RuntimeError(f"{asset}: {stage}: an AVIF photo, and this Pillow cannot decode AVIF "
                               f"(Pillow >= 11.3 wheels can; or convert it to .jpg): {path}") from None
        raise AssetError(asset, stage, f"not an image file Pillow can read: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise AssetError(asset, stage, f"corrupt or truncated image ({exc}): {path}") from None
    if width == 0 or height == 0:
        raise AssetError(asset, stage, f"image has no pixels: {path}")
    img = ImageOps.exif_transpose(img)
    return to_8bit(img)


def to_8bit(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, or RGBA when the file carries transparency."""
    if img.mode in ("RGB", "RGBA"):
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: scale to the full 8-bit range rather than
        # letting Pillow clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max()
        scale = 255.0 / top if top > 0 else 0.0
        return Image.fromarray((arr * scale).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        return img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "PA", "RGBa", "La"):
        return img.convert("RGBA")
    if img.mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGB")


def flatten(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite an RGBA image on a plain background (the same one for cutouts and renders)."""
    if img.mode != "RGBA":
        return img.convert("RGB")
    base = Image.new("RGB", img.size, background)
    base.paste(img, mask=img.getchannel("A"))
    return base
