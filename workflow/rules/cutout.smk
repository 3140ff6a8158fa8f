# What changes every cutout, worked out once (not once per asset): backend, model, settings, script.
CUTOUT_KEY = [
    CUTOUT.name,
    CUTOUT.key(config["cutout"]),
    {k: config["cutout"][k] for k in ("size", "margin", "max_pixels")},
    script_digest("cutout"),
]

add_plan(
    "cutout",
    outputs=lambda asset: [layout.cutout_file(RESULTS, asset)],
    # The photo's content, not its mtime: a touched or copied file reruns nothing.
    key_parts=lambda asset: [DIGESTS[ASSETS[asset].image], *CUTOUT_KEY],
    per_job=CHUNKS["cutout"],
    # An entry the catalogue could not use (a URL...) fails at once with the catalogue's reason.
    members=lambda asset: {"image": str(ASSETS[asset].image), "refused": ASSETS[asset].problem},
)


rule cutout:
    input:
        # The photos are not inputs: the asset's key holds their content, and a path with
        # braces or a missing file must fail that asset, not the DAG (see dam3d.runtime.chunk).
        chunk_inputs("cutout", []),
    output:
        str(layout.chunk_manifest(RESULTS, "cutout", "{chunk}")),
    wildcard_constraints:
        chunk=chunk_constraint("cutout"),
    params:
        members=lambda wildcards: chunk_members("cutout", wildcards.chunk),
        backend=CUTOUT.name,
        model=config["cutout"]["model"],
        size=config["cutout"]["size"],
        margin=config["cutout"]["margin"],
        max_pixels=config["cutout"]["max_pixels"],
        batch_size=config["cutout"]["batch_size"],
    threads: CHUNK_THREADS
    retries: CHUNK_RETRIES
    resources:
        gpu=int(CUTOUT.gpu),
    benchmark:
        f"{RESULTS}/benchmarks/cutout/{{chunk}}.tsv"
    log:
        f"{RESULTS}/logs/cutout/{{chunk}}.log",
    conda:
        conda_env(CUTOUT)
    script:
        "../../scripts/cutout.py"
