"""The model: its configuration, the StyleGAN2 layers, the encoder and decoder, dense correspondence (attention
backends, matching, the gather and fill of the style's latents, coordinate conventions) and the COAT module that
puts them together (``coat.py``).

Import from the modules (``from coat_model.model.coat import COAT``) or from ``coat_model``; this file imports
nothing, so that any module here can be imported on its own without pulling in the rest.
"""
