add_plan(
    "cutout",
    outputs=lambda asset: [f"{RESULTS}/cutout/{asset}.png"],
    # The photo's content, not its mtime: a touched or copied file reruns nothing.
    key_parts=lambda asset: [
        DIGESTS[ASSETS[asset].image],
        CUTOUT_BACKEND,
        config["cutout"]["model"] if CUTOUT_BACKEND == "rmbg" else "u2netp",
        {k: config["cutout"][k] for k in ("size", "margin", "max_pixels")},
        script_digest("cutout"),
    ],
    per_job=CHUNKS["cutout"],
    members=lambda asset: {"image": str(ASSETS[asset].image)},
)


rule cutout:
    input:
        chunk_inputs("cutout", [], sources=lambda asset: [ASSETS[asset].image]),
    output:
        f"{RESULTS}/chunks/cutout/{{chunk}}.json",
    wildcard_constraints:
        chunk=chunk_constraint("cutout"),
    params:
        members=lambda wildcards: chunk_members("cutout", wildcards.chunk),
        backend=CUTOUT_BACKEND,
        model=config["cutout"]["model"],
        size=config["cutout"]["size"],
        margin=config["cutout"]["margin"],
        max_pixels=config["cutout"]["max_pixels"],
        batch_size=config["cutout"]["batch_size"],
    threads: workflow.cores
    retries: CHUNK_RETRIES
    resources:
        gpu=1 if CUTOUT_BACKEND == "rmbg" else 0,
    benchmark:
        f"{RESULTS}/benchmarks/cutout/{{chunk}}.tsv"
    log:
        f"{RESULTS}/logs/cutout/{{chunk}}.log",
    conda:
        "../../envs/rmbg.yaml"
    script:
        "../../scripts/cutout.py"
