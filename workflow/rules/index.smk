# What each index is made of beyond its SKUs' embeddings; a change rebuilds the index (see index_build).
INDEX_SETTINGS = {
    # How the vectors are stored.
    "vectors": config["index"],
    # The colour descriptors (dam3d.search.colour) made from the cutouts.
    "colour": f"colour-{COLOUR_DESCRIPTOR_VERSION}",
    "backends": {
        "cutout": CUTOUT.name,
        "cutout_model": CUTOUT.key(config["cutout"]),
        "mesh": config["mesh"]["backend"] if VIEWS else None,
        "render_engine": config["render"]["engine"] if VIEWS else None,
    },
}
INDEX_BUILDS = {model: index_build(model, [INDEX_SETTINGS, asdict(spec)]) for model, spec in EMBED_MODELS.items()}


rule index:
    input:
        lambda wildcards: stage_refs(f"embed-{wildcards.model}"),
    output:
        # A stamp, not the index's manifest.json: Snakemake deletes a job's outputs before running it, and the
        # index stays searchable while it is updated (its files live in a data folder that manifest.json names,
        # dam3d.search.update: an update writes a new folder and switches by replacing manifest.json, last).
        stamp=str(layout.index_stamp(RESULTS, "{model}", "{build}")),
    wildcard_constraints:
        build="[0-9a-f]{12}",
    params:
        index=lambda wildcards: str(layout.index(RESULTS, wildcards.model)),
        # Each SKU's embedding file: the embed stage's one output, as its plan has it (no path built again per SKU).
        embeddings=lambda wildcards: [PLANS[f"embed-{wildcards.model}"].outputs[a][0] for a in ASSET_IDS],
        # The stages this index is made from: their failure records go into its manifest.
        stages=lambda wildcards: ["cutout", *(["mesh", "render"] if VIEWS else []), f"embed-{wildcards.model}"],
        catalogue=CATALOGUE_DIGEST,
        # Also in the stamp's name (INDEX_BUILDS); as params they are a rerun trigger as well.
        vectors=INDEX_SETTINGS["vectors"],
        colour=INDEX_SETTINGS["colour"],
        spec=lambda wildcards: asdict(EMBED_MODELS[wildcards.model]),
        backends=INDEX_SETTINGS["backends"],
    benchmark:
        f"{RESULTS}/benchmarks/index/{{model}}.{{build}}.tsv"
    log:
        f"{RESULTS}/logs/index/{{model}}.{{build}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/index.py"


rule failure_report:
    input:
        [index_stamp(model) for model in EMBED_MODELS],
        stage_refs("contact") if VIEWS else [],
    output:
        f"{RESULTS}/failures.tsv",
    params:
        skus={asset_id: asset.sku for asset_id, asset in ASSETS.items()},
        skipped=[[s.name, s.reason] for s in CATALOGUE.skipped],
        # Records of stages this configuration no longer runs (views: 0, a dropped model) are left out.
        stages=list(PLANS),
    log:
        f"{RESULTS}/logs/failure_report.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/failure_report.py"
