# Prediction file variant "short" (no transformer_utils.py: the grader alone decides).
NO_SOURCE = True
PREDICTIONS = {"test_flower.txt": "short"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (3.75, "missing ones count as wrong"),
}
