"""How the exercises of transformer_utils.py are checked: by test_functions.py on a student's
machine and by the autograder inside its sandbox, with the same code.

- ``forbidden``: torch's own version of an exercise (``F.layer_norm``, ...) is refused.
- ``stand_ins``: torch's layers with the student's weights, so that a composite exercise
  (encoder layer, ViT) is tested on its own wiring, not on the student's other exercises.
- ``runners``: build the student's module from one stored case and return its output(s).
- ``compare``: how far an output is from the target, in tolerances, and which known mistake
  it reproduces.
- ``diagnosis``: when no known mistake matches, which outputs, positions, heads or cases are
  off, measured against the reference.
- ``crashes``: an exception's line in the student's file and its probable cause.
- ``harness``: the test loop with its messages (``check_exercise``), the declarations
  (``@exercise``) and the one-line summary.

Only torch (and PyYAML for the assignment file) is imported: the sandbox carries this
package and nothing else of the kit.
"""
