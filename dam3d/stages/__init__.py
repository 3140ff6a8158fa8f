"""The per-asset stages of the pipeline: cutout, mesh, render, embed, contact sheets (and image loading)."""
