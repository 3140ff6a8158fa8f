"""dam3d: a product catalogue (one studio photo per SKU) to a visual search index with 3D view augmentation."""

__version__ = "0.1.0"
