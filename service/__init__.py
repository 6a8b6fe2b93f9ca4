"""The distctl HTTP service: POST /generate over the generation core, adapters, metrics."""
