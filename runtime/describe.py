"""What the runtime says about its models: metadata, config, statistics and the repository index."""

from __future__ import annotations

from pathlib import Path

from common.datatypes import OIP_TO_CONFIG
from common.names import is_name
from common.proto import grpc_service_pb2 as pb
from common.proto import model_config_pb2 as mc
from runtime.model import ModelStore, ServedModel
from runtime.stats import Duration


def metadata(store: ModelStore, name: str, version: str) -> pb.ModelMetadataResponse:
    model = store.get(name, version)
    response = pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(v) for v in sorted(store.versions(name))],
        platform=model.platform,
    )
    for spec in model.inputs:
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=model.full_shape(spec))
    for spec in model.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=model.full_shape(spec))
    return response


def model_config(model: ServedModel) -> mc.ModelConfig:
    config = model.config
    backend = model.backends[0]
    gpu = backend.device.startswith("cuda")
    result = mc.ModelConfig(
        name=model.name,
        platform=model.platform,
        backend=backend.backend_name,
        max_batch_size=config.max_batch_size,
    )
    for spec in model.inputs:
        result.input.add(name=spec.name, data_type=OIP_TO_CONFIG[spec.datatype], dims=spec.shape)
    for spec in model.outputs:
        result.output.add(name=spec.name, data_type=OIP_TO_CONFIG[spec.datatype], dims=spec.shape)
    result.instance_group.add(
        count=config.instance_count,
        kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
        gpus=[int(backend.device.partition(":")[2] or 0)] if gpu else [],
    )
    for accelerator in config.optimization.gpu_accelerators:
        result.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name=accelerator.name, parameters=dict(accelerator.parameters))
    if config.optimization.cuda_graphs:
        result.optimization.cuda.graphs = True
    batching = config.dynamic_batching
    if batching is not None:
        result.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_size)
        result.dynamic_batching.max_queue_delay_microseconds = (
            batching.max_queue_delay_microseconds)
        policy = result.dynamic_batching.default_queue_policy
        policy.max_queue_size = batching.max_queue_size
        policy.default_timeout_microseconds = batching.default_timeout_microseconds
    return result


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


def statistics(store: ModelStore, name: str, version: str) -> pb.ModelStatisticsResponse:
    """All versions of all models when `name` is empty; else the named model's versions."""
    if not name:
        models = store.all()
    elif version:
        models = [store.get(name, version)]
    else:
        models = [m for _, m in sorted(store.versions(name).items())]
    response = pb.ModelStatisticsResponse()
    for model in models:
        stats = model.stats
        entry = response.model_stats.add(
            name=model.name,
            version=str(model.version),
            last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
        )
        infer = entry.inference_stats
        for field in ("success", "fail", "queue", "compute_input", "compute_infer",
                      "compute_output"):
            _duration(getattr(infer, field), getattr(stats, field))
        for rows, batch in sorted(stats.batches.items()):
            item = entry.batch_stats.add(batch_size=rows)
            _duration(item.compute_input, batch.compute_input)
            _duration(item.compute_infer, batch.compute_infer)
            _duration(item.compute_output, batch.compute_output)
    return response


def index(store: ModelStore, repository: Path | None, ready: bool,
          only_ready: bool = False) -> pb.RepositoryIndexResponse:
    """Every model known, as Triton lists them: served versions READY; models unloaded or
    failed to load UNAVAILABLE with the reason; folders never loaded UNAVAILABLE "not loaded".
    `only_ready` keeps the READY ones (the request's `ready: true`)."""
    rows = [(m.name, str(m.version), "READY" if ready else "LOADING", "") for m in store.all()]
    served = set(store.names())
    if not only_ready:
        rows += [(name, version, "UNAVAILABLE", reason)
                 for name, entries in store.unavailable.items() if name not in served
                 for version, reason in entries]
        known = served | set(store.unavailable)
        rows += [(name, "", "UNAVAILABLE", "not loaded") for name in _folders(repository)
                 if name not in known]
    response = pb.RepositoryIndexResponse()
    for name, version, state, reason in sorted(rows, key=_order):
        if only_ready and state != "READY":
            continue
        response.models.add(name=name, version=version, state=state, reason=reason)
    return response


def _order(row: tuple[str, str, str, str]) -> tuple[str, int]:
    return row[0], int(row[1] or 0)


def _folders(repository: Path | None) -> list[str]:
    """The model folders of the repository (names off the naming rule are no models)."""
    if repository is None or not repository.is_dir():
        return []
    return [p.name for p in repository.iterdir()
            if p.is_dir() and not p.name.startswith(".") and is_name(p.name)]
