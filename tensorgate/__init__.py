"""tensorgate's top floor: the command line and the `serve` supervisor."""
