# An exception message with a lone surrogate and control characters: results.json must stay
# strict JSON in valid UTF-8, and the summary must print.
def _forward(self, x):
    raise RuntimeError("broken \ud800 \x00 \x1b[2J text")


SelfAttention.forward = _forward
EXPECT = {"self_attention": (0, "broken \ufffd \ufffd \ufffd[2j text")}
