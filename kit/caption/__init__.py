"""Question 5: image captioning (recipe, COCO reader, Fashion-MNIST scenes, synthetic COCO)."""
