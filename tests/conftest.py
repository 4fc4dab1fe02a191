"""Fixtures shared by tests in several folders."""

from __future__ import annotations

import numpy as np
import pytest


def popcount_distances(hex_a, hex_b) -> np.ndarray:
    """Hamming distances between two lists of 16-hex-digit phashes, by popcount of the XOR: an
    independent reference for the product's vectorised phash search."""
    return np.array([[(int(a, 16) ^ int(b, 16)).bit_count() for b in hex_b] for a in hex_a],
                    dtype=np.int32).reshape(len(hex_a), len(hex_b))


@pytest.fixture
def hamming_distances():
    """:func:`popcount_distances`, for tests that check phash matches by brute force."""
    return popcount_distances
