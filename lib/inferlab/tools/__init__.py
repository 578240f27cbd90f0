"""Maintainer tools, kept out of the technique modules.

- :mod:`inferlab.tools.notebooks`   build notebooks from their sources, run them all headless, check hygiene
  (``python -m inferlab.tools.notebooks build|run|check``; ``make build-notebooks``, ``make run``)
- :mod:`inferlab.tools.train_tiny`  train the embedded default models ``tiny`` and ``tiny-draft``
  (``python -m inferlab.tools.train_tiny train``; ``make models``)
- :mod:`inferlab.tools.model_card`  write data/models/README.md from the training report
"""
