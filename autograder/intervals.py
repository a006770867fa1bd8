"""95% intervals of accuracies measured on a finite test set.

An accuracy of ``correct / total`` is one draw of a binomial: a model whose accuracy on the
whole population of such images is p gets ``correct ~ Binomial(total, p)``. The Wilson score
interval is used rather than the normal approximation ``acc +- 1.96 sqrt(acc (1 - acc) / n)``
because it stays inside [0, 1] and keeps its coverage near 0 and 1 (a perfect score on a small
split still gets an interval that admits mistakes).
"""

import math

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson(correct, total, z=Z95):
    """``(low, high)``: the Wilson score interval of ``correct / total`` at level ``z``."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"correct must lie in 0..{total}, got {correct}")
    p = correct / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def half_width(accuracy, total, z=Z95):
    """The normal-approximation half width at ``accuracy``: what README quotes as +- points."""
    if total <= 0:
        return 1.0
    return z * math.sqrt(accuracy * (1 - accuracy) / total)


def describe(correct, total):
    """'0.9212 (95% interval 0.9071-0.9332 on 1638 images)' for feedback and summaries."""
    low, high = wilson(correct, total)
    accuracy = correct / total if total else 0.0
    return f"{accuracy:.4f} (95% interval {low:.4f}-{high:.4f} on {total} images)"
