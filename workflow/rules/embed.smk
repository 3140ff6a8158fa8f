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
    resources:
        gpu=lambda wildcards: int(EMBED_MODELS[wildcards.model].backend == "vit"),
    log:
        f"{RESULTS}/logs/embed/{{model}}/{{asset}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/embed.py"
