"""What the gateway and the runtime share: protocol codecs, errors, settings, model configs."""

__version__ = "0.1.0"

#: The OIP extensions Server Metadata lists: what a runtime worker implements itself, and the
#: gateway's, which adds the trace and logging settings.
RUNTIME_EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration",
                      "model_repository", "schedule_policy", "statistics",
                      "system_shared_memory")
EXTENSIONS = (*RUNTIME_EXTENSIONS, "trace", "logging")
