"""dam3d: a product catalogue (one studio photo per SKU) to a visual search index with 3D view augmentation."""

from pathlib import Path

__version__ = "0.1.0"
# The checkout the package runs from (an editable install, as setup.sh makes): blender/,
# models/, sample/ and config.yaml live here.
CHECKOUT = Path(__file__).resolve().parent.parent
