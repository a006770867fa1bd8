# Never finish importing: the time-out must say so and name the line that was running.
_spins = 0
while True:  # spin at import
    _spins += 1
EXPECT = {
    "self_attention": (0, "while importing transformer_utils.py"),
    "layer_norm": (0, "It was running transformer_utils.py:"),
}
