"""What the gateway and the runtime share: protocol codecs, errors, settings, model configs."""

__version__ = "0.1.0"
