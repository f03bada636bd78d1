"""Edge export: a served model version → a verified, checksummed bundle that runs on onnxruntime.

Stages: source → export (ONNX) → convert → verify → bundle; `runner` runs bundles on bare Python.
"""

from tensorgate.edge.commands import COMMANDS, add_commands, run

__all__ = ["COMMANDS", "add_commands", "run"]
