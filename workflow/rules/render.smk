# What changes the views (the asset's key); the Blender binary and the time limit do not.
RENDER_SETTINGS = {k: v for k, v in config["render"].items() if k not in ("blender", "timeout")}

add_plan(
    "render",
    outputs=view_paths,
    # A stamped asset's views are there when their folder is: they are written before the stamp, and a job that
    # renders an asset again clears its stamp first. One listing per shard folder instead of one per SKU (~1 s at
    # 100,000 SKUs: README, Overhead on a large catalogue).
    present=lambda asset: [layout.views_folder(RESULTS, asset)],
    # The Blender build too: another version may render differently.
    key_parts=lambda asset: [RENDER_SETTINGS, config["render"]["blender"], script_digest("render")],
    upstream=["mesh"],
    per_job=CHUNKS["render"],
    members=lambda asset: {"mesh": layout.mesh_file(RESULTS, asset), "requires": [layout.mesh_file(RESULTS, asset)]},
)


rule render:
    input:
        chunk_inputs("render", ["mesh"]),
    output:
        str(layout.chunk_manifest(RESULTS, "render", "{chunk}")),
    wildcard_constraints:
        chunk=chunk_constraint("render"),
    params:
        members=lambda wildcards: chunk_members("render", wildcards.chunk),
        settings=RENDER_SETTINGS,
        blender=config["render"]["blender"],
        timeout=config["render"]["timeout"],
    threads: CHUNK_THREADS
    retries: CHUNK_RETRIES
    resources:
        gpu=1 if config["render"]["device"] == "GPU" else 0,
    benchmark:
        f"{RESULTS}/benchmarks/render/{{chunk}}.tsv"
    log:
        f"{RESULTS}/logs/render/{{chunk}}.log",
    conda:
        "../../envs/blender.yaml"
    script:
        "../../scripts/render.py"


add_plan(
    "contact",
    outputs=lambda asset: [layout.contact_file(RESULTS, asset)],
    key_parts=lambda asset: [BACKGROUND, ASSETS[asset].sku, script_digest("contact")],
    upstream=["cutout", "render"],
    per_job=CHUNKS["contact"],
    members=lambda asset: {
        "cutout": layout.cutout_file(RESULTS, asset),
        "views": view_paths(asset),
        "mesh": layout.mesh_file(RESULTS, asset),
        "sku": ASSETS[asset].sku,
    },
)


rule contact_asset:
    input:
        chunk_inputs("contact", ["cutout", "render"]),
    output:
        str(layout.chunk_manifest(RESULTS, "contact", "{chunk}")),
    wildcard_constraints:
        chunk=chunk_constraint("contact"),
    params:
        members=lambda wildcards: chunk_members("contact", wildcards.chunk),
        background=BACKGROUND,
    log:
        f"{RESULTS}/logs/contact/{{chunk}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/contact.py"


CONTACT_SHEET_ASSETS = contact_sheet_assets()


rule contact_sheet:
    input:
        list(dict.fromkeys(PLANS["contact"].aggregate_input(a) for a in CONTACT_SHEET_ASSETS)),
    output:
        report(f"{RESULTS}/contact_sheet.png", caption="../report/contact_sheet.rst", category="Renders"),
    params:
        # The sheets shown: a rerun trigger, so the run's sheet follows the newest SKUs.
        sheets=[layout.contact_file(RESULTS, asset) for asset in CONTACT_SHEET_ASSETS],
    log:
        f"{RESULTS}/logs/contact_sheet.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/contact.py"
