"""Models with known optimal outputs (coordinate fields, autoencoders, TAESD / SD VAE adapters)."""
