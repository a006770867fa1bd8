"""Tests for the exercises of Question 1 (transformer_utils.py).

Run one exercise's test, or all of them:

    python -m unittest test_functions.TestClass.test_self_attention -v
    python -m unittest test_functions -v        (or: python -m pytest test_functions.py)

Each test builds your module, loads fixed weights into it, runs it on the inputs stored in
test_data/<exercise>.pkl and compares with the stored outputs of the reference solution.
When your output is wrong, the message gives the case, the shapes, the size of the error
and, if your output equals the output of a common mistake, the likely mistake.

``@exercise(...)`` next to each test declares its number, points, data file and tolerances
(the autograder reads these values without importing this file). The test loop and its
messages are in kit/exercise_checks/ (``check_exercise``); it builds your modules with the
same runners the autograder uses. Exercises built from other exercises (encoder/decoder
layer, ViT) are tested with torch's own layers in place of your LayerNorm, attention, etc.,
so that one unfinished exercise never fails another exercise's test.
"""

import unittest

import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.exercise_checks.compare import explain_difference
from kit.exercise_checks.harness import (
    check_exercise,
    exercise,
    exercise_order,
    load_cases,
    student_module,
)
from kit.exercise_checks.runners import run_conv2d


def load_tests(loader, tests, pattern):
    """unittest's hook: run the tests in exercise order (1.1, 1.2, ..., 1.10), not
    alphabetically."""
    names = exercise_order(TestClass, loader.getTestCaseNames(TestClass))
    return unittest.TestSuite(TestClass(name) for name in names)


class TestClass(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The test tensors are tiny: one thread is faster than several competing ones.
        cls._num_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._num_threads)

    @exercise(id="self_attention", number="1.1", points=2, visibility="visible",
              name="SelfAttention", data="self_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_self_attention(self):
        check_exercise(self, "self_attention")

    @exercise(id="layer_norm", number="1.2", points=2, visibility="visible",
              name="LayerNorm", data="layer_norm.pkl", rtol=1e-5, atol=1e-6)  # fmt: skip
    def test_layer_norm(self):
        check_exercise(self, "layer_norm")

    @exercise(id="multi_head_attention", number="1.3", points=3, visibility="visible",
              name="MultiHeadAttention", data="multi_head_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_multi_head_attention(self):
        check_exercise(self, "multi_head_attention")

    @exercise(id="positional_encoding", number="1.4", points=2, visibility="visible",
              name="Positional encodings", data="positional_encoding.pkl", rtol=1e-4, atol=1e-5)  # fmt: skip
    def test_positional_encoding(self):
        check_exercise(self, "positional_encoding")

    @exercise(id="patch_embedding", number="1.5", points=1, visibility="visible",
              name="img_to_patch / PatchEmbedding", data="patch_embedding.pkl", rtol=1e-4, atol=1e-5)  # fmt: skip
    def test_patch_embedding(self):
        check_exercise(self, "patch_embedding")

    @exercise(id="encoder_layer", number="1.6", points=2, visibility="visible",
              name="TransformerEncoderLayer", data="encoder_layer.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_encoder_layer(self):
        check_exercise(self, "encoder_layer")

    @exercise(id="decoder_layer", number="1.7", points=2, visibility="visible",
              name="TransformerDecoderLayer", data="decoder_layer.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_decoder_layer(self):
        check_exercise(self, "decoder_layer")

    @exercise(id="differential_attention", number="1.8", points=3, visibility="visible",
              name="DifferentialAttention", data="differential_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_differential_attention(self):
        check_exercise(self, "differential_attention")

    @exercise(id="conv2d", number="1.9", points=4, visibility="visible",
              name="Conv2dFunction / CustomConv2d", data="conv2d.pkl", rtol=1e-4, atol=1e-4)  # fmt: skip
    def test_conv2d(self):
        check_exercise(self, "conv2d")
        tu = student_module()
        self._check_conv2d_against_torch(tu)
        self._check_conv2d_gradcheck(tu)
        self._check_conv2d_parameters(tu)

    def _check_conv2d_against_torch(self, tu):
        """Your gradients must equal those of torch's own conv2d on the stored cases."""
        cases, _, _ = load_cases("conv2d.pkl")
        for i, case in enumerate(cases):
            inp = case["input"]
            x = inp["x"].clone().requires_grad_(True)
            w = inp["weight"].clone().requires_grad_(True)
            b = None if inp["bias"] is None else inp["bias"].clone().requires_grad_(True)
            out = F.conv2d(x, w, b, inp["stride"], inp["padding"])
            out.backward(inp["grad_out"])
            expected = {"out": out.detach(), "grad_x": x.grad, "grad_weight": w.grad}
            if b is not None:
                expected["grad_bias"] = b.grad
            problem = explain_difference(run_conv2d(tu, inp), expected, 1e-4, 1e-4)
            if problem:
                self.fail(f"Conv2dFunction vs torch's conv2d, case {i + 1}: {problem}")

    def _check_conv2d_gradcheck(self, tu):
        """Finite differences in float64: your backward must match your forward."""
        gen = torch.Generator().manual_seed(0)
        for stride, padding, kernel in [(1, 0, (3, 3)), (2, 1, (3, 2)), ((1, 2), (2, 0), (2, 3))]:
            x = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
            w = torch.randn(2, 2, *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
            b = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
            ok = torch.autograd.gradcheck(
                lambda x, w, b, s=stride, p=padding: tu.Conv2dFunction.apply(x, w, b, s, p),
                (x, w, b),
                raise_exception=False,
            )
            self.assertTrue(
                ok,
                f"Conv2dFunction.backward disagrees with finite differences of its forward "
                f"(float64, stride={stride}, padding={padding}, kernel={kernel}): check the "
                "gradient formulas, and that grad_x uses F.fold with the same stride/padding.",
            )

    def _check_conv2d_parameters(self, tu):
        """CustomConv2d must have nn.Conv2d's parameter names and shapes."""
        ours = tu.CustomConv2d(3, 5, (3, 2), stride=2, padding=1).state_dict()
        theirs = nn.Conv2d(3, 5, (3, 2), stride=2, padding=1).state_dict()
        self.assertEqual(
            {k: tuple(v.shape) for k, v in ours.items()},
            {k: tuple(v.shape) for k, v in theirs.items()},
            "CustomConv2d's parameters must be named and shaped as nn.Conv2d's",
        )

    @exercise(id="attention_rollout", number="1.10", points=2, visibility="visible",
              name="attention_rollout", data="attention_rollout.pkl", rtol=1e-4, atol=1e-6)  # fmt: skip
    def test_attention_rollout(self):
        check_exercise(self, "attention_rollout")

    @exercise(id="vision_transformer", number="1.11", points=2, visibility="visible",
              name="VisionTransformer", data="vision_transformer.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_vision_transformer(self):
        check_exercise(self, "vision_transformer")

    @exercise(id="window_attention", number="1.12", points=3, visibility="visible",
              name="WindowSelfAttention", data="window_attention.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_window_attention(self):
        check_exercise(self, "window_attention")

    @exercise(id="captioning", number="1.13", points=3, visibility="visible",
              name="CaptioningTransformer", data="captioning.pkl", rtol=1e-3, atol=1e-5)  # fmt: skip
    def test_captioning(self):
        check_exercise(self, "captioning")


if __name__ == "__main__":
    unittest.main()
