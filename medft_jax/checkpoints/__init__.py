"""Checkpoints: a model's weights, a run's resume state, and the weights a run starts from.

- :mod:`~medft_jax.checkpoints.model`: the model checkpoint format (orbax,
  with metadata and a content hash) that the weight port, the runs' best
  epochs, predict and export share: ``save_model`` / ``load_model``.
- :mod:`~medft_jax.checkpoints.run`: a run's folder of checkpoints,
  ``RunCheckpoints`` (the latest train state to resume from, the best
  epoch's weights).
- :mod:`~medft_jax.checkpoints.pretrained`: which weights ``--weights``
  names (ImageNet, ported on first use, or a checkpoint folder) and how
  they are merged under a new head.
"""
