"""zippy.vocabulary: k-majority updates, BoW vectors and scores on hand-built trees, database, files, errors."""

from __future__ import annotations

import numpy as np
import pytest

from zippy.vocabulary import (
    BowVector,
    Database,
    Vocabulary,
    centre_bits,
    default_vocabulary_path,
    kmajority,
    match_direct,
)


def desc(*bit_lists: list[int]) -> np.ndarray:
    """uint8 [N, 32] descriptors with the given bits set (bit 0 = MSB of byte 0)."""
    bits = np.zeros((len(bit_lists), 256), np.uint8)
    for i, b in enumerate(bit_lists):
        bits[i, b] = 1
    return np.packbits(bits, axis=1)


def random_desc(rng: np.random.Generator, n: int, ones: int = 64) -> np.ndarray:
    bits = np.zeros((n, 256), bool)
    np.put_along_axis(bits, np.argsort(rng.random((n, 256)), axis=1)[:, :ones], True, axis=1)
    return np.packbits(bits, axis=1)


def noisy(rng: np.random.Generator, base: np.ndarray, flips: int) -> np.ndarray:
    """Copies of 64-ones descriptors with ``flips`` ones moved to zero positions (weight kept)."""
    bits = np.unpackbits(base, axis=1).astype(bool)
    for row in bits:
        on, off = np.flatnonzero(row), np.flatnonzero(~row)
        row[rng.choice(on, flips, replace=False)] = False
        row[rng.choice(off, flips, replace=False)] = True
    return np.packbits(bits, axis=1)


# ----------------------------------------------------------------------------------------- k-majority
def test_centre_bits_majority_by_hand():
    # cluster 0: 3 members, bit 0 in all, bits 1, 2, 3 in one each -> only bit 0 (2 * 1 < 3)
    # cluster 1: 2 members, bit 0 in both, bits 1, 2 in one each -> ties set (2 * 1 >= 2), DBoW2's rule
    counts = np.zeros((2, 256), np.int32)
    counts[0, [0, 1, 2, 3]] = [3, 1, 1, 1]
    counts[1, [0, 1, 2]] = [2, 1, 1]
    c = centre_bits(counts, np.array([3, 2]))
    assert c.shape == (2, 32) and c.dtype == np.uint8
    assert c[0, 0] == 0b10000000 and not c[0, 1:].any()
    assert c[1, 0] == 0b11100000 and not c[1, 1:].any()


def test_centre_bits_top_ones_by_hand():
    counts = np.zeros((1, 256), np.int32)
    counts[0, [0, 1, 2, 200]] = [2, 1, 1, 5]
    c = centre_bits(counts, np.array([5]), ones=2)  # the two most frequent: 200 (5) and 0 (2)
    np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(c[0])), [0, 200])
    c = centre_bits(counts, np.array([5]), ones=3)  # third place tied between bits 1 and 2: the lower wins
    np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(c[0])), [0, 1, 200])


def test_kmajority_two_groups_by_hand():
    # group A around bits 0..7, group B around bits 100..107; majority of A = bits 0..5, of B = 100..105
    a = desc([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 7], [0, 1, 2, 3, 4, 5, 8])
    b = desc([100, 101, 102, 103, 104, 105, 106], [100, 101, 102, 103, 104, 105], [100, 101, 102, 103, 104, 105, 9])
    d = np.concatenate([a, b])
    for seed in range(5):
        centres, labels = kmajority(d, 2, np.random.default_rng(seed))
        assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4] == labels[5]
        ca, cb = centres[labels[0]], centres[labels[3]]
        np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(ca)), [0, 1, 2, 3, 4, 5])
        np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(cb)), [100, 101, 102, 103, 104, 105])


def test_kmajority_fewer_distinct_than_k():
    d = desc([1, 2], [1, 2], [3, 4])
    centres, labels = kmajority(d, 5, np.random.default_rng(0))
    assert centres.shape[0] == 2
    assert labels[0] == labels[1] != labels[2]


# ----------------------------------------------------------------------------------------- hand-built tree
def tiny_vocabulary() -> Vocabulary:
    """root -> node 1 (bits 0..3) -> leaves 3 (bits 0..5), 4 (bits 0..3 + 10, 11); root -> leaf 2 (bits 100..103).

    Words are the leaves in node order: word 0 = node 2, word 1 = node 3, word 2 = node 4.
    """
    centres = np.concatenate(
        [
            np.zeros((1, 32), np.uint8),
            desc([0, 1, 2, 3], [100, 101, 102, 103], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 10, 11]),
        ]
    )
    return Vocabulary(centres, np.array([-1, 0, 0, 1, 1]), np.array([1.0, 2.0, 0.5], np.float32), {"model": "toy"})


def test_tree_structure():
    v = tiny_vocabulary()
    assert v.num_words == 3 and v.num_nodes == 5
    np.testing.assert_array_equal(v.depth_of(np.arange(5)), [0, 1, 1, 2, 2])


def test_quantize_by_hand():
    v = tiny_vocabulary()
    d = desc(
        [0, 1, 2, 3, 4, 5],  # node 1 then leaf 3 -> word 1
        [0, 1, 2, 3, 10, 11],  # node 1 then leaf 4 -> word 2
        [100, 101, 102],  # node 2 (a leaf at depth 1) -> word 0
        [0, 1, 100, 101],  # equidistant to nodes 1 and 2 (4 each): the first child (node 1), then leaf 3 (4 < 6)
    )
    words, nodes = v.quantize(d, direct_level=1)
    np.testing.assert_array_equal(words, [1, 2, 0, 1])
    np.testing.assert_array_equal(nodes, [1, 1, 2, 1])
    _, nodes2 = v.quantize(d, direct_level=2)
    np.testing.assert_array_equal(nodes2, [3, 4, 2, 3])  # leaf 2 is shallower: its own node
    _, root = v.quantize(d)
    np.testing.assert_array_equal(root, [0, 0, 0, 0])


def test_bow_vector_and_score_by_hand():
    v = tiny_vocabulary()
    w1, w2, w0 = [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 10, 11], [100, 101, 102, 103]
    # words [1, 1, 0, 2]: raw tf-idf 2 * 2.0 = 4 (word 1), 1 * 1.0 = 1 (word 0), 1 * 0.5 = 0.5 (word 2); sum 5.5
    a = v.transform(desc(w1, w1, w0, w2))
    np.testing.assert_array_equal(a.words, [0, 1, 2])
    np.testing.assert_allclose(a.values, [1 / 5.5, 4 / 5.5, 0.5 / 5.5], rtol=1e-6)
    # words [0, 2]: 1.0 and 0.5 -> [2/3, 1/3]
    b = v.transform(desc(w0, w2))
    np.testing.assert_array_equal(b.words, [0, 2])
    np.testing.assert_allclose(b.values, [2 / 3, 1 / 3], rtol=1e-6)
    # s = 1 - 0.5 * (|1/5.5 - 2/3| + |4/5.5 - 0| + |0.5/5.5 - 1/3|)
    expected = 1 - 0.5 * (abs(1 / 5.5 - 2 / 3) + 4 / 5.5 + abs(0.5 / 5.5 - 1 / 3))
    assert a.score(b) == pytest.approx(expected, abs=1e-6)
    assert b.score(a) == pytest.approx(expected, abs=1e-6)
    assert a.score(a) == pytest.approx(1.0, abs=1e-6)
    dense = 1 - 0.5 * np.abs(a.dense(3) - b.dense(3)).sum()
    assert dense == pytest.approx(expected, abs=1e-6)


def test_empty_and_zero_weight():
    v = tiny_vocabulary()
    e = v.transform(np.zeros((0, 32), np.uint8))
    assert len(e) == 0 and e.words.dtype == np.int32
    assert e.score(v.transform(desc([0, 1, 2, 3]))) == 0.0
    z = Vocabulary(v.centres, v.parents, np.array([0.0, 0.0, 0.0], np.float32), {})
    assert len(z.transform(desc([0, 1, 2, 3]))) == 0  # every word weight 0: nothing to normalize


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 32), np.float32),
        np.zeros((3, 31), np.uint8),
        np.zeros((32,), np.uint8),
        [[0] * 32],
    ],
)
def test_bad_descriptors(bad):
    with pytest.raises(ValueError, match=r"uint8 \[N,32\]"):
        tiny_vocabulary().transform(bad)


def test_bad_trees():
    c = tiny_vocabulary().centres
    with pytest.raises(ValueError, match="parents"):
        Vocabulary(c, np.array([-1, 0, 3, 1, 1]), np.ones(3, np.float32), {})
    with pytest.raises(ValueError, match="breadth-first"):
        Vocabulary(c, np.array([-1, 0, 1, 0, 1]), np.ones(3, np.float32), {})
    with pytest.raises(ValueError, match="weights"):
        Vocabulary(c, np.array([-1, 0, 0, 1, 1]), np.ones(4, np.float32), {})
    with pytest.raises(ValueError, match="centres"):
        Vocabulary(c.astype(np.int16), np.array([-1, 0, 0, 1, 1]), np.ones(3, np.float32), {})


# ----------------------------------------------------------------------------------------- training
def synthetic_images(seed: int = 0, n_places: int = 6, per_place: int = 3, n_feat: int = 80):
    """Images of a few 'places' (each a set of base descriptors), seen several times with bit noise."""
    rng = np.random.default_rng(seed)
    places = [random_desc(rng, n_feat) for _ in range(n_places)]
    images, labels = [], []
    for p, base in enumerate(places):
        for _ in range(per_place):
            keep = rng.choice(n_feat, n_feat * 3 // 4, replace=False)
            images.append(noisy(rng, base[keep], 6))
            labels.append(p)
    return images, np.array(labels)


def test_train_retrieves_same_place_and_is_deterministic():
    images, labels = synthetic_images()
    v = Vocabulary.train(images, k=4, levels=3, seed=1)
    assert v.meta["centre_rule"] == "top-64" and v.meta["training_images"] == len(images)
    assert 2 <= v.num_words <= 4**3
    assert np.all(v.weights >= 0)
    db = Database(v)
    for im in images:
        db.add(im)
    for i, im in enumerate(images):
        r = db.query(im, 3)
        assert r.ids[0] == i and r.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert labels[r.ids[1]] == labels[i]  # the best other image shows the same place
    v2 = Vocabulary.train(images, k=4, levels=3, seed=1)
    np.testing.assert_array_equal(v.centres, v2.centres)
    assert v.fingerprint == v2.fingerprint


def test_train_idf_by_hand():
    # two distinct descriptors, k = 2, one level: two words; image 0 has both, image 1 only the first
    x, y = desc([0, 1, 2, 3]), desc([200, 201, 202, 203])
    v = Vocabulary.train([np.concatenate([x, y]), x], k=2, levels=1, centre_ones=None)
    assert v.num_words == 2
    wx, wy = v.quantize(x)[0][0], v.quantize(y)[0][0]
    assert v.weights[wx] == pytest.approx(0.0)  # in both images: log(2 / 2)
    assert v.weights[wy] == pytest.approx(np.log(2.0))  # in one: log(2 / 1)


def test_train_errors():
    with pytest.raises(ValueError, match="at least one image"):
        Vocabulary.train([])
    with pytest.raises(ValueError, match="at least one descriptor"):
        Vocabulary.train([np.zeros((0, 32), np.uint8)])
    with pytest.raises(ValueError, match=r"descriptors\[1\]"):
        Vocabulary.train([desc([1]), np.zeros((2, 32), np.float32)])
    with pytest.raises(ValueError, match="k must be"):
        Vocabulary.train([desc([1], [2])], k=1)
    with pytest.raises(ValueError, match="levels must be"):
        Vocabulary.train([desc([1], [2])], levels=0)
    with pytest.raises(ValueError, match="2 distinct"):
        Vocabulary.train([desc([1], [1])])


# ----------------------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    images, _ = synthetic_images(seed=3)
    v = Vocabulary.train(images, k=4, levels=3, meta={"model": "toy", "model_sha256": "ab" * 32})
    path = v.save(tmp_path / "voc.npz")
    w = Vocabulary.load(path)
    np.testing.assert_array_equal(v.centres, w.centres)
    np.testing.assert_array_equal(v.parents, w.parents)
    np.testing.assert_array_equal(v.weights, w.weights)
    assert w.meta["model"] == "toy" and w.meta["k"] == 4 and w.fingerprint == v.fingerprint
    q = images[0]
    assert len(v.transform(q)) > 0
    assert v.transform(q).score(w.transform(q)) == pytest.approx(1.0, abs=1e-6)
    with np.load(path, allow_pickle=False) as z:  # no pickled object inside
        assert all(z[k].dtype != object for k in z.files)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Vocabulary.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a readable vocabulary"):
        Vocabulary.load(bad)
    path = tiny_vocabulary().save(tmp_path / "t.npz")
    raw = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="vocabulary"):
        Vocabulary.load(cut)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["weights"] = arrays["weights"] * 2  # arrays changed behind the recorded fingerprint
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        Vocabulary.load(tampered)
    arrays["version"] = np.array(99)
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match="version 99"):
        Vocabulary.load(tampered)
    with pytest.raises(ValueError, match=r"\.npz"):
        tiny_vocabulary().save(tmp_path / "voc.bin")


def test_check_model_warns():
    v = tiny_vocabulary()
    assert v.check_model("toy")
    with pytest.warns(UserWarning, match="trained for 'toy'"):
        assert not v.check_model("orb")


def test_shipped_vocabulary_loads():
    try:
        path = default_vocabulary_path()
    except FileNotFoundError:
        pytest.skip("no shipped vocabulary in the weights folder")
    v = Vocabulary.load()
    assert path.stat().st_size < 8 << 20
    assert v.meta["model"] == "zippypoint" and len(v.meta["model_sha256"]) == 64
    bow = v.transform(random_desc(np.random.default_rng(0), 300))
    assert len(bow) > 0 and bow.values.sum() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------------------- database
def test_database_matches_pairwise_scores_across_merges():
    images, _ = synthetic_images(seed=5, n_places=30, per_place=5, n_feat=40)
    v = Vocabulary.train(images, k=4, levels=3)
    bows = [v.transform(im) for im in images]
    db = Database(v)
    for i, b in enumerate(bows):
        assert db.add(b) == i
    assert 0 < db._merged < len(db)  # both the inverted file and the pending buffer are in use
    for qi in (0, 17, 149):
        want = np.array([bows[qi].score(b) for b in bows], np.float32)
        np.testing.assert_allclose(db.scores(bows[qi]), want, atol=1e-6)
        r = db.query(bows[qi], 5)
        order = np.lexsort((np.arange(len(want)), -want))[:5]
        np.testing.assert_array_equal(r.ids, order)
    r = db.query(bows[100], 4, max_id=9)
    assert np.all(r.ids <= 9) and len(r) == 4


def test_database_edge_cases(tmp_path):
    v = tiny_vocabulary()
    db = Database(v)
    assert len(db.query(desc([0, 1, 2, 3]), 3)) == 0  # empty database
    db.add(desc([0, 1, 2, 3, 4, 5]))
    db.add(desc([100, 101, 102, 103]))
    assert len(db.query(np.zeros((0, 32), np.uint8), 3)) == 0
    r = db.query(desc([100, 101, 102, 103]), 5)  # entry 0 shares no word: left out
    np.testing.assert_array_equal(r.ids, [1])
    with pytest.raises(ValueError, match="n must be"):
        db.query(desc([1]), 0)
    with pytest.raises(ValueError, match="word ids"):
        db.add(BowVector(np.array([7], np.int32), np.array([1.0], np.float32)))
    path = db.save(tmp_path / "db.npz")
    db2 = Database.load(path, v)
    assert len(db2) == 2
    np.testing.assert_allclose(db2.scores(desc([0, 1, 2, 3, 4, 5])), db.scores(desc([0, 1, 2, 3, 4, 5])))
    other = Vocabulary(v.centres, v.parents, np.array([1.0, 1.0, 1.0], np.float32), {})
    with pytest.raises(ValueError, match="built with vocabulary"):
        Database.load(path, other)


def test_match_direct_restricts_to_nodes():
    v = tiny_vocabulary()
    d0 = desc([0, 1, 2, 3, 4, 5], [100, 101, 102, 103])
    d1 = desc([100, 101, 102, 104], [0, 1, 2, 3, 4, 6])
    _, n0 = v.quantize(d0, 1)
    _, n1 = v.quantize(d1, 1)
    pairs, dist = match_direct(d0, n0, d1, n1)
    np.testing.assert_array_equal(pairs, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(dist, [2, 2])
    # only features of equal nodes are compared: with these nodes the close pairs are never candidates
    pairs, dist = match_direct(d0, np.array([1, 2]), d1, np.array([1, 2]))
    np.testing.assert_array_equal(pairs, [[0, 0], [1, 1]])
    assert np.all(dist >= 8)
    pairs, _ = match_direct(d0, np.array([1, 2]), d1, np.array([1, 2]), max_distance=4)
    assert pairs.shape == (0, 2)


# ----------------------------------------------------------------------------------------- command
def test_vocab_train_command(tmp_path, capsys):
    import cv2

    from zippy_apps.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        img = cv2.GaussianBlur((rng.random((120, 160, 3)) * 255).astype(np.uint8), (3, 3), 0)
        cv2.imwrite(str(folder / f"p{i}.png"), img)
    cv2.imwrite(str(folder / "dev_0.png"), img)
    out = tmp_path / "voc.npz"
    args = ["vocab", "train", "--images", str(folder), "--out", str(out), "--k", "3", "--levels", "2"]
    assert main([*args, "--model", "orb", "--exclude", "dev_*", "--cache", str(tmp_path / "cache")]) == 0
    v = Vocabulary.load(out)
    assert v.meta["model"] == "orb" and v.meta["training_images"] == 4 and v.meta["centre_rule"] == "majority"
    assert "4 images" in capsys.readouterr().out
    assert main([*args[:-6], "--out", str(tmp_path / "voc.bin"), "--model", "orb"]) == 2
    assert "must end in .npz" in capsys.readouterr().err
