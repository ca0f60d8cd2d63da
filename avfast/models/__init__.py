"""Models of the seed papers. ``encoders``: X3D, acoustic ResNet, projection head; ``dub``: seed 001."""
from avfast._util import export_public

export_public(globals(), __name__, ("encoders", "mit", "vit", "ast", "resnet2d", "dub", "dcl", "late_fusion",
                                    "fusion", "avst", "icl_avs", "event_backbones", "event_fusion", "ogm_ge"))
