# Evaluation on labelled query photos (config `queries`: a CSV query,sku), stage timings,
# and the pages of Snakemake's HTML report (`snakemake --report report.html`).

from dam3d.evaluation.evaluate import read_queries


# Reads the benchmark files without requiring them: results built before they existed
# are not recomputed just to time them; it runs after the indexes, so after every stage.
rule timings:
    input:
        [index_stamp(model) for model in EMBED_MODELS],
    output:
        tsv=f"{RESULTS}/timings.tsv",
        html=report(f"{RESULTS}/timings.html", caption="../report/timings.rst", category="Timings"),
    params:
        # The folders of the stages' `benchmark:` files (one file per chunk job); the script reads the newest
        # of each (dam3d.evaluation.report.TIMINGS_MAX_JOBS).
        benchmarks=[
            f"{RESULTS}/benchmarks/{stage}"
            for stage in ["cutout", *(["mesh", "render"] if VIEWS else []), *(f"embed-{m}" for m in EMBED_MODELS), "index"]
        ],
    log:
        f"{RESULTS}/logs/timings.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/timings.py"


EXTRA_TARGETS.append(f"{RESULTS}/timings.html")

if config.get("queries"):
    # Parsed when the workflow starts: a missing query image stops the run with its name.
    QUERY_IMAGES = [str(q.path) for q in read_queries(config["queries"])]

    rule evaluate:
        input:
            index=lambda wildcards: index_stamp(wildcards.model),
            queries=config["queries"],
            images=QUERY_IMAGES,
        output:
            json=f"{RESULTS}/evaluate/{{model}}.json",
            choice=str(layout.fusion_choice(RESULTS, "{model}")),
            table=report(
                f"{RESULTS}/evaluate/{{model}}.html",
                caption="../report/evaluate.rst",
                category="Evaluation",
                labels={"model": "{model}", "figure": "top-k table"},
            ),
            plot=report(
                f"{RESULTS}/evaluate/{{model}}.png",
                caption="../report/evaluate.rst",
                category="Evaluation",
                labels={"model": "{model}", "figure": "top-k bar plot"},
            ),
        params:
            index=lambda wildcards: str(layout.index(RESULTS, wildcards.model)),
            cache=lambda wildcards: str(layout.query_cache(RESULTS, wildcards.model)),
        benchmark:
            f"{RESULTS}/benchmarks/evaluate/{{model}}.tsv"
        log:
            f"{RESULTS}/logs/evaluate/{{model}}.log",
        conda:
            "../../envs/embed.yaml"
        script:
            "../../scripts/evaluate.py"

    EXTRA_TARGETS.extend(f"{RESULTS}/evaluate/{model}.png" for model in EMBED_MODELS)
