"""How good is a dictionary: reconstruction, downstream loss, feature density, and how
dictionaries relate across sizes (feature splitting) and across models (universality)."""

from monosemantic.evaluation.evaluate import evaluate_sae
from monosemantic.evaluation.metrics import density_histogram, density_summary, fraction_recovered

__all__ = ["evaluate_sae", "density_histogram", "density_summary", "fraction_recovered"]
