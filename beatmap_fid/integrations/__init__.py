"""Adapters to other libraries' interfaces; each module imports its library when imported.

- :mod:`beatmap_fid.integrations.torchmetrics`: :class:`BeatmapFID`, a torchmetrics ``Metric``
  for training loops (Lightning), synchronised across processes.
"""
