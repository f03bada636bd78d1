"""What the gateway and the runtime share: protocol codecs, errors, settings, model configs."""

__version__ = "0.1.0"

#: The OIP extensions that the gateway and the runtime implement (Server Metadata lists them).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "schedule_policy",
              "statistics")
