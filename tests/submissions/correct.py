# The reference solution and correct predictions: must always get full marks.
EXPECT = {}
