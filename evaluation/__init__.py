"""Evaluation of reconstructed heads, for the tests and the benchmarks: never shipped to users.

``metrics`` scores a mesh against a reference (rigid alignment, nearest neighbours, Chamfer distance, normal
consistency, F-score); ``groundtruth`` makes synthetic FLAME heads with known parameters, renders them into the
network's maps, corrupts those maps and measures a fit's error against the truth.

This package sits beside ``core/`` and imports it with absolute imports (``from core.errors import ...``);
``core`` never imports it, and ``build.py`` vendors only ``core/`` into the extension, so none of it ends up in
the zip that users install.
"""
