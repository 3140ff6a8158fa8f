rule mesh:
    input:
        cutout=f"{RESULTS}/cutout/{{asset}}.png",
        provided=provided_mesh,
    output:
        f"{RESULTS}/mesh/{{asset}}.glb",
    params:
        backend=config["mesh"]["backend"],
        # Only the active backend's settings, so tuning another one reruns nothing.
        settings=config["mesh"].get(config["mesh"]["backend"], {}),
    resources:
        gpu=1 if config["mesh"]["backend"] == "trellis" else 0,
    log:
        f"{RESULTS}/logs/mesh/{{asset}}.log",
    conda:
        "../../envs/trellis.yaml" if config["mesh"]["backend"] == "trellis" else "../../envs/blender.yaml"
    script:
        "../../scripts/mesh.py"
