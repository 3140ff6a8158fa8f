"""Snakemake entry point: the look-alike SKU pairs of one index (see dam3d.search.audit), CSV and page."""

import sys
from pathlib import Path

from dam3d.search.audit import audit
from dam3d.search.audit_page import write_audit
from dam3d.search.index import Index

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
with open(smk.log[0], "w") as log:
    index = Index.load(smk.params.index)
    result = audit(index, smk.params.fusion, threshold=smk.params.threshold, k=smk.params.k,
                   progress=lambda message: print(f"dam3d: {message}", file=log, flush=True))
    table, page = write_audit(result, index, Path(smk.output.table).parent)
    assert (str(table), str(page)) == (smk.output.table, smk.output.page), (table, page)
    line = (f"dam3d: audit {index.directory.name}: {len(result.pairs)} look-alike pair(s) among {result.skus} SKUs "
            f"(fusion {result.fusion}, similarity >= {result.threshold:g}, {result.method}): {page}")
    print(line, file=log)
    print(line, file=sys.stderr)
