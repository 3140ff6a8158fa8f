rule index:
    input:
        asset_embeddings,
    output:
        assets=f"{RESULTS}/index/{{model}}/assets.parquet",
        manifest=f"{RESULTS}/index/{{model}}/manifest.json",
    params:
        spec=lambda wildcards: asdict(EMBED_MODELS[wildcards.model]),
        backends={
            "cutout": CUTOUT_BACKEND,
            "cutout_model": config["cutout"]["model"] if CUTOUT_BACKEND == "rmbg" else "u2netp",
            "mesh": config["mesh"]["backend"] if VIEWS else None,
            "render_engine": config["render"]["engine"] if VIEWS else None,
        },
    log:
        f"{RESULTS}/logs/index/{{model}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/index.py"
