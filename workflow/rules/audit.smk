# The catalogue's look-alikes (config `audit`, off unless set): per model, SKU pairs whose similarity
# reaches audit.threshold, as `dam3d audit` writes them; the page goes into `snakemake --report`.

from dam3d.search.audit import DEFAULT_K, DEFAULT_THRESHOLD

# The schema gives these keys no default (see config.schema.yaml): the module's apply.
AUDIT = {"threshold": DEFAULT_THRESHOLD, "k": DEFAULT_K, "fusion": "auto", **config["audit"]}


def audit_inputs(wildcards):
    inputs = {"index": index_stamp(wildcards.model)}
    # `auto` follows the evaluation of labelled photos when there is one: wait for it.
    if AUDIT["fusion"] == "auto" and config["search"]["fusion"] == "auto" and config.get("queries"):
        inputs["choice"] = str(layout.fusion_choice(RESULTS, wildcards.model))
    return inputs


rule audit:
    input:
        unpack(audit_inputs),
    output:
        table=str(layout.audit_table(layout.audits(RESULTS), "{model}")),
        page=report(
            str(layout.audit_page(layout.audits(RESULTS), "{model}")),
            caption="../report/audit.rst",
            category="Look-alikes",
            labels={"model": "{model}"},
        ),
    params:
        index=lambda wildcards: str(layout.index(RESULTS, wildcards.model)),
        threshold=AUDIT["threshold"],
        k=AUDIT["k"],
        fusion=None if AUDIT["fusion"] == "auto" else AUDIT["fusion"],
    benchmark:
        f"{RESULTS}/benchmarks/audit/{{model}}.tsv"
    log:
        f"{RESULTS}/logs/audit/{{model}}.log",
    conda:
        "../../envs/embed.yaml"
    script:
        "../../scripts/audit.py"


EXTRA_TARGETS.extend(str(layout.audit_page(layout.audits(RESULTS), model)) for model in EMBED_MODELS)
