# Leave files in /tmp, /dev/shm and the home folder's cache; the next exercise must not see
# them (each exercise starts clean).
import os as _os

_marks = ("/tmp/left-behind", "/dev/shm/left-behind", _os.path.expanduser("~/.cache/left"))
_seen = [p for p in _marks if _os.path.exists(p)]
if _seen:
    raise RuntimeError(f"LEFTOVER from an earlier exercise: {_seen}")
for _p in _marks:
    try:
        _os.makedirs(_os.path.dirname(_p), exist_ok=True)
        with open(_p, "w") as _f:
            _f.write("x")
    except OSError:
        pass
EXPECT = {}  # both exercises start clean: full marks
