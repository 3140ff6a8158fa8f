rule embed:
    input:
        cutout=f"{RESULTS}/cutout/{{asset}}.png",
        views=rendered_views,
    output:
        f"{RESULTS}/embed/{{model}}/{{asset}}.npz",
    params:
        spec=lambda wildcards: asdict(EMBED_MODELS[wildcards.model]),
        background=BACKGROUND,
        batch_size=config["embed"]["batch_size"],
    retries: config["retries"]
    resources:
        # Snakemake hands the attempt number to resource functions only; the stage
        # needs it to tell a retry (raise) from the last attempt (record the failure).
        attempt=lambda wildcards, attempt: attempt,
        gpu=lambda wildcards: int(EMBED_MODELS[wildcards.model].backend == "vit"),
    benchmark:
        f"{RESULTS}/benchmarks/embed_{{model}}/{{asset}}.tsv"
    log:
        f"{RESULTS}/logs/embed/{{model}}/{{asset}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/embed.py"
