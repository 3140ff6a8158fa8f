import contextlib
import functools
import gc
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("8.0")

# The plan (catalogue, keys, stamps, outputs of every SKU at every stage) makes millions of objects and
# no garbage cycles: the garbage collector would scan them again and again (0.6 s of a 10,000-SKU plan).
# Off until the Snakefile has planned; then the plan is frozen out of every later collection.
gc.disable()

# The package lives next to the Snakefile; make it importable even when not pip-installed,
# here and in the jobs (the per-stage conda envs of --use-conda do not install it).
sys.path.insert(0, workflow.basedir)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        dict.fromkeys([workflow.basedir, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    )
)

from dam3d.catalogue import file_digests, read_catalogue
from dam3d.runtime import layout
from dam3d.runtime.migrate import find_flat, flat_layout_message
from dam3d.search.colour import DESCRIPTOR_VERSION as COLOUR_DESCRIPTOR_VERSION
from dam3d.runtime.backends import backend
from dam3d.stages.cutout import resolve_backend
from dam3d.stages.embed import check_augment, embed_key, resolve_models
from dam3d.runtime.atomic import write_text
from dam3d.runtime.plan import code_digest, digest, plan_stage, summary as plan_summary
from dam3d.runtime.stamps import compact as compact_stamps
from dam3d.stages.contact import sheet_assets
from dam3d.stages.render import view_names


try:
    validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except WorkflowError as error:
    # Snakemake reads a value nested in --config (render={elevation: 25}) as text, so a number or a
    # boolean there fails its type check without a word on why.
    text = re.search(r"\W([-+.\w]+)\W is not of type \W(number|integer|boolean)\W", str(error))
    value = yaml.safe_load(text[1]) if text else None
    # Would the YAML of a --configfile give the type asked for? (a bool is an int to Python: told apart first)
    expected = {"number": (int, float), "integer": int, "boolean": bool}
    fits = text is not None and isinstance(value, bool) == (text[2] == "boolean") and isinstance(value, expected[text[2]])
    top = re.search(r"On instance\[\W(\w*)\W\]:", str(error))
    if not fits:
        raise
    if isinstance(value, bool) and top:
        # a top-level key: --config takes only True and False, capitalised, as booleans
        hint = f"dam3d: --config reads only True and False (capitalised) as booleans: {top[1]}={value}"
    else:
        hint = (
            "dam3d: a number or true/false inside a section given with --config reaches the config as text "
            "(Snakemake reads nested --config values as strings): put that section in a YAML file and give it "
            "with --configfile FILE"
        )
    raise WorkflowError(str(error), hint) from None

RESULTS = config["results"]
# Results of an older dam3d in the flat layout (cutout/ASSET.png, ...): every output path is new, so
# the run would compute every asset again. Stop, even on a dry run, and say how to keep them.
if workflow.is_main_process and (FLAT := find_flat(RESULTS)) is not None:
    raise WorkflowError(flat_layout_message(RESULTS, FLAT))
CATALOGUE = read_catalogue(config["catalogue"])
ASSETS = {asset.asset_id: asset for asset in CATALOGUE.assets}
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
# Catalogue-side 2D augmentations embedded as extra views (README, Search and fusions).
AUGMENT = list(check_augment(config["embed"].get("augment", [])))
# The backends of this run (dam3d.runtime.backends): rules ask them, never compare names.
CUTOUT = backend("cutout", CUTOUT_BACKEND)
MESH = backend("mesh", config["mesh"]["backend"])
VIEWS = view_names(config["render"]["views"])
BACKGROUND = tuple(config["background"])

print(
    f"dam3d: {len(ASSETS)} assets from {config['catalogue']}; "
    f"cutout={CUTOUT_BACKEND}; "
    f"mesh={config['mesh']['backend'] if VIEWS else 'off'}; "
    f"render={config['render']['engine'] + ' x' + str(len(VIEWS)) if VIEWS else 'off'}; "
    f"embed={', '.join(EMBED_MODELS)}",
    file=sys.stderr,
)
# Never silent: what the catalogue holds that is not an asset is said here and in failures.tsv.
for skipped in CATALOGUE.skipped if workflow.is_main_process else []:
    print(f"dam3d: skipped {skipped.name}: {skipped.reason}", file=sys.stderr)


wildcard_constraints:
    model="|".join(EMBED_MODELS),


ASSET_IDS = list(ASSETS)
CHUNKS = config["chunks"]
# A chunk job is one process that uses every thread it is given: on a workstation all of
# --cores (Snakemake runs chunks of different stages side by side when they ask for less:
# --set-threads). A cluster profile gives no --cores: its set-threads decide, else 1.
CHUNK_THREADS = workflow.resource_settings.cores or 1
# Snakemake retries of a chunk job that died (node lost, or an asset that kills its process:
# the third attempt records that asset as failed and finishes the others, see dam3d.runtime.chunk).
CHUNK_RETRIES = max(2, config["retries"])
# Chunk plans of the per-asset stages (dam3d.runtime.plan), filled by the stage files in order.
PLANS = {}


@functools.cache  # part of every asset's key: read each script once, not once per asset
def script_digest(name):
    """Editing a stage's script reruns that stage (Snakemake's `code` trigger, per asset)."""
    return code_digest(Path(workflow.basedir, "scripts", f"{name}.py"))


def add_plan(stage, *, outputs, key_parts, upstream=(), per_job, members, present=None):
    """Plan `stage` and remember how its chunk jobs describe each asset (`members(asset) -> dict`).

    `present(asset)`: the paths whose existence says a stamped asset's outputs are there (plan_stage's; default
    the outputs themselves).

    Only the main Snakemake process's plan counts: a job that Snakemake re-parses the
    workflow for (cluster, group job) would see other chunks already done and cut
    different chunks, so it reads its chunk's members from the file the main process
    wrote when the run started (write_chunk_members).
    """
    plan = plan_stage(
        stage,
        RESULTS,
        ASSET_IDS,
        outputs=outputs,
        key_parts=key_parts,
        upstream=[PLANS[up] for up in upstream],
        per_job=per_job,
        present=present,
    )
    plan.members = members
    PLANS[stage] = plan
    return plan


def write_chunk_members():
    """The members of each chunk of this run, for jobs that re-parse the workflow (`onstart`: not on -n).

    Files of older chunks that no asset was made by any more are removed first.
    """
    for stage, plan in PLANS.items():
        keep = {Path(ref).name for ref in plan.made_by.values()}
        keep |= {f"{name}{suffix}" for name in plan.chunks for suffix in (".json", ".members.json")}
        for old in layout.chunks(RESULTS, stage).glob("*.json"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        for name, assets in plan.chunks.items():
            write_text(layout.chunk_members(RESULTS, stage, name), json.dumps([chunk_member(stage, a) for a in assets]))


def compact_journals():
    """Merge each stage's journal of stamps into its store (dam3d.runtime.stamps), so the next run's plan
    reads one file per stage: at the run's end (`onsuccess`, `onerror`: never on -n, nor when there was
    nothing to do), with Snakemake's lock held and no job of this run left to write."""
    for stage in PLANS:
        compact_stamps(RESULTS, stage)


def chunk_member(stage, asset):
    plan = PLANS[stage]
    return {"asset": asset, "key": plan.keys[asset], "outputs": plan.outputs[asset], **plan.members(asset)}


def chunk_members(stage, chunk):
    """The members of one chunk job, as the main process planned them."""
    plan = PLANS[stage]
    if chunk in plan.chunks:
        return [chunk_member(stage, a) for a in plan.chunks[chunk]]
    return json.loads(layout.chunk_members(RESULTS, stage, chunk).read_text())


def chunk_constraint(stage):
    # Re-parsed jobs accept any chunk name: theirs was planned by the main process.
    return PLANS[stage].chunk_pattern() if workflow.is_main_process else r"[0-9]+x-[0-9a-f]{12}"


def chunk_inputs(stage, upstream):
    """Input function of a chunk job: the upstream chunks computing its members now.

    Catalogue files (photos, provided meshes) are not inputs: Snakemake would stop the
    whole run on one missing file or take braces in a name for a wildcard. Their
    content is in each asset's key instead, and a missing one fails that asset alone.
    """

    def inputs(wildcards):
        assets = [m["asset"] for m in chunk_members(stage, wildcards.chunk)]
        files = []
        # Only the main process orders chunks; a re-parsed job's own plan may name other chunks.
        for up in upstream if workflow.is_main_process else []:
            files += PLANS[up].chunk_refs(assets)
        return files

    return inputs


def stage_refs(stage):
    """Per asset, the file standing for `stage`'s result (see StagePlan.aggregate_input): input of the aggregate rules."""
    plan = PLANS[stage]
    return list(dict.fromkeys(plan.aggregate_input(a) for a in ASSET_IDS))


def contact_sheet_assets():
    """The SKUs of the run-wide contact sheet: at most contact_sheet.max_assets, the newest (dam3d.stages.contact)."""
    plan = PLANS["contact"]
    finished = {}  # one stat per chunk manifest, not one per asset
    for ref in set(plan.made_by.values()):
        with contextlib.suppress(OSError):
            finished[ref] = os.stat(ref).st_mtime
    made_at = {asset: finished[ref] for asset, ref in plan.made_by.items() if ref in finished}
    return sheet_assets(ASSET_IDS, plan.chunk_of, made_at, config["contact_sheet"]["max_assets"])


def index_build(model, settings):
    """A digest of what one model's index is made of: each SKU's embedding key (which holds every stage's
    key before it), the SKU table and the index rule's `settings`. It names the rule's output
    (layout.index_stamp), so that a changed input means a stamp that does not exist yet, and Snakemake
    rebuilds the index without needing its own records of the last run (a results folder copied
    elsewhere has none: Snakemake then saw nothing to do, whatever had changed).
    """
    keys = PLANS[f"embed-{model}"].keys
    sha1 = hashlib.sha1("\n".join(f"{asset} {keys[asset]}" for asset in ASSET_IDS).encode())
    return digest([sha1.hexdigest(), CATALOGUE_DIGEST, settings])[:12]


def index_stamp(model):
    """This run's `index` output for one model (the input of the rules that read the index)."""
    return str(layout.index_stamp(RESULTS, model, INDEX_BUILDS[model]))


def provided_mesh(asset):
    """The DAM's own mesh for the `provided` backend; a missing one fails that asset, not the DAG."""
    mesh = ASSETS[asset].mesh
    if MESH.reads_dam_mesh and mesh is not None and mesh.exists():
        return mesh
    return None


def conda_env(stage_backend):
    """The conda env file of a backend's rule, relative to the rule files."""
    return f"../../envs/{stage_backend.env}.yaml"


def view_paths(asset):
    return layout.view_files(RESULTS, asset, VIEWS)


# Targets added by the optional evaluate.smk (evaluation, timings).
EXTRA_TARGETS = []


def all_outputs():
    outputs = [index_stamp(model) for model in EMBED_MODELS]
    outputs.append(f"{RESULTS}/failures.tsv")
    if VIEWS:
        outputs.append(f"{RESULTS}/contact_sheet.png")
    return outputs + EXTRA_TARGETS
