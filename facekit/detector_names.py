"""The face detectors' names, in a module that imports nothing: the CLI's parser offers them as --detector's choices
without loading OpenCV and numpy, which facekit.detection needs."""

DETECTOR_BACKENDS = ("auto", "yunet", "mtcnn", "haar")
DETECTOR_HELP = "face detector; auto uses YuNet when a model file is configured, else MTCNN (default: auto)"
