"""Every command the README documents runs, as written (placeholders aside), in some test.

`COMMANDS` maps each command line of the README's code blocks to the test that runs
it; a README command with no entry fails `test_every_readme_command_has_a_test`. The
bundled-sample commands run here, in a copy of the checkout, exactly as written.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent
# README command (as in its code block, comment dropped) -> the test that runs it.
COMMANDS = {
    "./setup.sh && .venv/bin/snakemake --cores 2 && .venv/bin/dam3d search sample/queries/IMG_2041.jpg":
        "test_readme.py::test_main_command_on_the_sample",
    "./setup.sh && .venv/bin/python -m pytest -q": "CI: .ci/run runs it verbatim",
    ". .venv/bin/activate": "test_readme.py::test_main_command_on_the_sample",
    "snakemake --cores 8 --config catalogue=/data/dam/photos": "test_realworld.py::test_braces_in_a_file_name_are_just_characters",
    "dam3d search photo.jpg -k 5 --fusion mean": "test_readme.py::test_main_command_on_the_sample",
    "dam3d search photo.jpg --where 'category == \"chairs\" and price < 100'":
        "test_filters.py::test_cli_where_as_the_readme_writes_it",
    "dam3d search --text \"red ceramic mug\"": "test_clip.py::test_cli_text_search_ranks_by_the_models_own_cosine",
    "dam3d serve": "test_serve.py::test_default_host_is_loopback",
    "dam3d search two-products.jpg --json": "test_query_objects.py::test_cli_searches_each_object",
    "dam3d evaluate queries.csv": "test_readme.py::test_main_command_on_the_sample",
    "dam3d failures": "test_readme.py::test_main_command_on_the_sample",
    "dam3d rerun SKU --from mesh": "test_refresh.py::test_bad_asset_is_isolated_reported_and_picked_up_once_fixed",
    "dam3d migrate-layout results": "test_layout.py::test_migrate_layout_command_prints_counts_and_refuses_what_it_cannot_do",
    "dam3d audit": "test_readme.py::test_main_command_on_the_sample",
    "dam3d audit [--index DIR] [--fusion F] [--threshold 0.9] [--k 10] [--out DIR] [--json]":
        "test_audit.py::test_cli_writes_the_audit_beside_the_index_and_prints_a_summary",
    "python -m dam3d.benchmarks.speed [--assets 24] [--device auto|cpu|cuda] [--batch-size N] [--workers N] [--target]":
        "test_readme.py::test_speed_benchmarks_run",
    "dam3d serve [--index DIR] [--host 127.0.0.1] [--port 7860] [--max-upload-mb 25]":
        "test_serve.py::test_default_host_is_loopback",
    "python -m dam3d.benchmarks.speed --search 3000 --queries 60 [--threads 1]": "test_readme.py::test_speed_benchmarks_run",
    "dam3d evaluate QUERIES.csv [--index DIR] [--json] [--cache DIR | --no-cache]":
        "test_evaluate.py::test_cli_json_cache_and_missing_sku",
    "dam3d bench make OUT [--objects 120] [--queries-per-object 2] [--seed 0] [--resolution 512] [--sources cc0,cc-by,products] "
    "[--engine BLENDER_EEVEE]":
        "test_evaluate.py::test_bench_make_tiny",
    ".venv/bin/dam3d bench make /tmp/bp_s2 --sources products --objects 60 --queries-per-object 2 --seed 2":
        "test_bench_products.py::test_a_tiny_products_benchmark",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bp_s2/catalogue results=/tmp/bp_s2/r_infl":
        "test_realworld.py::test_braces_in_a_file_name_are_just_characters",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bp_s2/catalogue results=/tmp/bp_s2/r_mirror "
    "'mesh={inflate: {hidden: mirror}}'":
        "test_workflow.py::test_dot_test_configs_run_as_the_community_workflows_run_them",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bp_s2/catalogue results=/tmp/bp_s2/r_prior "
    "'mesh={backend: prior}'": "test_workflow.py::test_dot_test_configs_run_as_the_community_workflows_run_them",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bp_s2/catalogue_meshes.csv results=/tmp/bp_s2/r_prov "
    "'mesh={backend: provided}'":
        "test_evaluate.py::test_true_meshes_of_a_benchmark_run_with_the_provided_backend",
    ".venv/bin/dam3d evaluate /tmp/bp_s2/queries.csv --results /tmp/bp_s2/r_infl --colour-weight 0":
        "test_colour.py::test_cli_evaluate_and_search_with_colour_weight",
    ".venv/bin/dam3d bench make /tmp/bench_s2 --objects 60 --queries-per-object 2 --seed 2":
        "test_evaluate.py::test_bench_make_tiny",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bench_s2/catalogue results=/tmp/bench_s2/results":
        "test_realworld.py::test_braces_in_a_file_name_are_just_characters",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bench_s2/catalogue_meshes.csv "
    "results=/tmp/bench_s2/results_provided 'mesh={backend: provided}'":
        "test_evaluate.py::test_true_meshes_of_a_benchmark_run_with_the_provided_backend",
    ".venv/bin/dam3d evaluate /tmp/bench_s2/queries.csv --results /tmp/bench_s2/results_provided":
        "test_readme.py::test_main_command_on_the_sample",
    ".venv/bin/dam3d bench make /tmp/bench_t1 --objects 150 --queries-per-object 2 --seed 11":
        "test_evaluate.py::test_bench_make_tiny",
    ".venv/bin/dam3d bench make /tmp/bp_t11 --sources products --objects 80 --queries-per-object 2 --seed 11":
        "test_bench_products.py::test_a_tiny_products_benchmark",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/be_t11/catalogue results=/tmp/be_t11/r_inflblur "
    "'mesh={inflate: {hidden: blur}}'":
        "test_workflow.py::test_dot_test_configs_run_as_the_community_workflows_run_them",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bp_t11/catalogue results=/tmp/bp_t11/r_blur "
    "'mesh={backend: prior, prior: {shapes: [cuboid, revolution], hidden: blur}}'":
        "test_workflow.py::test_dot_test_configs_run_as_the_community_workflows_run_them",
    ".venv/bin/snakemake --cores 2 --config catalogue=/tmp/bench_t1/catalogue results=/tmp/bench_t1/results_prior "
    "'mesh={backend: prior}'": "test_workflow.py::test_dot_test_configs_run_as_the_community_workflows_run_them",
    "python -m dam3d.benchmarks.scale [--skus 20000] [--views 8] [--dim 1280] [--queries 200] [--threads 2] "
    "[--dtype float16] [--pca 0]":
        "test_readme.py::test_speed_benchmarks_run",
    "dam3d install-weights u2netp|u2net|isnet [--dest DIR] [--from FILE]":
        "test_cutout_weights.py::test_install_refuses_a_wrong_file_and_writes_nothing",
    "python -m dam3d.benchmarks.scale --update [--skus 10000] [--views 8] [--dim 1280] [--ann]":
        "test_readme.py::test_speed_benchmarks_run",
    "PYTHONPATH=. python3 -m dam3d.benchmarks.speed --models-only --device cuda --assets 512 --batch-size 64":
        "test_bench.py::test_models_only_runs_where_only_the_model_packages_are",
    "snakemake --profile profiles/local --use-conda":
        "not run: conda cannot run on this project's machines; test_envs.py checks the env files, "
        "test_profiles.py::test_local_profile_runs_gpu_jobs_one_at_a_time the profile",
    "snakemake --profile profiles/slurm-gpu --config catalogue=/data/dam/photos":
        "test_slurm.py::test_pipeline_on_slurm_with_gpu_profile",
    "snakemake --profile profiles/slurm-gpu --use-conda ...":
        "not run: conda cannot run on this project's machines (see above); the Slurm part: test_slurm.py",
}
COMMAND_START = re.compile(r"^    (\./setup\.sh|\. \.venv|\.venv/bin/|snakemake |dam3d |python -m |PYTHONPATH=)")


def readme_commands() -> list[str]:
    commands = []
    for line in (REPO / "README.md").read_text().splitlines():
        if COMMAND_START.match(line):
            commands.append(re.sub(r"\s+#.*$", "", line.strip()))
    return commands


def test_every_readme_command_has_a_test() -> None:
    commands = readme_commands()
    assert len(commands) >= 15  # the parser finds the code blocks
    missing = [c for c in commands if c not in COMMANDS]
    assert not missing, f"README commands no test runs (add one, and an entry in COMMANDS): {missing}"
    for command, where in COMMANDS.items():
        assert command in commands, f"COMMANDS lists a command the README no longer has: {command}"
        if "::" in where and not where.startswith("not run"):
            path, name = where.split("::")
            assert re.search(rf"^def {name}\(", (REPO / "tests" / path).read_text(), re.M), where


def sh(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)


def test_main_command_on_the_sample(tmp_path: Path) -> None:
    """The README's first command, in a copy of the checkout (setup.sh is what CI ran before the tests)."""
    root = tmp_path / "dam3d"
    root.mkdir()
    for part in ("Snakefile", "config.yaml", "workflow", "scripts", "blender", "envs", "dam3d", "sample"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, root / part)
    run = sh(root, BIN / "snakemake", "--cores", "2")
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Traceback" not in run.stderr and "Error in rule" not in run.stderr, run.stderr[-3000:]
    search = sh(root, BIN / "dam3d", "search", "sample/queries/IMG_2041.jpg")
    assert search.returncode == 0, search.stderr
    first = next(line for line in search.stdout.splitlines() if line.strip().startswith("1"))
    assert "CHAIR-0002" in first, search.stdout
    as_json = sh(root, BIN / "dam3d", "search", "sample/queries/IMG_2041.jpg", "-k", "5", "--fusion", "mean", "--json")
    assert as_json.returncode == 0 and "CHAIR-0002" in as_json.stdout, as_json.stderr
    evaluate = sh(root, BIN / "dam3d", "evaluate", "sample/queries.csv", "--results", "results")
    assert evaluate.returncode == 0 and "top-1" in evaluate.stdout.lower(), evaluate.stdout + evaluate.stderr
    failures = sh(root, BIN / "dam3d", "failures")
    assert failures.returncode == 0 and "0 failed asset(s)" in failures.stderr, failures.stdout + failures.stderr
    audit = sh(root, BIN / "dam3d", "audit")
    assert audit.returncode == 0 and "look-alike pair(s) among 16 SKUs" in audit.stdout, audit.stdout + audit.stderr
    assert (root / "results" / "audit" / "mobilenetv2.csv").is_file() and (root / "results" / "audit" / "mobilenetv2.html").is_file()
    # The results section's commands: the same run with queries set, then its report.
    config = ["--config", "catalogue=sample/catalogue", "queries=sample/queries.csv", "results=results"]
    with_queries = sh(root, BIN / "snakemake", "--cores", "2", *config)
    assert with_queries.returncode == 0, with_queries.stderr[-3000:]
    assert json.loads((root / "results" / "evaluate" / "mobilenetv2.json").read_text())
    # search.fusion: auto now searches with the fusion that did best on those 6 photos, and says so
    best = json.loads((root / "results" / "evaluate" / "mobilenetv2.fusion.json").read_text())["fusion"]
    auto = sh(root, BIN / "dam3d", "search", "sample/queries/IMG_2041.jpg")
    assert f"fusion {best}: auto: best top-1 on 6 labelled photos" in auto.stdout, auto.stdout
    report = sh(root, BIN / "snakemake", "--cores", "2", *config, "--report", "report.html")
    assert report.returncode == 0 and (root / "report.html").stat().st_size > 10_000, report.stderr[-3000:]
    # "Rerun one asset from a stage": `dam3d rerun` removes its artefacts from there on, then run again.
    rerun = sh(root, BIN / "dam3d", "rerun", "CHAIR-0001", "--from", "mesh")
    assert rerun.returncode == 0 and "snakemake --cores 8" in rerun.stdout, rerun.stderr[-3000:]
    again = sh(root, BIN / "snakemake", "--cores", "2")
    assert again.returncode == 0 and "mesh 1/16" in again.stderr and "cutout 0/16" in again.stderr, again.stderr[-3000:]


@pytest.mark.parametrize("args", [
    ["dam3d.benchmarks.speed", "--assets", "2"],
    ["dam3d.benchmarks.speed", "--search", "200", "--queries", "2", "--threads", "1"],
    ["dam3d.stages.render", "--bench", "--assets", "1"],
    ["dam3d.benchmarks.refresh", "--assets", "4"],
    ["dam3d.benchmarks.scale", "--skus", "400", "--dim", "32", "--queries", "5"],
    ["dam3d.benchmarks.scale", "--skus", "400", "--dim", "32", "--queries", "5", "--dtype", "float32", "--pca", "16"],
    ["dam3d.benchmarks.scale", "--update", "--skus", "50", "--dim", "16"],
    ["dam3d.benchmarks.scale", "--update", "--skus", "50", "--dim", "16", "--ann"],
], ids=lambda a: " ".join(a))
def test_speed_benchmarks_run(tmp_path: Path, args: list[str]) -> None:
    """The README's benchmark commands, at a small size: they run and print their figures."""
    run = sh(REPO, sys.executable, "-m", *args)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert re.search(r"\d+\.\d+", run.stdout), run.stdout


def schema_keys(node: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the config schema's keys; an object of free-form entries (presets) counts as one."""
    keys = []
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        if sub.get("type") == "object" and sub.get("properties"):
            keys += schema_keys(sub, path + ".")
        else:
            keys.append(path)
    return keys


def test_every_config_key_is_documented_in_the_readme_table() -> None:
    """The README's configuration table documents every key the schema accepts (the schema holds the defaults)."""
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Backends")]
    documented = set(re.findall(r"`([\w.{},*]+)`", table))

    def covered(key: str) -> bool:
        for doc in documented:
            if doc == key or (doc.endswith(".*") and key.startswith(doc[:-1])):
                return True
            m = re.fullmatch(r"([\w.]*)\{([\w,]+)\}", doc)
            if m and key in {m.group(1) + part for part in m.group(2).split(",")}:
                return True
        return False

    keys = schema_keys(schema)
    assert len(keys) > 20
    assert [k for k in keys if not covered(k)] == []
