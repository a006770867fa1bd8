# Leave a daemon behind that forges results.json after grading finished.
import json as _json
import os as _os
import time as _time

if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        for _ in range(40):
            _time.sleep(0.25)
            try:
                with open("@RESULTS@", "w") as _f:
                    _json.dump({"score": 999, "output": "FORGED", "tests": []}, _f)
            except OSError:
                pass
        _os._exit(0)
    _os._exit(0)
EXPECT = {}  # genuine results; no process of the sandbox user survives
