"""Question 4: ViT, Diff-ViT and CNN from scratch (recipe, readers, models, synthetic CIFAR-10)."""
