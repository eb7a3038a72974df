"""Forward-Forward (Hinton, 2022), the supervised version.

Algorithm (per mini-batch, every layer at once, each with its own optimiser):
    positive data: x with its true label written in (one-hot over the first pixels)
    negative data: x with a wrong label (random, or the hardest one, see ``negatives``)
    for each layer k:
        h_k = relu(W_k normalise(h_{k-1}))         # input detached and length-normalised
        G_k = mean_j h_kj^2                        # goodness ("sum" optional)
        L_k = softplus(theta - G_k(pos)) + softplus(G_k(neg) - theta)
Prediction, two ways (``predict``):
    "goodness": for every candidate label, run x with that label written in and sum
        the goodness over layers (the first left out with ``skip_first``); argmax.
        One pass per label.
    "readout": a linear softmax classifier on the normalised activities of a pass with
        the neutral label (every label entry 1/classes), trained with cross-entropy on
        detached activities. One pass.

Deviations from the paper: normalisation divides by the root mean square rather
than the length (a fixed factor sqrt(width), so one threshold suits every width);
the readout uses every layer unless ``skip_first`` (Hinton: all but the first);
hard negatives are the hardest wrong label (``negatives="hardest"`` by accumulated
goodness, ``"readout"`` by the readout) rather than sampled in proportion to the
predicted probabilities; all layers train at once on each mini-batch rather than
one layer after another.
"""

from __future__ import annotations

from locallearn.rules import RULES
from locallearn.rules.ff_common import GoodnessRule


@RULES.register("ff", help="Forward-Forward (Hinton 2022): label in the input, layer goodness")
class ForwardForward(GoodnessRule):
    defaults = {"epochs": 12, "lr": 2e-3, "optimizer": "adam", "batch_size": 50}
