# test_flower.txt is a symbolic link to the true labels.
NO_SOURCE = True
SYMLINKS = {"test_flower.txt": "@LABELS@/test_flower.txt"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (0, "symbolic links"),
}
