"""SigLIP (Zhai et al. 2023): CLIP with a pairwise sigmoid loss in place of the batch softmax.
Every image-caption pair is a binary question, "do these match?", with a learnt logit scale
(from log 10) and bias (from -10, since nearly every pair in a batch is a negative). The same
loss is a choice for every contrastive method (``clip.contrastive_loss=sigmoid``, ``rils...``);
this is CLIP with it as its default, under its own name."""
from __future__ import annotations

from .clip import CLIP


class SigLIP(CLIP):
    name = "siglip"
    title = "SigLIP"
