"""The per-stage conda environments (envs/*.yaml) against the code each stage runs.

conda is not available on this project's machines, so the environments are never
created here; these tests keep them true instead: every file parses, every rule
that runs a script names one, and each environment lists the third-party
packages that the code of its rules imports (found by parsing the scripts and
the dam3d modules they import, transitively, with ast), with the version pins of
pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO

ENVS = REPO / "envs"

# Import name -> the package names that provide it (conda-forge or PyPI spelling).
PROVIDERS = {
    "PIL": {"pillow"},
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "torch"},
    "huggingface_hub": {"huggingface-hub"},
    "deep_sort_realtime": {"deep-sort-realtime"},
    "mathutils": {"bpy"},  # ships inside the bpy wheel
    "cv2": {"opencv-python", "opencv-python-headless"},
}

# The rules' environments: stage rules by design; any other rule that runs a script
# must name an existing environment (checked below) that covers its imports.
EXPECTED_ENVS = {
    "cutout": {"rmbg"},
    "mesh": {"blender", "trellis"},  # trellis when mesh.backend is trellis
    "render": {"blender"},
    "embed": {"embed"},
    "index": {"embed"},
    "contact_asset": {"embed"},
    "contact_sheet": {"embed"},
}

# Imports each stage is known to make: checks that the parser finds them.
KNOWN_IMPORTS = {
    "cutout": {"numpy", "PIL", "torch", "transformers", "huggingface_hub", "rembg"},
    "mesh": {"numpy", "PIL", "scipy", "trimesh", "torch", "trellis"},
    "render": {"bpy", "mathutils", "numpy"},
    "embed": {"numpy", "PIL", "torch", "transformers", "deep_sort_realtime"},
    "index": {"numpy", "pyarrow"},
    "contact_asset": {"PIL"},
}

# Code a rule runs besides its script and the dam3d modules that script imports.
EXTRA_CODE = {"render": [REPO / "blender" / "render_views.py"]}  # run by dam3d.stages.render in a subprocess

# Imports made inside functions that a rule never reaches in a given environment.
# Only function-level imports may be listed: a module-level import always loads.
NOT_REACHED = {
    ("mesh", "blender"): {
        "trellis": "the TRELLIS backend runs in envs/trellis.yaml",
        "torch": "only with the TRELLIS backend (dam3d.stages.mesh) / use_granted(torch=True)",
        "huggingface_hub": "only with the TRELLIS backend (dam3d.stages.mesh)",
    },
    ("mesh", "trellis"): {
        "trellis": "TRELLIS is not a package: its git clone goes on PYTHONPATH (see the env's comments)",
    },
    ("render", "blender"): {
        "torch": "use_granted(torch=False) in scripts/render.py",
    },
}

# Packages an environment needs that no dam3d import shows.
EXTRA_PACKAGES = {
    # BiRefNet / RMBG-2.0 ship their network as remote code that imports timm, kornia,
    # einops and torchvision; rembg runs u2netp through onnxruntime without requiring it.
    "rmbg": {"timm", "kornia", "einops", "torchvision", "onnxruntime"},
    # evaluate cuts the query photos out with the index's cutout backend.
    "embed": {"timm", "kornia", "einops", "torchvision", "onnxruntime"},
}


def _name(spec: str) -> str:
    spec = spec.split("::")[-1].strip()
    if spec.startswith("git+"):
        return spec.rsplit("/", 1)[-1].split(".git")[0].split("@")[0].lower()
    return re.split(r"[ <>=!~\[;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def env_packages(env: str) -> dict[str, str]:
    """Package name -> its spec line, conda and pip sections together (pip options skipped)."""
    data = yaml.safe_load((ENVS / f"{env}.yaml").read_text())
    specs = {}
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep["pip"]:
                if not pip_dep.startswith("-"):
                    specs[_name(pip_dep)] = pip_dep
        else:
            specs[_name(dep)] = dep
    return specs


def stage_backends(stage: str) -> list:
    """Every registered backend of `stage` (its module registers them when imported)."""
    import importlib

    from dam3d.runtime.backends import REGISTRY, STAGE_MODULES

    importlib.import_module(STAGE_MODULES[stage])
    return list(REGISTRY[stage].values())


def rule_envs() -> dict[str, tuple[set[str], Path | None]]:
    """rule -> (environment names in its conda: directive, its script)."""
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^\s*rule (\w+):\s*$", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            conda = re.search(r"^\s*conda:\s*\n\s*(.+)$", body, re.M)
            script = re.search(r"^\s*script:\s*\n\s*\"([^\"]+)\"", body, re.M)
            envs = set(re.findall(r"envs/([\w-]+)\.yaml", conda.group(1))) if conda else set()
            if conda and "conda_env(" in conda.group(1):
                # The env of the configured backend (dam3d.runtime.backends): any of the stage's.
                envs = {b.env for b in stage_backends(name)}
            rules[name] = (envs, (smk.parent / script.group(1)).resolve() if script else None)
    return rules


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top != "dam3d" and top not in sys.stdlib_module_names and top != "__future__"


def imports_of(files: list[Path]) -> dict[str, bool]:
    """Third-party top-level modules imported by `files` and the dam3d modules they import,
    transitively -> True if any of those imports is at module level."""
    found: dict[str, bool] = {}
    todo, seen = list(files), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), str(path))
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "dam3d":
                    candidate = REPO / Path(*name.split("."))
                    for target in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                        if target.exists():
                            todo.append(target)
                elif _third_party(name):
                    top = name.split(".")[0]
                    found[top] = found.get(top, False) or id(node) in module_level
    return found


def test_every_env_file_parses_with_channels_and_python() -> None:
    files = sorted(ENVS.glob("*.yaml"))
    assert {f.stem for f in files} >= {"rmbg", "blender", "embed", "trellis"}
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert data["channels"] and "defaults" not in data["channels"], path  # conda-forge, no licensed channel
        pythons = [d for d in data["dependencies"] if isinstance(d, str) and _name(d) == "python"]
        assert len(pythons) == 1, path
        # pyproject says 3.11; TRELLIS and its CUDA extensions are built for 3.10 (see envs/trellis.yaml).
        assert pythons[0] == ("python=3.10" if path.stem == "trellis" else "python=3.11"), (path, pythons)
        assert all(isinstance(d, str) or set(d) == {"pip"} for d in data["dependencies"]), path


def test_every_rule_that_runs_code_names_an_existing_env() -> None:
    rules = rule_envs()
    assert set(EXPECTED_ENVS) <= set(rules), set(EXPECTED_ENVS) - set(rules)
    for rule, (envs, script) in rules.items():
        if script is None:
            assert not envs, rule
            continue
        assert envs, f"rule {rule} runs {script.name} but names no conda env"
        for env in envs:
            assert (ENVS / f"{env}.yaml").exists(), (rule, env)
        if rule in EXPECTED_ENVS:
            assert envs == EXPECTED_ENVS[rule], (rule, envs)


@pytest.mark.parametrize("rule", sorted(r for r, (_, script) in rule_envs().items() if script))
def test_env_lists_every_package_its_rule_imports(rule: str) -> None:
    envs, script = rule_envs()[rule]
    imported = imports_of([script, *EXTRA_CODE.get(rule, [])])
    # The parser follows dam3d's imports (module and function level) and the Blender script.
    assert KNOWN_IMPORTS.get(rule, set()) <= set(imported), (rule, imported)
    for env in envs:
        listed = set(env_packages(env))
        skip = NOT_REACHED.get((rule, env), {})
        for module, at_module_level in imported.items():
            if module in skip:
                assert not at_module_level, f"{module} is imported at module level: {rule} always loads it"
                continue
            providers = PROVIDERS.get(module, {module.lower().replace("_", "-")})
            assert providers & listed, f"envs/{env}.yaml lacks {module} (imported by rule {rule}'s code)"
        assert set(skip) <= set(imported), f"stale NOT_REACHED entries for {rule}/{env}: {set(skip) - set(imported)}"
        assert EXTRA_PACKAGES.get(env, set()) <= listed, (env, EXTRA_PACKAGES[env] - listed)


def test_pins_match_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = {}
    for line in pyproject["project"]["dependencies"]:
        req = Requirement(line)
        if req.specifier:
            pins[req.name.lower()] = req.specifier
    assert {"numpy", "pyarrow", "bpy"} <= set(pins), pins
    for path in sorted(ENVS.glob("*.yaml")):
        for name, spec in env_packages(path.stem).items():
            pyname = "torch" if name == "pytorch" else name
            if pyname not in pins:
                continue
            text = spec.split("::")[-1].replace(" ", "")
            wanted = str(pins[pyname])
            exact = re.fullmatch(r"[\w.-]+==?([\w.]+)", text)
            if exact and "<" not in text and ">" not in text:
                # An exact pin (conda `=`, pip `==`) must be a version pyproject allows.
                assert Version(exact.group(1)) in pins[pyname], (path.name, spec, wanted)
            else:
                assert text.endswith(wanted) and text[: -len(wanted)].lower().replace("_", "-") in {name, pyname}, (
                    path.name, spec, wanted,
                )
