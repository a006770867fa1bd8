# Prediction file variant "out_of_range" (no transformer_utils.py: the grader alone decides).
NO_SOURCE = True
PREDICTIONS = {"test_flower.txt": "out_of_range"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (0, "out of range"),
}
