"""CollectionLoRA Bench: CLI, configs and presets, EffectBench, the synthetic world, results store."""
