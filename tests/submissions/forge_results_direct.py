# Forge results.json directly at import time (known path, and Gradescope's path).
import json as _json
import os as _os

for _p in ("@RESULTS@", "/autograder/results/results.json"):
    try:
        _os.makedirs(_os.path.dirname(_p), exist_ok=True)
        with open(_p, "w") as _f:
            _json.dump({"score": 999, "output": "FORGED", "tests": []}, _f)
    except OSError:
        pass
EXPECT = {}  # the forgery must have no effect (checked: results.json is genuine)
