"""avfast's data pipeline: readers, manifests, dub-augmented quadruples, same-source batches, demo data.

Stable names: ``PyAVVideoReader().read(path, start, duration, num_frames, fps) -> uint8 (T, C, H, W)``,
``load_audio(path, sample_rate, start, duration, track, channels) -> float (C, T)``, ``DataError``,
``SameSourceBatchSampler``, ``read_manifest`` / ``write_manifest``, ``make_demo_data``,
``QuadrupleDataset`` and ``build_loader``.
"""
from avfast._util import export_public

export_public(globals(), __name__, ("errors", "video", "audio", "manifest", "synthetic", "sampler", "shots",
                                    "transforms", "quadruples", "dataset", "dubbing", "separation", "dali_batch",
                                    "avsbench", "vggsound", "pacs", "avqa"))
