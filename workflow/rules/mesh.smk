MESH_KEY = [MESH.name, MESH.key(config["mesh"])]  # once, not once per asset

add_plan(
    "mesh",
    outputs=lambda asset: [layout.mesh_file(RESULTS, asset)],
    key_parts=lambda asset: [*MESH_KEY, DIGESTS.get(provided_mesh(asset), "none"), script_digest("mesh")],
    upstream=["cutout"],
    per_job=CHUNKS["mesh"],
    members=lambda asset: {
        "cutout": layout.cutout_file(RESULTS, asset),
        "provided": str(mesh) if (mesh := provided_mesh(asset)) else None,
        "requires": [layout.cutout_file(RESULTS, asset)],
    },
)


rule mesh:
    input:
        # Provided meshes are not inputs either (their content is in the key): see cutout.smk.
        chunk_inputs("mesh", ["cutout"]),
    output:
        str(layout.chunk_manifest(RESULTS, "mesh", "{chunk}")),
    wildcard_constraints:
        chunk=chunk_constraint("mesh"),
    params:
        members=lambda wildcards: chunk_members("mesh", wildcards.chunk),
        backend=config["mesh"]["backend"],
        settings=MESH_KEY[1],
    # inflate and provided are single-threaded NumPy/trimesh; TRELLIS works on the GPU.
    threads: 1
    retries: CHUNK_RETRIES
    resources:
        gpu=int(MESH.gpu),
    benchmark:
        f"{RESULTS}/benchmarks/mesh/{{chunk}}.tsv"
    log:
        f"{RESULTS}/logs/mesh/{{chunk}}.log",
    conda:
        conda_env(MESH)
    script:
        "../../scripts/mesh.py"
