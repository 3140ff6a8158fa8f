rule mesh:
    input:
        cutout=f"{RESULTS}/cutout/{{asset}}.png",
        provided=provided_mesh,
    output:
        f"{RESULTS}/mesh/{{asset}}.glb",
    params:
        provided_digest=provided_mesh_digest,
        backend=config["mesh"]["backend"],
        # Only the active backend's settings, so tuning another one reruns nothing.
        settings=config["mesh"].get(config["mesh"]["backend"], {}),
    retries: config["retries"]
    resources:
        # Snakemake hands the attempt number to resource functions only; the stage
        # needs it to tell a retry (raise) from the last attempt (record the failure).
        attempt=lambda wildcards, attempt: attempt,
        gpu=1 if config["mesh"]["backend"] == "trellis" else 0,
    benchmark:
        f"{RESULTS}/benchmarks/mesh/{{asset}}.tsv"
    log:
        f"{RESULTS}/logs/mesh/{{asset}}.log",
    conda:
        "../../envs/trellis.yaml" if config["mesh"]["backend"] == "trellis" else "../../envs/blender.yaml"
    script:
        "../../scripts/mesh.py"
