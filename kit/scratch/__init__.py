"""Question 4: ViT, Diff-ViT, SimpleViT and CNN from scratch (recipe, readers, models,
synthetic CIFAR-10)."""
