"""Public and private parts of a prediction file's hidden labels.

Feedback at every upload is a measurement the student can optimise against: with the exact
accuracy on every hidden label after each upload, resubmitting climbs the test set itself.
So each prediction file's labels are split, once and for all, into a public part (scored
and shown at every upload, and the leaderboard's) and a private part (scored at every
upload, carrying the points, and hidden until the instructor releases it). Which image is
public is decided by hashing ``seed:index``: the same split on every machine and every
numpy version, and unpredictable without the seed (the assignment file, which never ships
to students).
"""

import hashlib

from .intervals import describe
from .predictions import credit, read_predictions
from .results import test_entry


def public_indices(total, fraction, seed):
    """The sorted indices of the public images among ``total``: ``round(fraction * total)``
    of them, chosen by the ``seed``."""
    count = round(fraction * total)
    ranked = sorted(range(total), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return sorted(ranked[:count])


def _score(preds, labels, indices):
    """``(correct, total)`` of ``preds`` on ``labels`` at ``indices`` (a missing prediction
    at the end of the file counts as wrong)."""
    n = len(preds)
    correct = sum(1 for i in indices if i < n and preds[i] == labels[i])
    return correct, len(indices)


def _credit_words(part):
    return f"full credit at {float(part.threshold):.2f}, zero at or below {float(part.floor):.2f}"


def grade_split(pred_path, labels, part, released=False, show_public=True, withheld=""):
    """``(tests, public accuracy or None)`` of one prediction file of a split assignment:
    the private part's test (the points; hidden unless ``released``), then the public
    part's (0 points, always shown, unless ``show_public`` is False: then ``withheld`` says
    why)."""
    total = len(labels)
    public = public_indices(total, part.public_fraction, part.split_seed or part.file)
    in_public = set(public)
    private = [i for i in range(total) if i not in in_public]
    preds, error = read_predictions(pred_path, part, total)
    short = ""
    if preds is not None and len(preds) < total:
        short = (
            f" Only {len(preds)} predictions for {total} test images: the missing ones "
            "count as wrong."
        )
    tests, accuracy = [], None
    if private:
        if error:
            score, message = 0.0, error
        else:
            correct, n = _score(preds, labels, private)
            score = round(credit(correct, n, part.threshold, part.floor, part.points), 4)
            message = (
                f"{part.file}, private part ({n} of {total} test images; your grade): "
                f"{correct} correct, accuracy {describe(correct, n)} ({_credit_words(part)})."
                + short
            )
        visibility = "visible" if released else part.private_visibility
        tests.append(test_entry(part.name, part.number, score, part.points, message, visibility))
    if public:
        correct, n = (0, len(public)) if error else _score(preds, labels, public)
        would = credit(correct, n, part.threshold, part.floor, part.points)
        if error:
            message = error
        elif private and not show_public:  # only the private part grades: nothing is lost
            message = f"{part.file}, public part: {withheld}"
        else:
            accuracy = correct / n
            message = (
                f"{part.file}, public part ({n} of {total} test images, shown at every upload): "
                f"{correct} correct, accuracy {describe(correct, n)}; at this accuracy the file "
                f"would earn {would:.2f} of {part.points:g} points ({_credit_words(part)})."
            )
            if private:
                message += (
                    f" Your grade comes from the other {len(private)} images, scored now and "
                    "shown when the instructor releases them: both parts are samples of the "
                    "same kind of images, so expect a private accuracy within the two "
                    "intervals, not the same number."
                )
            message += short
        if private:  # feedback only: the points are the private part's
            tests.append(
                test_entry(f"{part.name}, public part", part.number, 0.0, 0.0, message,
                           part.visibility, passed=error is None)
            )  # fmt: skip
        else:
            score = round(would, 4)
            tests.append(
                test_entry(part.name, part.number, score, part.points, message, part.visibility)
            )
    return tests, accuracy
