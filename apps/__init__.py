"""Zippy applications: the `zippy` console script and the camera stream app (import name: zippy_apps)."""
