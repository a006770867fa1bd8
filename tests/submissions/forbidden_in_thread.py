# LayerNorm through torch's own F.layer_norm, called from a worker thread (torch's dispatch
# modes are per thread: the process-wide guard must still see it).
import threading as _threading

import torch.nn.functional as _F


def _forward(self, x):
    box = {}

    def work():
        box["out"] = _F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)

    t = _threading.Thread(target=work)
    t.start()
    t.join()
    return box["out"]


LayerNorm.forward = _forward
EXPECT = {"layer_norm": (0, "forbidden")}
