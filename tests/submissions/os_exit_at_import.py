# os._exit(0) at import: no exception, no report, exit status 0.
import os as _os

_os._exit(0)
EXPECT = {"self_attention": (0, "before reporting"), "layer_norm": (0, "before reporting")}
