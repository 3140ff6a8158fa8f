rule cutout:
    input:
        catalogue_image,
    output:
        f"{RESULTS}/cutout/{{asset}}.png",
    params:
        image_digest=image_digest,
        backend=CUTOUT_BACKEND,
        model=config["cutout"]["model"],
        size=config["cutout"]["size"],
        margin=config["cutout"]["margin"],
        max_pixels=config["cutout"]["max_pixels"],
    retries: config["retries"]
    resources:
        # Snakemake hands the attempt number to resource functions only; the stage
        # needs it to tell a retry (raise) from the last attempt (record the failure).
        attempt=lambda wildcards, attempt: attempt,
        gpu=1 if CUTOUT_BACKEND == "rmbg" else 0,
    benchmark:
        f"{RESULTS}/benchmarks/cutout/{{asset}}.tsv"
    log:
        f"{RESULTS}/logs/cutout/{{asset}}.log",
    conda:
        "../../envs/rmbg.yaml"
    script:
        "../../scripts/cutout.py"
