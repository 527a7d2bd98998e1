"""frobnolab: an interpretability lab for image models whose optimal outputs are known."""
