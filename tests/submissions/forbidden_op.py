# LayerNorm through torch's own F.layer_norm.
import torch.nn.functional as _F


def _forward(self, x):
    return _F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


LayerNorm.forward = _forward
EXPECT = {"layer_norm": (0, "forbidden")}
