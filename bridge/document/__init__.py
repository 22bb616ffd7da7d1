"""The fusion document: layer stack model, builder, PSD/PSB writer and reader."""
