"""Question 3: the object under a point on PixMo images (the recipe and synthetic PixMo)."""
