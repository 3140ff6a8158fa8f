# dam3d: a product catalogue (one studio photo per SKU) to a visual search index
# with 3D view augmentation. See README.md; configuration in config.yaml.

configfile: "config.yaml"

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/cutout.smk"


# The 3D path (render.views > 0): mesh, 8 renders, contact sheets.
if VIEWS:

    include: "workflow/rules/mesh.smk"
    include: "workflow/rules/render.smk"

include: "workflow/rules/embed.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/evaluate.smk"

if config.get("audit") is not None:

    include: "workflow/rules/audit.smk"


if workflow.is_main_process:
    print(plan_summary(PLANS), file=sys.stderr)

# Planned: what the plan made stays for the whole run, so collections from here on skip it (see common.smk).
gc.freeze()
gc.enable()


rule all:
    input:
        all_outputs(),
    default_target: True


onstart:
    write_chunk_members()


onsuccess:
    compact_journals()
    report = Path(RESULTS) / "failures.tsv"
    if report.exists():
        stages = [line.split("\t")[2] for line in report.read_text().splitlines()[1:]]
        skipped, failed = stages.count("catalogue"), len(stages) - stages.count("catalogue")
        if failed or skipped:
            # A failed cutout or embedding leaves the SKU out; a failed mesh or render keeps its 2D vector.
            skipped_text = f", {skipped} catalogue entries skipped" if skipped else ""
            print(f"dam3d: {failed} asset(s) failed at some stage{skipped_text}: see {report} (dam3d failures)",
                  file=sys.stderr)


onerror:
    compact_journals()  # what the jobs that finished stamped is kept either way
