"""Artifacts shipped with the package, as ``<kind>/<key>/`` cache entries (``bench/cache.py``
copies one in instead of building it): the pretrained base of each preset in ``PRESETS``, so a
fresh machine starts with the teachers. ``python -m bench.assets`` rebuilds them."""

PRESETS = ("synth",)  # the default preset; `smoke` pretrains in seconds and is not shipped
KINDS = ("base",)     # teachers are per effect (195 of them): built where they are used
