"""The challenge file's "alien" artefact: one structured label mask repeated on unrelated images.

:func:`contract.data.load_npz` drops those images; ``worker predict`` leaves them out of a labelled
set's score; :mod:`contract.synth` injects them. numpy only.
"""

from __future__ import annotations

import numpy as np

# A *structured* label mask (two or more terrain classes) shared by MORE than this many images is
# the "alien" artefact (the challenge file has one such mask shared by 110 unrelated images). A
# structured mask cannot repeat by chance across different photos; a uniform one (one terrain
# class, possibly inside an unlabelled border) does: the real AI4Mars tiles hold 9 such masks
# shared by 6-37 tiles each, and they are genuine data.
ALIEN_MIN_REPEATS = 5
# Terrain classes (1..4) a mask must contain to count as structured.
ALIEN_MIN_CLASSES = 2


def alien_mask_flags(masks: np.ndarray) -> np.ndarray:
    """Boolean (N,): True for images carrying the challenge's repeated-mask artefact.

    An image is an alien when its exact mask is shared by more than :data:`ALIEN_MIN_REPEATS`
    images AND that mask is structured (:func:`is_structured_mask`). Uniform masks repeat in
    genuine data (every all-soil tile inside the same unlabelled border has the same mask), so
    repetition alone would delete real images. Masks are grouped by their exact bytes with one
    vectorised ``np.unique`` over a void view (a collision-free equivalent of hashing each mask).
    """
    masks = np.ascontiguousarray(masks, dtype=np.uint8)
    n = masks.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    rows = masks.reshape(n, -1)
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    repeated = counts > ALIEN_MIN_REPEATS
    for k in np.flatnonzero(repeated):
        repeated[k] = is_structured_mask(masks[first[k]])
    return repeated[inverse.ravel()]


def is_structured_mask(mask: np.ndarray) -> bool:
    """True when a mask holds at least :data:`ALIEN_MIN_CLASSES` terrain classes (1..4).

    Such a mask traces class boundaries of one particular scene, so the same mask on several
    unrelated images is an artefact; a one-class mask is what any uniform tile looks like.
    """
    present = np.unique(np.asarray(mask))
    return int(np.count_nonzero(present > 0)) >= ALIEN_MIN_CLASSES
