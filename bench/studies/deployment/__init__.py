"""Deployment cost, measured (DESIGN 8; the paper's deployment table).

For N effects served, one :class:`bench.cells.DeploymentCell` measures:

* **storage**: bytes on disk of the adapter files needed. Baseline (the conventional pipeline):
  N per-effect LoRAs + the Lightning LoRA. Ours: ceil(N / capacity) CollectionLoRAs. The files
  are written through ``methods.lora.save_lora`` at the run's configured ranks and target
  modules and ``stat``-ed; their weights are random (a file's size depends only on its shapes,
  so trained files have the same size) -- the rows say so in ``note``.
* **routing**: latency per request and accuracy of each router (``routers.py``) on
  paraphrased instructions (:func:`paraphrases`). Baseline routes among N effects. Ours needs no
  router while one CollectionLoRA holds every effect (latency 0 because no call is made,
  accuracy 100%); beyond the capacity the same router picks an effect and the request is right
  when that effect lives in the right CollectionLoRA.
* **adapter switching**: per-request load + unload (diffusers loaders), diffusers hotswap into a
  prepared slot (``enable_lora_hotswap`` before the first load; the widest adapter first) and,
  for ours, fusing once (``fuse_lora`` + dropping the LoRA layers) and swapping a fused
  collection (unfuse + load + fuse) when several are deployed.
* **end to end per image** (route + switch + generate, batch 1) and **peak memory**:
  ``torch.cuda.max_memory_allocated`` on GPU, the process's peak resident set size sampled
  during the request on CPU.

``python -m bench.studies deployment`` runs the cells on their own (same results layout as bench.run);
``python -m bench.run --grid deployment`` runs the paper's grid of them and its report.

Where each part lives: ``cell.py`` (one cell's measurement, ``measure_deployment``, which
``bench.cells.DeploymentCell.run`` calls), ``routing.py`` (paraphrased requests, routing latency
and accuracy), ``routers.py`` (the routers, registry ``ROUTERS``), ``storage.py`` (adapter files
and their bytes), ``serving.py`` (adapter switching, end-to-end latency, peak memory) and
``measure.py`` (the rows every part adds to, wall time, peak memory).
"""
