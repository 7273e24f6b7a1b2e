"""Downstream tasks scored with frozen features (B-B or a trained White Box), no further training.

- :mod:`lore.tasks.retrieval`: revisited Oxford 5k / Paris 6k image retrieval (``lore retrieval``).
- :mod:`lore.tasks.correspondence`: SPair-71k keypoint correspondence, PCK (``lore correspond``).
- :mod:`lore.tasks.vos`: DAVIS-2017 video object segmentation by label propagation (``lore vos``).

Each module reads its dataset in the official on-disk format, runs the protocol top to bottom and
exposes ``add_arguments(parser)`` / ``main(args) -> dict`` for the command line.
"""
