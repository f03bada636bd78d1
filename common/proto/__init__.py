"""Protobuf and gRPC modules generated from protos/*.proto (``make proto``; do not edit them).

* ``grpc_service_pb2``: the KServe v2 / Triton messages (``ModelInferRequest``, ...).
* ``grpc_service_pb2_grpc``: ``GRPCInferenceServiceStub``, ``GRPCInferenceServiceServicer`` and
  ``add_GRPCInferenceServiceServicer_to_server``.
* ``model_config_pb2``: ``ModelConfig`` and ``DataType``, as the ModelConfig RPC reports them.

The generated modules register their descriptors in ``POOL`` rather than in protobuf's default
pool, so they can share a process with tritonclient's own generated modules, which define the
same ``inference.*`` names (see protos/generate.py). Code that looks descriptors up by name
must use ``POOL``; the message classes themselves behave as usual.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()

__all__ = ["POOL"]
