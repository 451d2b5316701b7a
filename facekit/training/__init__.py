"""Training: data, losses and the loop behind `facekit train`."""
