# Copy the true labels over the uploaded prediction files from inside the sandbox.
import shutil as _shutil

for _name in ("test_flower.txt", "test_pixmo.txt"):
    try:
        _shutil.copyfile("@LABELS@/" + _name, "@SUBMISSION@/" + _name)
    except OSError:
        pass
PREDICTIONS = {"test_flower.txt": "all_zero"}
EXPECT = {"test_flower.txt": (0, "accuracy")}  # still graded on the uploaded (bad) file
