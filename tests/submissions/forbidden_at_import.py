# torch's own layer_norm, called while the module is imported (before any test runs).
import torch.nn.functional as _F

_F.layer_norm(torch.ones(2, 4), (4,))
EXPECT = {"layer_norm": (0, "forbidden")}  # SelfAttention may use layer_norm: full marks
