"""Embedded synthetic world: procedural sources, general edits and parametric effects."""
