"""Audio analysis on tensors: ``onset`` (spectral-flux onset envelope and peak picking, as librosa)."""
from avfast._util import export_public

export_public(globals(), __name__, ("onset",))
