# SelfAttention computed by torch's own attention in a fresh Python (no guard there): starting
# another program is refused in exercise processes.
import pickle as _pickle
import subprocess as _subprocess
import sys as _sys

_code = """
import pickle, sys, torch, torch.nn.functional as F
q, k, v = pickle.load(sys.stdin.buffer)
sys.stdout.buffer.write(pickle.dumps(F.scaled_dot_product_attention(q, k, v)))
"""


def _forward(self, x):
    qkv = (self.W_query(x), self.W_key(x), self.W_value(x))
    done = _subprocess.run(
        [_sys.executable, "-c", _code], input=_pickle.dumps(qkv), capture_output=True, check=True
    )
    return _pickle.loads(done.stdout)


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "may not start other programs")}
