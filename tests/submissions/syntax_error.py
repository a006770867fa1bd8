# A transformer_utils.py that does not even parse.
REPLACE = "import torch\n\n\ndef broken(:\n    pass\n"
EXPECT = {"self_attention": (0, "SyntaxError"), "layer_norm": (0, "SyntaxError")}
