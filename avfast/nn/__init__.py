"""nn.Module wrappers around avfast's ops (one file per op)."""
from avfast._util import export_public

export_public(globals(), __name__, ("mel", "affinity", "contrastive", "attention"))
