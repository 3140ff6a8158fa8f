rule cutout:
    input:
        catalogue_image,
    output:
        f"{RESULTS}/cutout/{{asset}}.png",
    params:
        backend=CUTOUT_BACKEND,
        model=config["cutout"]["model"],
        size=config["cutout"]["size"],
        margin=config["cutout"]["margin"],
        max_pixels=config["cutout"]["max_pixels"],
    resources:
        gpu=1 if CUTOUT_BACKEND == "rmbg" else 0,
    log:
        f"{RESULTS}/logs/cutout/{{asset}}.log",
    conda:
        "../../envs/rmbg.yaml"
    script:
        "../../scripts/cutout.py"
