# transformer_utils.py is a symbolic link to the hidden reference data.
SYMLINKS = {"transformer_utils.py": "@HIDDEN@/self_attention.pkl"}
EXPECT = {"self_attention": (0, "symbolic links"), "layer_norm": (0, "symbolic links")}
