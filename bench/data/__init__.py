"""EffectBench data: the dataset format both worlds share, its loader and its identity."""
