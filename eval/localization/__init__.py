"""Visual localization with pycolmap: features -> pairs -> matches -> map -> absolute pose -> recall.

See :mod:`zippy_eval.localization.pipeline` and docs/localization.md.
"""
