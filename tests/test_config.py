"""ExtractorConfig: one record of the extractor's options, from the command line to zippy.load and the cache names;
zippy.load's trained-only default and zippy.match's dispatch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

import zippy
from zippy.config import ExtractorConfig, add_extractor_arguments


def test_config_normalizes_and_validates() -> None:
    c = ExtractorConfig("zippypoint_small", scales=[1.41, 1], shifts=[[0, 0], [4, 4]], nms_radius=2)
    assert c.scales == (1.41, 1.0) and c.shifts == ((0, 0), (4, 4)) and c.nms_radius == 2.0
    assert hash(c) == hash(
        ExtractorConfig("zippypoint_small", scales=(1.41, 1.0), shifts=((0, 0), (4, 4)), nms_radius=2)
    )
    with pytest.raises(ValueError, match="unknown engine 'gpu'"):
        ExtractorConfig(engine="gpu")
    with pytest.raises(ValueError, match="scales must be distinct"):
        ExtractorConfig(scales=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"shifts must be distinct .* in \[0, 8\)"):
        ExtractorConfig(shifts=((8, 0),))
    with pytest.raises(ValueError, match="nms_radius must be a number >= 0"):
        ExtractorConfig(nms_radius=-1)
    with pytest.raises(ValueError, match=r"unknown extractor option\(s\) \['scale'\]; choose from \['name'"):
        ExtractorConfig.build("zippypoint", scale=(2.0,))
    with pytest.raises(ValueError, match=r"unknown extractor option\(s\) \['max_kp'\]"):
        zippy.load("zippypoint", max_kp=10)


def test_tag_names_the_options_that_change_the_features() -> None:
    assert ExtractorConfig().tag() == "nms1"
    assert ExtractorConfig(scales=(1.41, 1.0), shifts=((0, 0), (4, 4)), nms_radius=4).tag() == "x1.41+1-g0-0+4-4-nms4"
    base = ExtractorConfig("zippypoint", scales=(1.41, 1.0))
    assert base.replace(name="kp2d").name == "kp2d" and base.replace(name="kp2d").scales == (1.41, 1.0)
    assert base.replace() is base


def test_command_line_options_build_the_config() -> None:
    p = argparse.ArgumentParser()
    add_extractor_arguments(p)
    args = p.parse_args(
        ["--model", "zippypoint_small", "--scales", "1.41,1", "--shifts", "0:0,4:4", "--nms-radius", "0"]
    )
    c = ExtractorConfig.from_args(args)
    assert c == ExtractorConfig("zippypoint_small", scales=(1.41, 1.0), shifts=((0, 0), (4, 4)), nms_radius=0.0)
    q = argparse.ArgumentParser()
    add_extractor_arguments(q, model=False)
    args = q.parse_args(["--engine", "fp32"])
    assert not hasattr(args, "model") and ExtractorConfig.from_args(args, name="kp2d") == ExtractorConfig(
        "kp2d", engine="fp32"
    )


def test_load_takes_a_config_and_reports_it(tmp_path) -> None:
    config = ExtractorConfig("zippypoint_small", engine="fp32", scales=(1.41, 1.0))
    ex = zippy.load(config)
    assert ex.scales == (1.41, 1.0) and ex.engine == "fp32" and ex.trained
    assert ex.config.replace(weights=None) == config  # the weights file it resolved, otherwise the same options
    same = zippy.load("zippypoint_small", engine="fp32", scales=(1.41, 1.0))
    image = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    a, b = ex.extract(image, 50), same.extract(image, 50)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.descriptors, b.descriptors)


def test_untrained_backbones_need_allow_untrained() -> None:
    untrained = sorted(set(zippy.available_backbones()) - set(zippy.available_models()))
    assert untrained, "every backbone ships weights: pick another example"
    assert set(zippy.available_models()) >= {"zippypoint", "zippypoint_small", "kp2d"}
    name = untrained[0]
    with pytest.raises(ValueError, match="allow_untrained=True"):
        zippy.load(name)
    ex = zippy.load(name, engine="fp32", allow_untrained=True)
    assert not ex.trained and ex.name == name and ex.config.allow_untrained
    for model in zippy.available_models():  # every listed model loads trained weights
        assert zippy.load(model, engine="fp32").trained, model


def test_match_dispatches_on_the_descriptor_dtype() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 256, (20, 32), dtype=np.uint8)
    pairs, dist = zippy.match(bits, bits[::-1].copy())
    assert pairs.dtype == np.int64 and pairs.shape == (20, 2)
    np.testing.assert_array_equal(pairs[:, 1], 19 - pairs[:, 0])
    assert (np.asarray(dist) == 0).all()
    floats = rng.standard_normal((10, 8)).astype(np.float32)
    pairs, dist = zippy.match(floats, floats + 1e-3)
    np.testing.assert_array_equal(pairs, np.stack([np.arange(10), np.arange(10)], 1))
    empty, _ = zippy.match(bits[:0], bits)
    assert empty.shape == (0, 2) and empty.dtype == np.int64
    with pytest.raises(ValueError, match="one kind and width"):
        zippy.match(bits, floats)


def test_import_zippy_reaches_the_matcher_without_torch() -> None:
    code = "import sys, zippy; zippy.matching.match_hamming; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
