"""Batch sizes a GPU path prepares for: CUDA graphs are captured per size, batches padded up."""

from __future__ import annotations

from collections.abc import Sequence

from common.model_config import ConfigError, ModelConfig, TensorSpec


def capture_sizes(config: ModelConfig) -> tuple[int, ...]:
    """The preferred batch sizes and the largest batch, ascending, when CUDA graphs are asked
    for; the largest is always there, so every batch fits a captured graph."""
    if not config.optimization.cuda_graphs or config.max_batch_size == 0:
        return ()
    batching = config.dynamic_batching
    preferred = batching.preferred_batch_size if batching is not None else ()
    return tuple(sorted({s for s in preferred if s <= config.max_batch_size}
                        | {config.max_batch_size}))


def padded_size(rows: int, sizes: Sequence[int]) -> int | None:
    """The smallest captured size that holds `rows` (sizes ascending); None when none does."""
    return next((size for size in sizes if size >= rows), None)


def check_fixed_shapes(config: ModelConfig, specs: Sequence[TensorSpec]) -> None:
    """A captured graph replays fixed shapes: every tensor's shape must be fully known."""
    for spec in specs:
        if spec.datatype == "BYTES" or any(d < 0 for d in spec.shape):
            raise ConfigError(
                f"{config.source}: key 'optimization.cuda.graphs': CUDA graphs need numeric "
                f"tensors of fixed shape, but '{spec.name}' is {spec.datatype} of shape "
                f"{list(spec.shape)}; give its dimensions or turn graphs off")
