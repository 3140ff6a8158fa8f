import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")

# The package lives next to the Snakefile; make it importable even when not pip-installed,
# here and in the jobs (the per-stage conda envs of --use-conda do not install it).
sys.path.insert(0, workflow.basedir)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        dict.fromkeys([workflow.basedir, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    )
)

from dam3d.catalogue import SAFE_ID_PATTERN, file_digests, load_catalogue
from dam3d.cutout import resolve_backend
from dam3d.embed import resolve_models
from dam3d.render import VIEW_NAMES


validate(config, workflow.source_path("../schemas/config.schema.yaml"))

RESULTS = config["results"]
ASSETS = {asset.asset_id: asset for asset in load_catalogue(config["catalogue"])}
DIGESTS = file_digests(
    [a.image for a in ASSETS.values()] + [a.mesh for a in ASSETS.values() if a.mesh],
    Path(RESULTS) / ".cache" / "file-digests.json",
)
# Any change to the SKU table (added, removed, renamed SKUs, metadata) rebuilds the index.
CATALOGUE_DIGEST = hashlib.sha1(
    json.dumps([[a.asset_id, a.sku, str(a.image), a.metadata] for a in ASSETS.values()]).encode()
).hexdigest()
CUTOUT_BACKEND = resolve_backend(
    config["cutout"]["backend"], config["cutout"]["model"], strict=config["strict"]
)
EMBED_MODELS = {
    spec.name: spec
    for spec in resolve_models(
        config["embed"]["models"], config["embed"]["presets"], strict=config["strict"]
    )
}
VIEWS = VIEW_NAMES(config["render"]["views"])
BACKGROUND = tuple(config["background"])

print(
    f"dam3d: {len(ASSETS)} assets from {config['catalogue']}; "
    f"cutout={CUTOUT_BACKEND}; "
    f"mesh={config['mesh']['backend'] if VIEWS else 'off'}; "
    f"render={config['render']['engine'] + ' x' + str(len(VIEWS)) if VIEWS else 'off'}; "
    f"embed={', '.join(EMBED_MODELS)}",
    file=sys.stderr,
)


wildcard_constraints:
    asset=SAFE_ID_PATTERN,
    model="|".join(EMBED_MODELS),


def catalogue_image(wildcards):
    return ASSETS[wildcards.asset].image


def image_digest(wildcards):
    return DIGESTS[ASSETS[wildcards.asset].image]


def provided_mesh_digest(wildcards):
    mesh = ASSETS[wildcards.asset].mesh
    return DIGESTS.get(mesh, "none") if config["mesh"]["backend"] == "provided" and mesh else "none"


def provided_mesh(wildcards):
    """The DAM's own mesh for the `provided` backend; missing ones fail that asset, not the DAG."""
    mesh = ASSETS[wildcards.asset].mesh
    if config["mesh"]["backend"] == "provided" and mesh is not None and mesh.exists():
        return [mesh]
    return []


def view_paths(asset):
    return [f"{RESULTS}/render/{asset}/{view}.png" for view in VIEWS]


def rendered_views(wildcards):
    return view_paths(wildcards.asset)


def asset_embeddings(wildcards):
    return [f"{RESULTS}/embed/{wildcards.model}/{asset}.npz" for asset in ASSETS]


# Targets added by the optional evaluate.smk (evaluation, timings).
EXTRA_TARGETS = []


def all_outputs():
    outputs = [f"{RESULTS}/index/{model}/manifest.json" for model in EMBED_MODELS]
    outputs.append(f"{RESULTS}/failures.tsv")
    if VIEWS:
        outputs.append(f"{RESULTS}/contact_sheet.png")
    return outputs + EXTRA_TARGETS
