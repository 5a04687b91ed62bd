"""Deployment cost, measured (DESIGN 8; the paper's deployment table)."""
