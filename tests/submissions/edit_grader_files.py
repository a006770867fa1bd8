# Overwrite the grader's and the kit's files (on disk and the sandbox's copies).
import os as _os
import sys as _sys

for _p in (
    "@KIT@/autograder/grade.py",
    "@KIT@/autograder/compare.py",
    "@KIT@/test_functions.py",
    "@KIT@/kit/exercise_checks/runners.py",
    "@HIDDEN@/self_attention.pkl",
):
    try:
        with open(_p, "a") as _f:
            _f.write("\nraise SystemExit('tampered')\n")
    except OSError:
        pass
for _name in ("kit.exercise_checks.runners", "kit.exercise_checks.compare"):
    _mod = _sys.modules.get(_name)  # the sandbox's own copy of the exercise checks
    if _mod is not None:
        try:
            with open(_mod.__file__, "a") as _f:
                _f.write("\n# tampered\n")
        except OSError:
            pass
EXPECT = {}  # nothing changes (checked by hashing the files)
