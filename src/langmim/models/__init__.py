"""Model parts: the masked ViT, text towers, decoders, masking and MILAN's teachers."""
