"""Pixel3DMM core: photo to fitted FLAME head, in torch, without bpy.

Stages, one subpackage or module each: ``assets`` (find user files), ``flame`` (model, loaders, synthetic
head), ``network`` (UV and normal predictors), ``preprocess`` (photo, face, crop, masks), ``render``
(pure-torch rasterizer and camera), ``fit`` (FLAME fitting), ``texture`` (bake the photo into UV space),
``pipeline`` (the stages end to end) and ``cli`` (``python -m core``). Evaluation (geometry scores,
ground-truth helpers) lives outside the core, in the top-level ``evaluation`` package, and is not shipped.
Importing this package is cheap: no torch work, file access or environment lookups happen at import.
"""

__version__ = "0.1.0"
