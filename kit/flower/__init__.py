"""Question 2: fine-tuning ViT-B/32 on flowers (the recipe and synthetic flowers)."""
