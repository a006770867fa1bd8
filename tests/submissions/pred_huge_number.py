# A prediction of thousands of digits (int() of it would raise).
NO_SOURCE = True
PREDICTIONS = {"test_flower.txt": "huge_number"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (0, "a number of 5000 digits"),
}
