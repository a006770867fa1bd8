"""How much each pair of uploads shares: the one computation both similarity measures need
(the same wrong class on the same test image; code fingerprints).

An item held by one upload alone can never be shared, so only items held by two or more
enter the product; those become columns of a matrix ``X`` (1 where an upload holds the
item), and ``X @ X.T`` counts every pair at once, in column blocks so that memory stays
bounded for hundreds of uploads.
"""

import numpy as np

BLOCK = 4096  # columns per product: 500 uploads x 4096 float32 is 8 MB


def shared(owner, item, n, values=None):
    """``(S, T)``. ``S[u, v]``: the number of distinct items uploads ``u`` and ``v`` both hold
    (``owner[j]`` holds ``item[j]``; a repeated pair counts once), its diagonal each upload's
    number of distinct items. ``T[u, v]``: with ``values[j]`` the value of entry ``j``, the
    sum over the shared items of ``value_u * value_v`` (None without ``values``)."""
    owner = np.asarray(owner, dtype=np.int64)
    item = np.asarray(item)
    S = np.zeros((n, n), dtype=np.float64)
    T = None if values is None else np.zeros((n, n), dtype=np.float64)
    if owner.size == 0:
        return S.astype(np.int64), T
    _, dense = np.unique(item, return_inverse=True)
    keys, first = np.unique(dense.reshape(-1) * n + owner, return_index=True)
    col, owners = keys // n, keys % n
    np.add.at(S, (owners, owners), 1)
    keep = np.bincount(col)[col] >= 2
    owners, col = owners[keep], col[keep]
    entry_values = None if values is None else np.asarray(values, dtype=np.float64)[first][keep]
    _, cols = np.unique(col, return_inverse=True)
    total = int(cols.max()) + 1 if cols.size else 0
    for start in range(0, total, BLOCK):
        sel = (cols >= start) & (cols < start + BLOCK)
        width = min(BLOCK, total - start)
        X = np.zeros((n, width), dtype=np.float32)
        X[owners[sel], cols[sel] - start] = 1.0
        S += X @ X.T - np.diag(X.sum(axis=1))
        if T is not None:
            V = np.zeros((n, width), dtype=np.float64)
            V[owners[sel], cols[sel] - start] = entry_values[sel]
            T += V @ V.T - np.diag((V * V).sum(axis=1))
    return np.rint(S).astype(np.int64), T
