# sys.exit(0) while being imported, hoping the grader treats it as success.
import sys as _sys

_sys.exit(0)
EXPECT = {"self_attention": (0, "sys.exit"), "layer_norm": (0, "sys.exit")}
