# Prediction file variant "below_threshold" (no transformer_utils.py: the grader alone decides).
NO_SOURCE = True
PREDICTIONS = {"test_flower.txt": "below_threshold"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (3.875, "accuracy 0.9100"),
}
