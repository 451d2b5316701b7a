"""Training: data, losses and the loop behind `facekit train`; the landmark net that
tools/train_landmarks.py trains."""
