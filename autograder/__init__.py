"""The sandboxed autograder (local runs, bulk grading and Gradescope).

Entry points: ``python -m autograder grade | grade-all | merge-csv`` (see ``__main__.py``).
Student code only ever runs inside :mod:`autograder.sandbox`; the rest of the package is the
trusted side that reads the hidden data and writes results.json.
"""
