"""Looking at what a model attends to: ``lore attention`` (map grid), ``lore locality`` (mean
attention distance and CLS entropy per layer) and ``lore report`` (one self-contained HTML page).

Kept free of imports so that ``lore report`` (which needs no torch) starts fast.
"""
