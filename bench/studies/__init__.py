"""Studies beyond the harness core: deployment cost (routing, storage, switching), zero-shot
composition, incremental extension, hyper-parameter tuning."""
