rule render:
    input:
        f"{RESULTS}/mesh/{{asset}}.glb",
    output:
        [f"{RESULTS}/render/{{asset}}/{view}.png" for view in VIEWS],
    params:
        settings={k: v for k, v in config["render"].items() if k != "blender"},
        blender=config["render"]["blender"],
    retries: config["retries"]
    resources:
        # Snakemake hands the attempt number to resource functions only; the stage
        # needs it to tell a retry (raise) from the last attempt (record the failure).
        attempt=lambda wildcards, attempt: attempt,
        gpu=1 if config["render"]["device"] == "GPU" else 0,
    benchmark:
        f"{RESULTS}/benchmarks/render/{{asset}}.tsv"
    log:
        f"{RESULTS}/logs/render/{{asset}}.log",
    conda:
        "../../envs/blender.yaml"
    script:
        "../../scripts/render.py"


rule contact_asset:
    input:
        cutout=f"{RESULTS}/cutout/{{asset}}.png",
        views=rendered_views,
    output:
        f"{RESULTS}/contact/{{asset}}.png",
    params:
        background=BACKGROUND,
        sku=lambda wildcards: ASSETS[wildcards.asset].sku,
    log:
        f"{RESULTS}/logs/contact/{{asset}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/contact.py"


rule contact_sheet:
    input:
        [f"{RESULTS}/contact/{asset}.png" for asset in ASSETS],
    output:
        report(f"{RESULTS}/contact_sheet.png", caption="../report/contact_sheet.rst", category="Renders"),
    log:
        f"{RESULTS}/logs/contact_sheet.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/contact.py"
