"""The scorer's parts, one per file; ``frobnolab.analysis.score.score_features`` runs them over the tokens.

| part | file | what it gives every feature |
| --- | --- | --- |
| streaming engine | ``engine.py`` | held-out tokens in chunks with their features, folds and bins; the pre-pass sample |
| activation moments | ``moments.py`` | firing rate, mean, max, top activations, correlation with every ground-truth column |
| named match | ``named.py`` | eta^2 of the best named concept and of the best pair; detection AUROC / F1 |
| scene-explained | ``scene.py`` | cross-validated R^2 from all the ground truth at the token (kernel ridge and MLP) |
| causal | ``causal.py`` | effect of ablating it on the error against the optimal output; where that lands |
| nulls | ``nulls.py`` | random directions thresholded like features; 95th percentiles of every score |
| frobnoloid | ``frobnoloid.py`` | the one formula gap * importance * real, and the candidate rule |
| bootstrap | ``bootstrap.py`` | the frobnoloid score's interval over resampled held-out images |

Adding a score is one new file here with a part that takes chunks (``add``) and gives columns (``finish``), and a
line in ``score_features`` that adds it.
"""
