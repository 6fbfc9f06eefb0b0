"""HPatches-style homography evaluation (SuperPoint / KP2D protocol).

Modules: ``dataset`` (HPatches sequences layout), ``generate`` (HPatches-like sequences from photos),
``metrics`` (repeatability, localization error, homography accuracy, matching score, MMA) and
``pipeline`` (``run(conf, dataset_dir, output_dir) -> Path``).
"""
