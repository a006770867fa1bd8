# Prediction file variant "at_threshold" (no transformer_utils.py: the grader alone decides).
NO_SOURCE = True
PREDICTIONS = {"test_flower.txt": "at_threshold"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (4, "accuracy 0.9200"),
}
