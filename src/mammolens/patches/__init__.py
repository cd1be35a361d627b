"""Patch classifier -> whole film (Shen et al. 2019): a classifier trained on patches around findings
and on breast tissue away from them, slid over the preprocessed film; the film's class scores come
from the patch score map, which is also its heatmap.

- ``geometry``: the sliding-window grid, tissue fractions, patch/circle overlap
- ``sampling``: which patches a training film gives (positives on findings, negatives away from them)
- ``model``: ``PatchFilmModel``, the registered ``patch-classifier`` (a normal MammoModel in a Bundle)
- ``features``: frozen-backbone patch features, computed once per film and cached on disk

Its trainer and the contact sheet of a cv run's score maps live in ``mammolens.engine``
(``patch_trainer``, ``patch_sheet``): they read experiment configs and run folders.
"""
