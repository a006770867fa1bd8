"""Datasets for Question 2 (flowers) and Question 3 (PixMo points).

Both read the real pickle formats of the assignment's data. Images are decoded and resized
once, kept as uint8 tensors, and augmented per batch on the training device, so the GPU
never waits on Python image code.
"""

# ============================== Question 2: flowers ==============================
# BEGIN flower section

# END flower section

# ============================== Question 3: PixMo points ==============================
# BEGIN pixmo section

# END pixmo section
