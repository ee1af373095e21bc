"""hierzoo: hierarchical consistency of vision models across taxonomies."""

from hierzoo.taxonomy import Taxonomy, TaxonomyError, bundled_taxonomies, load_taxonomy

__version__ = "0.1.0"

__all__ = ["Taxonomy", "TaxonomyError", "bundled_taxonomies", "load_taxonomy", "__version__"]
