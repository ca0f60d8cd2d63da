"""avfast's fused ops. Importing an op module registers its backends with ``avfast._backend``."""
from avfast._util import export_public

export_public(globals(), __name__, ("mel", "affinity", "contrastive", "attention"))
