for model, spec in EMBED_MODELS.items():
    add_plan(
        f"embed-{model}",
        outputs=lambda asset, model=model: [layout.embedding_file(RESULTS, model, asset)],
        key_parts=lambda asset, key=embed_key(spec, AUGMENT): [key, BACKGROUND, script_digest("embed")],
        upstream=["cutout", "render"] if VIEWS else ["cutout"],
        per_job=CHUNKS["embed"],
        members=lambda asset: {
            "cutout": layout.cutout_file(RESULTS, asset),
            "views": view_paths(asset),
            "requires": [layout.cutout_file(RESULTS, asset)],
        },
    )


rule embed:
    input:
        lambda wildcards: chunk_inputs(f"embed-{wildcards.model}", ["cutout", "render"] if VIEWS else ["cutout"])(wildcards),
    output:
        str(layout.chunk_manifest(RESULTS, "embed-{model}", "{chunk}")),
    wildcard_constraints:
        chunk="|".join(chunk_constraint(f"embed-{model}") for model in EMBED_MODELS),
    params:
        members=lambda wildcards: chunk_members(f"embed-{wildcards.model}", wildcards.chunk),
        spec=lambda wildcards: asdict(EMBED_MODELS[wildcards.model]),
        background=BACKGROUND,
        batch_size=config["embed"]["batch_size"],
        augment=AUGMENT,
    threads: CHUNK_THREADS
    retries: CHUNK_RETRIES
    resources:
        gpu=lambda wildcards: int(backend("embed", EMBED_MODELS[wildcards.model].backend).gpu),
    benchmark:
        f"{RESULTS}/benchmarks/embed-{{model}}/{{chunk}}.tsv"
    log:
        f"{RESULTS}/logs/embed/{{model}}/{{chunk}}.log",
    conda:
        lambda wildcards: conda_env(backend("embed", EMBED_MODELS[wildcards.model].backend))
    script:
        "../../scripts/embed.py"
