"""Checks every argument name avfast's DALI reader passes against the installed DALI's operator schema.

Run with a Python that has nvidia-dali installed (no GPU, no torch needed): reads the declarations
in avfast/data/video.py without importing avfast.
"""
import ast
import inspect
import pathlib
import sys

import nvidia.dali as dali
from nvidia.dali import backend, fn, pipeline_def

src = pathlib.Path(__file__).resolve().parents[1] / "avfast" / "data" / "video.py"
decl = {}
for node in ast.parse(src.read_text()).body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", "").startswith("DALI_"):
        decl[node.targets[0].id] = ast.literal_eval(node.value)
errors = []
if dali.__version__ != decl["DALI_VERSION"]:
    errors.append(f"installed DALI {dali.__version__}, the reader is written for {decl['DALI_VERSION']}")
schema = backend.GetSchema(decl["DALI_DECODER_SCHEMA"])
known = set(schema.GetArgumentNames()) | {"device"}
errors += [f"{decl['DALI_DECODER_SCHEMA']} has no argument {a!r} (known: {sorted(known)})"
           for a in decl["DALI_DECODER_ARGS"] if a not in known]
if not hasattr(fn.decoders, "video"):
    errors.append("fn.decoders.video is missing")
src_params = set(inspect.signature(fn.external_source).parameters)
if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn.external_source).parameters.values()):
    errors += [f"fn.external_source has no argument {a!r}" for a in decl["DALI_SOURCE_ARGS"] if a not in src_params]
else:
    ext = set(backend.GetSchema("ExternalSource").GetArgumentNames()) | src_params | {"name", "dtype", "ndim"}
    errors += [f"external_source has no argument {a!r}" for a in decl["DALI_SOURCE_ARGS"] if a not in ext]
pipe_params = set(inspect.signature(dali.Pipeline.__init__).parameters)
errors += [f"Pipeline has no argument {a!r}" for a in decl["DALI_PIPELINE_ARGS"] if a not in pipe_params]
for e in errors:
    print("dali-schema-check: FAIL", e)
print(f"dali-schema-check: DALI {dali.__version__}: {len(decl['DALI_DECODER_ARGS'])} decoder, "
      f"{len(decl['DALI_SOURCE_ARGS'])} source, {len(decl['DALI_PIPELINE_ARGS'])} pipeline argument names checked"
      f"{'' if errors else ', all known'}")
sys.exit(1 if errors else 0)
