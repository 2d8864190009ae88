"""Model parts and the registry of named architecture sizes."""
from __future__ import annotations

# Each entry fills every ``model.*`` config key that the user leaves unset.
ARCHS: dict[str, dict] = {
    # CPU-sized: 64 px scenes, 16 px patches (16 tokens: 2.5x the images/s of 8 px patches,
    # which decided the demo's accuracy on 2 cores); text context cut to 32 tokens since the
    # generated captions are short and the text tower would otherwise dominate.
    "demo": dict(
        img_size=64, patch_size=16, width=128, depth=6, heads=4, mlp_ratio=4.0, embed_dim=128,
        text_width=128, text_depth=3, text_heads=4, context_length=32,
        decoder_width=128, decoder_depth=2, decoder_heads=4,
    ),
    "vit_s16": dict(
        img_size=224, patch_size=16, width=384, depth=12, heads=6, mlp_ratio=4.0, embed_dim=384,
        text_width=512, text_depth=12, text_heads=8, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
    ),
    "vit_b16": dict(
        img_size=224, patch_size=16, width=768, depth=12, heads=12, mlp_ratio=4.0, embed_dim=512,
        text_width=512, text_depth=12, text_heads=8, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
    ),
    "vit_l16": dict(  # the releases' ViT-L settings: MAE's decoder, CLIP ViT-L/14's text tower and joint width
        img_size=224, patch_size=16, width=1024, depth=24, heads=16, mlp_ratio=4.0, embed_dim=768,
        text_width=768, text_depth=12, text_heads=12, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
    ),
}
