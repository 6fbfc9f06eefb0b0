"""Numba kernels behind :mod:`zippy.vocabulary`: Hamming assignment, majority-vote bit counts, tree descent
and inverted-file scoring.

Descriptors enter as uint64 words [N, W] (a view of the packed uint8 [N, 8W] rows: the byte order inside a
word changes no popcount of an XOR). Ties in every minimum go to the lowest index.
"""

from __future__ import annotations

import numba
import numpy as np

from zippy._matching_kernels import _popcount64


@numba.njit(cache=True, nogil=True, inline="always")
def _dist(a, i, b, j):
    d = 0
    for w in range(a.shape[1]):
        d += _popcount64(a[i, w] ^ b[j, w])
    return d


@numba.njit(cache=True, nogil=True)
def assign(words, centres):
    """Nearest centre (first on ties) and its distance for every row: int32 [N], int32 [N]."""
    n = words.shape[0]
    labels = np.empty(n, np.int32)
    dists = np.empty(n, np.int32)
    for i in range(n):
        best = 1 << 30
        arg = 0
        for c in range(centres.shape[0]):
            d = _dist(words, i, centres, c)
            if d < best:
                best = d
                arg = c
        labels[i] = arg
        dists[i] = best
    return labels, dists


@numba.njit(cache=True, nogil=True)
def distances_to(words, centre_words, c, out):
    """out[i] = min(out[i], Hamming distance of row i to centre row c)."""
    for i in range(words.shape[0]):
        d = _dist(words, i, centre_words, c)
        if d < out[i]:
            out[i] = d


@numba.njit(cache=True, nogil=True)
def byte_histograms(packed, labels, k):
    """Histogram of the byte values at each byte position per cluster: int32 [k, B, 256], and cluster sizes [k]."""
    n, nbytes = packed.shape
    hist = np.zeros((k, nbytes, 256), np.int32)
    sizes = np.zeros(k, np.int32)
    for i in range(n):
        c = labels[i]
        sizes[c] += 1
        for b in range(nbytes):
            hist[c, b, packed[i, b]] += 1
    return hist, sizes


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int64)  # [256, 8] MSB first


def bit_counts(packed, labels, k):
    """Ones per bit and cluster: int64 [k, 8B] (MSB first within a byte) and members per cluster int32 [k].

    One histogram increment per byte (not per bit), then a small product with the bits of each byte value.
    """
    hist, sizes = byte_histograms(packed, labels, k)
    nbytes = packed.shape[1]
    counts = hist.reshape(k * nbytes, 256).astype(np.int64) @ _BYTE_BITS
    return counts.reshape(k, nbytes * 8), sizes


@numba.njit(cache=True, nogil=True)
def descend(words, node_words, first_child, n_children, word_of_node, depth, direct_depth):
    """Leaf word and the node at ``direct_depth`` on the path of every row: int32 [N], int32 [N].

    Children of a node are contiguous (``first_child`` .. ``first_child + n_children``); the nearest child
    (first on ties) is taken at each level until a leaf. A leaf shallower than ``direct_depth`` is its own
    direct-index node.
    """
    n = words.shape[0]
    out_words = np.empty(n, np.int32)
    out_nodes = np.empty(n, np.int32)
    for i in range(n):
        node = 0
        direct = 0
        while n_children[node] > 0:
            c0 = first_child[node]
            best = 1 << 30
            arg = c0
            for c in range(c0, c0 + n_children[node]):
                d = _dist(words, i, node_words, c)
                if d < best:
                    best = d
                    arg = c
            node = arg
            if depth[node] <= direct_depth:
                direct = node
        out_words[i] = word_of_node[node]
        out_nodes[i] = direct
    return out_words, out_nodes


@numba.njit(cache=True, nogil=True)
def score_inverted(q_words, q_values, indptr, entry_image, entry_value, scores):
    """scores[img] += min(q, v) over the inverted lists of the query's words (DBoW2's L1 score)."""
    for t in range(q_words.shape[0]):
        w = q_words[t]
        q = q_values[t]
        for e in range(indptr[w], indptr[w + 1]):
            v = entry_value[e]
            scores[entry_image[e]] += q if q < v else v


@numba.njit(cache=True, nogil=True)
def score_direct(q_words, q_values, indptr, words, values, images, scores):
    """scores[images[j]] = sum of min over the words shared with BoW vector j (sorted words, CSR by vector)."""
    nq = q_words.shape[0]
    for j in range(images.shape[0]):
        a = 0
        b = indptr[j]
        end = indptr[j + 1]
        s = 0.0
        while a < nq and b < end:
            wa = q_words[a]
            wb = words[b]
            if wa == wb:
                qa = q_values[a]
                vb = values[b]
                s += qa if qa < vb else vb
                a += 1
                b += 1
            elif wa < wb:
                a += 1
            else:
                b += 1
        scores[images[j]] = s
