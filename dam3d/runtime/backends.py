"""One registry of backends per model stage (cutout, mesh, embed), in the style of rembg's sessions.

Each backend is a class that says what the workflow needs to know about it: its
`name` (the config value), whether it runs on a GPU (the rule then asks for one),
its conda env (`envs/{env}.yaml`), whether its chunk job runs torch (threads are set
up for it), the settings that change its output (`key`, part of every asset's key)
and how to load it (`load`, once per process). Rules and modules ask the backend;
nothing compares backend names. A new backend, or a stand-in (the benchmark's random
target networks), is a subclass with `@register`.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from typing import Any, ClassVar, TypeVar

# The backends register themselves when their stage's module is imported.
STAGE_MODULES = {"cutout": "dam3d.stages.cutout", "mesh": "dam3d.stages.mesh", "embed": "dam3d.stages.embed"}


class Backend:
    """A backend of one stage. Subclasses set the class attributes and override `key`/`load`."""

    stage: ClassVar[str]
    name: ClassVar[str]
    gpu: ClassVar[bool] = False  # the chunk job asks Slurm (or the local profile) for a GPU
    env: ClassVar[str]  # conda env of the stage's rule: envs/{env}.yaml
    torch: ClassVar[bool] = False  # the chunk job runs torch (its threads are set from the job's)

    def key(self, settings: dict[str, Any]) -> Any:
        """What of the stage's `settings` (its config section) changes this backend's output."""
        return None

    def load(self, settings: dict[str, Any], device: str) -> Any:
        """The loaded model (cached per process by the implementation). Raises when it cannot load."""
        raise NotImplementedError


B = TypeVar("B", bound=type[Backend])
REGISTRY: dict[str, dict[str, Backend]] = defaultdict(dict)


def register(cls: B) -> B:
    """Class decorator: add an instance of `cls` to its stage's registry under `cls.name`."""
    REGISTRY[cls.stage][cls.name] = cls()
    return cls


def backend(stage: str, name: str) -> Backend:
    """The registered backend `name` of `stage`; ValueError naming the known ones otherwise."""
    importlib.import_module(STAGE_MODULES[stage])
    try:
        return REGISTRY[stage][name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY[stage])) or "none"
        raise ValueError(f"unknown {stage} backend {name!r}; known: {known}") from None



def torch_device(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; any other value as given (`cpu`, `cuda:1`)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def hub_available(model: str, filename: str = "config.json") -> bool:
    """True if `model` loads with no network: a local folder holding `filename`, or a Hugging Face cache hit."""
    from pathlib import Path

    if Path(model).is_dir():
        return (Path(model) / filename).exists()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(model, filename), str)
    except Exception:  # an id that is not a valid repo name is simply not available
        return False
