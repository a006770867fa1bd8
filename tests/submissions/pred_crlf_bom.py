# Prediction file variant "crlf_bom" (no transformer_utils.py: the grader alone decides).
NO_SOURCE = True
PREDICTIONS = {"test_flower.txt": "crlf_bom"}
EXPECT = {
    "self_attention": (0, "not found"),
    "layer_norm": (0, "not found"),
    "test_flower.txt": (4, "accuracy 1.0000"),
}
