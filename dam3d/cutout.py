"""Cutout stage: background removal, then crop to the object, recentre, pad square, resize.

Backends share one interface, `mask(image) -> L image`:
- `rmbg`: BiRefNet-family segmentation (briaai/RMBG-2.0, ZhengPeng7/BiRefNet) through
  transformers' AutoModelForImageSegmentation with trust_remote_code.
- `u2netp`: the real `rembg` package with the small U^2-Net; its ONNX file is
  installed offline into U2NET_HOME (see README).
`auto` picks `rmbg` when its weights can be loaded without the network, else `u2netp`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from dam3d.atomic import atomic_path
from dam3d.errors import AssetError
from dam3d.images import DEFAULT_MAX_PIXELS, load_image

RMBG_SIZE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A file whose own alpha already hides this share of pixels is taken as a
# finished cutout: running a segmenter on it would only lose detail.
TRANSPARENT_SHARE = 0.01
ALPHA_THRESHOLD = 16

MaskFn = Callable[[Image.Image], Image.Image]


def model_available(model: str) -> bool:
    """True if transformers can load `model` with no network: a local folder or a hub cache hit."""
    if Path(model).is_dir():
        return (Path(model) / "config.json").exists()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # an id that is not a valid repo name is simply not available
        return False


def resolve_backend(backend: str, model: str, *, strict: bool = False) -> str:
    """Turn `auto` into a concrete backend; with `strict`, a missing target model is an error."""
    if backend != "auto":
        return backend
    if model_available(model):
        return "rmbg"
    if strict:
        raise RuntimeError(
            f"cutout: target model {model!r} is not available offline (no local folder, not in the "
            "Hugging Face cache) and strict is set; download it or set cutout.backend: u2netp"
        )
    return "u2netp"


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@cache
def _rmbg(model: str, device: str) -> MaskFn:
    import torch
    from transformers import AutoModelForImageSegmentation

    net = AutoModelForImageSegmentation.from_pretrained(model, trust_remote_code=True)
    device = _device(device)
    net = net.to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def mask(image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB").resize((RMBG_SIZE, RMBG_SIZE), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        x = ((x - mean) / std).to(device)
        with torch.inference_mode():
            outputs = net(x)
        # BiRefNet returns a list of side outputs; the last is the full-resolution map.
        logits = outputs[-1] if isinstance(outputs, (list, tuple)) else getattr(outputs, "logits", outputs)
        prob = logits.float().sigmoid()[0, 0].cpu().numpy()
        return Image.fromarray((prob * 255).round().astype(np.uint8)).resize(image.size, Image.BILINEAR)

    return mask


def default_u2net_home() -> Path:
    return Path(os.environ.get("U2NET_HOME", Path(__file__).resolve().parent.parent / "models" / "u2net"))


@cache
def _u2netp(u2net_home: str) -> MaskFn:
    weights = Path(u2net_home) / "u2netp.onnx"
    if not weights.exists():
        raise RuntimeError(
            f"cutout: u2netp weights not found at {weights}; install them offline with "
            "`python -m dam3d.models install-u2netp` (see README)"
        )
    # rembg reads U2NET_HOME when a session is created; set it so it never downloads.
    os.environ["U2NET_HOME"] = str(u2net_home)
    print("cutout: loading rembg u2netp (a first import on a new machine compiles kernels, ~40 s)", file=sys.stderr)
    from rembg import new_session, remove

    session = new_session("u2netp")

    def mask(image: Image.Image) -> Image.Image:
        return remove(image.convert("RGB"), session=session, only_mask=True)

    return mask


def mask_fn(backend: str, *, model: str, device: str = "auto", u2net_home: str | None = None) -> MaskFn:
    """The loaded segmenter for a concrete backend (cached per process)."""
    if backend == "rmbg":
        return _rmbg(model, device)
    if backend == "u2netp":
        return _u2netp(str(u2net_home or default_u2net_home()))
    raise ValueError(f"unknown cutout backend {backend!r} (choose rmbg, u2netp or auto)")


def has_own_alpha(image: Image.Image) -> bool:
    if image.mode != "RGBA":
        return False
    alpha = np.asarray(image.getchannel("A"))
    return float((alpha < 250).mean()) >= TRANSPARENT_SHARE


def crop_square(image: Image.Image, mask: Image.Image, *, size: int, margin: float, asset: str) -> Image.Image:
    """Crop RGB+mask to the object, centre it on a transparent square with `margin` each side, resize."""
    alpha = np.asarray(mask.convert("L"))
    ys, xs = np.nonzero(alpha > ALPHA_THRESHOLD)
    if len(xs) == 0:
        raise AssetError(asset, "cutout", "no foreground found: the background remover masked out the whole image")
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    rgba = image.convert("RGB").copy()
    rgba.putalpha(mask.convert("L"))
    obj = rgba.crop(box)
    side = max(obj.size)
    canvas_side = max(1, round(side / (1.0 - 2.0 * margin)))
    canvas = Image.new("RGBA", (canvas_side, canvas_side), (0, 0, 0, 0))
    canvas.paste(obj, ((canvas_side - obj.width) // 2, (canvas_side - obj.height) // 2))
    return canvas.resize((size, size), Image.LANCZOS)


def cut_out(image: Image.Image, asset: str, *, mask: MaskFn, size: int, margin: float) -> Image.Image:
    """Segment (unless the image is already transparent) and square-crop one image."""
    if has_own_alpha(image):
        alpha = image.getchannel("A")
    else:
        alpha = mask(image)
    return crop_square(image, alpha, size=size, margin=margin, asset=asset)


def make_cutout(
    asset: str,
    image_path: Path,
    out: Path,
    *,
    backend: str,
    model: str,
    size: int = 512,
    margin: float = 0.08,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str = "auto",
) -> None:
    """The stage: load the catalogue image, cut it out, write an RGBA PNG atomically."""
    image = load_image(image_path, asset, stage="cutout", max_pixels=max_pixels)
    cutout = cut_out(image, asset, mask=mask_fn(backend, model=model, device=device), size=size, margin=margin)
    with atomic_path(out) as tmp:
        cutout.save(tmp, format="PNG")
