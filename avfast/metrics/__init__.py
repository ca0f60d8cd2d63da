"""Evaluation metrics: retrieval (R@k, ranks), segmentation, localisation (one file per family)."""
from avfast._util import export_public

export_public(globals(), __name__, ("retrieval", "segmentation", "localization", "multilabel", "qa"))
