"""Train facekit's 5-point landmark network (facekit/landmarks.py) on the CPU.

The training crops are tightly aligned 112x112 faces, while at run time the network
sees a window around a Haar cascade box in a real photo. To bridge the two:

1. measure how Haar boxes sit relative to YuNet's landmarks on real photos (LFW people
   kept apart from the evaluation set): centre offset and size, in a face-size unit;
2. for every training sample, warp a crop with a random similarity transform, draw a
   box from those measured statistics (with extra spread) and cut the input with the
   very same crop_face() the detector uses;
3. evaluate the finished HaarLandmarkDetector against YuNet on other LFW people and
   write the numbers into the model card next to the weights.

Usage:
    python -m tools.train_landmarks --data ../shared/data   (from the repository root)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

from facekit.representation import torch_or_exit

torch = torch_or_exit("tools/train_landmarks.py")  # one line where it is missing, not a traceback
from safetensors.torch import save_file

from facekit.landmarks import (
    CROP_EXPANSION,
    DEFAULT_WEIGHTS,
    FLIP_ORDER,
    INPUT_SIZE,
    crop_face,
    face_frame,
    normalise_crops,
    rotate,
    to_crop_units,
)
from facekit.training.landmark_net import LandmarkNet

HAAR_PARAMS = {"scaleFactor": 1.1, "minNeighbors": 5}
CONTEXT_PAD = 48


def lfw_split(lfw_images: Path) -> tuple[list[Path], list[Path]]:
    """First image of every 10th person for evaluation; people at offset 5 for box statistics."""
    people = sorted(p for p in lfw_images.iterdir() if p.is_dir())
    evaluation = [sorted(p.glob("*.jpg"))[0] for p in people[0::10]]
    box_fit = [sorted(p.glob("*.jpg"))[0] for p in people[5::10]]
    return evaluation, box_fit


def largest_yunet_face(yunet: cv2.FaceDetectorYN, image: np.ndarray) -> np.ndarray | None:
    yunet.setInputSize((image.shape[1], image.shape[0]))
    _, faces = yunet.detect(image)
    if faces is None or len(faces) == 0:
        return None
    return faces[np.argmax(faces[:, 2] * faces[:, 3])][4:14].reshape(5, 2)


def measure_box_statistics(images: list[Path], yunet_model: Path) -> dict:
    """How Haar boxes sit on faces: offset of the box centre and log size, in face units."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    yunet = cv2.FaceDetectorYN.create(str(yunet_model), "", (320, 320), 0.7, 0.3)
    offsets, log_sizes = [], []
    for path in images:
        image = cv2.imread(str(path))
        landmarks = largest_yunet_face(yunet, image)
        if landmarks is None:
            continue
        boxes = cascade.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), minSize=(20, 20), **HAAR_PARAMS)
        centre, size, roll = face_frame(landmarks)
        for x, y, w, h in boxes:
            if x <= centre[0] <= x + w and y <= centre[1] <= y + h:
                offset = np.array([x + w / 2, y + h / 2]) - centre
                offsets.append(rotate(offset[None], -roll)[0] / size)
                log_sizes.append(math.log(w / size))
                break
    offsets_arr, sizes_arr = np.array(offsets), np.array(log_sizes)
    return {
        "images": len(images),
        "matched": len(offsets),
        "offset_mean": offsets_arr.mean(0).tolist(),
        "offset_std": offsets_arr.std(0).tolist(),
        "log_size_mean": float(sizes_arr.mean()),
        "log_size_std": float(sizes_arr.std()),
    }


def load_crops(train_dir: Path, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode grey crops and their landmarks into memory."""
    with open(train_dir / "manifest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in sorted(rng.permutation(len(rows))[:limit])]
    keys = [f"{c}{i}" for i in range(1, 6) for c in "xy"]
    crops = np.empty((len(rows), 112, 112), np.uint8)
    landmarks = np.empty((len(rows), 5, 2), np.float32)
    shards: dict[str, zipfile.ZipFile] = {}
    for i, row in enumerate(rows):
        if row["shard"] not in shards:
            shards[row["shard"]] = zipfile.ZipFile(train_dir / row["shard"])
        shard = shards[row["shard"]]
        data = np.frombuffer(shard.read(row["member"]), np.uint8)
        crops[i] = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        landmarks[i] = np.array([float(row[k]) for k in keys], np.float32).reshape(5, 2)
    return crops, landmarks


class SampleMaker:
    """Turns an aligned crop into a detector-style network input with random pose, framing and quality."""

    def __init__(self, box_stats: dict, spread: float, rng: np.random.Generator) -> None:
        self.offset_mean = np.array(box_stats["offset_mean"])
        # Wider than measured, so imperfect boxes on unusual faces still land well.
        self.offset_std = np.array(box_stats["offset_std"]) * spread
        self.log_size_mean = box_stats["log_size_mean"]
        self.log_size_std = box_stats["log_size_std"] * spread
        self.rng = rng
        self.edge_masks = [self.random_edge_mask() for _ in range(64)]  # blurring a fresh mask per sample is slow

    def random_edge_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """Soft mask of the crop minus a random margin (the mouth sits only 20 px above the lower edge)."""
        top, left, right = self.rng.integers(0, 16, 3)
        bottom = self.rng.integers(0, 10)
        side = 112 + 2 * CONTEXT_PAD
        mask = np.zeros((side, side), np.float32)
        mask[CONTEXT_PAD + top:CONTEXT_PAD + 112 - bottom, CONTEXT_PAD + left:CONTEXT_PAD + 112 - right] = 1
        mask = cv2.GaussianBlur(mask, (0, 0), self.rng.uniform(2.0, 6.0))
        return mask, 1.0 - mask

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        surrounded = self.hide_crop_edges(crop)
        centre = surrounded.shape[0] / 2
        angle = float(np.clip(rng.normal(0, 10), -25, 25))
        scale = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        canvas_size = int(224 * scale)
        matrix = cv2.getRotationMatrix2D((centre, centre), angle, scale)
        matrix[:, 2] += canvas_size / 2 - centre
        canvas = cv2.warpAffine(surrounded, matrix, (canvas_size, canvas_size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        points = (landmarks + CONTEXT_PAD) @ matrix[:, :2].T + matrix[:, 2]

        centre, size, roll = face_frame(points)
        offset = self.offset_mean + rng.normal(0, 1, 2) * self.offset_std
        box_centre = centre + rotate(offset[None], roll)[0] * size
        side = size * math.exp(self.log_size_mean + rng.normal() * self.log_size_std)
        box = (box_centre[0] - side / 2, box_centre[1] - side / 2, side, side)
        face, window = crop_face(canvas, box)
        return self.degrade(face), to_crop_units(points, window)

    def hide_crop_edges(self, crop: np.ndarray) -> np.ndarray:
        """Surround the crop with a blurred continuation of itself, blended in over a random margin.

        The edge of an aligned crop sits at a fixed place relative to its landmarks. Left sharp,
        the network learns to find that edge instead of the face, and fails on real photos.
        """
        rng = self.rng
        padded = cv2.copyMakeBorder(crop, *[CONTEXT_PAD] * 4, cv2.BORDER_REFLECT_101)
        coarse = cv2.resize(padded, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        coarse = cv2.GaussianBlur(coarse, (0, 0), rng.uniform(1.0, 3.0))
        background = cv2.resize(coarse, padded.shape[::-1], interpolation=cv2.INTER_LINEAR)
        mask, inverse = self.edge_masks[rng.integers(len(self.edge_masks))]
        return cv2.blendLinear(padded, background, mask, inverse)

    def degrade(self, face: np.ndarray) -> np.ndarray:
        """Low resolution, blur, noise and contrast changes seen in real photos."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.25:
            small = int(rng.uniform(20, 48))
            face = cv2.resize(cv2.resize(face, (small, small), interpolation=cv2.INTER_AREA), (INPUT_SIZE, INPUT_SIZE))
        elif kind < 0.4:
            face = cv2.GaussianBlur(face, (0, 0), rng.uniform(0.5, 1.5))
        face = face.astype(np.float32)
        if rng.random() < 0.5:
            face = 255.0 * (face / 255.0) ** math.exp(rng.normal(0, 0.3))
        if rng.random() < 0.3:
            face += rng.normal(0, rng.uniform(2, 8), face.shape)
        if rng.random() < 0.2:
            # A side light: real photos are rarely evenly lit.
            ramp = np.linspace(-1, 1, INPUT_SIZE, dtype=np.float32)
            face += rng.uniform(-40, 40) * (ramp[None, :] if rng.random() < 0.5 else ramp[:, None])
        return np.clip(face, 0, 255).astype(np.uint8)


def wing_loss(pred: torch.Tensor, target: torch.Tensor, width: float = 0.05, curvature: float = 0.01) -> torch.Tensor:
    """Wing loss (Feng et al. 2018): L1 far away, log near zero, so small errors keep a useful gradient."""
    error = (pred - target).abs()
    c = width - width * math.log(1 + width / curvature)
    return torch.where(error < width, width * torch.log(1 + error / curvature), error - c).mean()


def train(crops: np.ndarray, landmarks: np.ndarray, box_stats: dict, args: argparse.Namespace) -> LandmarkNet:
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    make_sample = SampleMaker(box_stats, args.box_spread, rng)
    net = LandmarkNet(width=args.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    started = time.time()
    running = 0.0
    for step in range(1, args.steps + 1):
        batch = rng.integers(0, len(crops), args.batch_size)
        faces, targets = zip(*(make_sample(crops[i], landmarks[i]) for i in batch), strict=True)
        inputs = torch.from_numpy(normalise_crops(np.stack(faces)))
        target = torch.from_numpy(np.stack(targets))
        # Mirror half the batch: doubles the pose variety and keeps left/right symmetric.
        flip = torch.rand(len(batch)) < 0.5
        inputs[flip] = torch.flip(inputs[flip], dims=[3])
        mirrored = target[flip][:, FLIP_ORDER]
        mirrored[..., 0] = 1.0 - mirrored[..., 0]
        target[flip] = mirrored

        loss = wing_loss(net(inputs), target.reshape(len(batch), 10))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0:
            print(f"step {step}/{args.steps} loss {running:.4f} {time.time() - started:.0f}s", flush=True)
    return net.eval()


def matched_faces(images: list[Path | np.ndarray], yunet_model: Path, detector, every_face: bool = False):
    """(predicted, YuNet) landmark pairs: for each YuNet face (only the largest unless every_face), the first
    detector face whose box holds its landmark centre; None as the prediction where there is no such box.
    Also returns the seconds the detector took."""
    yunet = cv2.FaceDetectorYN.create(str(yunet_model), "", (320, 320), 0.7, 0.3)
    pairs, seconds = [], 0.0
    for item in images:
        image = cv2.imread(str(item)) if isinstance(item, Path) else item
        yunet.setInputSize((image.shape[1], image.shape[0]))
        _, rows = yunet.detect(image)
        if rows is None or len(rows) == 0:
            continue
        if not every_face:
            rows = rows[[np.argmax(rows[:, 2] * rows[:, 3])]]
        started = time.perf_counter()
        faces = detector.detect(image)
        seconds += time.perf_counter() - started
        for reference in (row[4:14].reshape(5, 2) for row in rows):
            centre = reference.mean(0)
            match = next((face.landmarks for face in faces if face.box[0] <= centre[0] <= face.box[0] + face.box[2]
                          and face.box[1] <= centre[1] <= face.box[1] + face.box[3]), None)
            pairs.append((match, reference))
    return pairs, seconds


def face_frame_errors(pairs) -> np.ndarray:
    """(n, 5, 2) point errors turned upright and divided by the eye distance, both taken from the prediction
    (all that inference has)."""
    errors = []
    for predicted, reference in pairs:
        if predicted is not None:
            _, _, roll = face_frame(predicted)
            errors.append(rotate(predicted - reference, -roll) / np.linalg.norm(predicted[1] - predicted[0]))
    return np.array(errors)


def measure_bias(images: list[Path], yunet_model: Path, weights: Path) -> dict:
    """The mean offset of the uncorrected net's points from YuNet's, in face-frame units."""
    from facekit.detection import HaarLandmarkDetector
    from facekit.landmarks import LandmarkPredictor

    detector = HaarLandmarkDetector(weights=weights)
    detector.landmark_predictor = LandmarkPredictor(weights, correct_bias=False)
    errors = face_frame_errors(matched_faces(images, yunet_model, detector)[0])
    return {"images": len(images), "faces": len(errors), "offsets": errors.mean(0).round(4).tolist()}


def evaluate(images: list[Path | np.ndarray], yunet_model: Path, weights: Path, every_face: bool = False) -> dict:
    """NME of the Haar+landmark detector against YuNet's landmarks."""
    from facekit.detection import HaarLandmarkDetector

    pairs, seconds = matched_faces(images, yunet_model, HaarLandmarkDetector(weights=weights), every_face)
    errors_arr = np.array([np.linalg.norm(predicted - reference, axis=1).mean()
                           / np.linalg.norm(reference[1] - reference[0])
                           for predicted, reference in pairs if predicted is not None])
    return {
        "images": len(images),
        "yunet_faces": len(pairs),
        "detection_rate": round(len(errors_arr) / len(pairs), 4),
        "nme_mean": round(float(errors_arr.mean()), 4),
        "nme_median": round(float(np.median(errors_arr)), 4),
        "failure_rate_nme_over_0.2": round(float((errors_arr > 0.2).mean()), 4),
        "ms_per_image_detection_and_landmarks": round(1000 * seconds / len(images), 1),
    }


def demo_photos(data: Path) -> list[Path | np.ndarray]:
    """Real photos that are not LFW: the raw demo sets, scikit-image's astronaut and matplotlib's Grace Hopper."""
    import matplotlib.cbook
    from skimage import data as skimage_data

    photos: list[Path | np.ndarray] = sorted(p for p in (data / "demo").rglob("*.jpg")
                                             if "test_images_aligned" not in p.parts)
    photos.append(np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1]))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR))
    return photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--crops", type=int, default=40000, help="training crops decoded into memory")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--box-spread", type=float, default=1.5, help="box jitter relative to the measured spread")
    parser.add_argument("--seed", type=int, default=0)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--evaluate-only", action="store_true",
                      help="skip training: evaluate --out as its card stands and print the numbers; nothing is written")
    only.add_argument("--calibrate-only", action="store_true",
                      help="skip training: measure --out's bias correction again, evaluate it and write both into its "
                           "card (what changes the shipped points, and so the Haar path's results)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    yunet_model = args.data / "models" / "face_detection_yunet.onnx"
    evaluation_images, box_fit_images = lfw_split(args.data / "lfw" / "images")
    card_path = args.out.with_suffix(".json")
    if args.evaluate_only or args.calibrate_only:
        card = json.loads(card_path.read_text())
    else:
        box_stats = measure_box_statistics(box_fit_images[:200], yunet_model)
        print("haar box statistics:", box_stats, flush=True)
        crops, landmarks = load_crops(args.data / "train", args.crops, args.seed)
        print(f"loaded {len(crops)} crops", flush=True)
        started = time.time()
        net = train(crops, landmarks, box_stats, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out))
        card = {
            "name": "facekit 5-point landmark net",
            "architecture": "6 conv3x3+BN+ReLU (4 stride-2) -> flatten 4x4 -> FC128 -> FC10, "
            f"width {args.width}, {sum(p.numel() for p in net.parameters())} parameters",
            "width": args.width,
            "input": "grey, per-crop standardised",
            "input_size": INPUT_SIZE,
            "crop_expansion": CROP_EXPANSION,
            "output": "x1 y1 ... x5 y5 in crop units: left eye, right eye, nose, left and right mouth corner",
            "training_data": f"{len(crops)} aligned crops (CelebA + Pins-105, identities disjoint from LFW) with "
            "YuNet landmarks; random similarity warps (roll N(0,10) clipped to 25 deg, scale 0.6-1.6), boxes drawn "
            "from Haar-box statistics measured on LFW people disjoint from the evaluation people, mirroring, blur, "
            "low resolution, noise, gamma, side light",
            "training": f"{args.steps} steps x {args.batch_size}, AdamW one-cycle lr {args.lr}, wing loss, "
            f"{time.time() - started:.0f} s on 1 CPU thread",
            "haar_box_statistics": box_stats,
            "licence_note": "weights derived from research-only face data (CelebA: non-commercial research)",
        }
    if not args.evaluate_only:
        # Calibrated on the same people as the box statistics, never on the people the evaluation below uses.
        card["bias_correction"] = {
            "protocol": "mean offset of the uncorrected points from YuNet's on the largest face of the first image "
            "of every 10th LFW person from the 6th (the people the box statistics take their first 200 from, none "
            "of them evaluated below), turned upright and divided by the eye distance, both from the prediction; "
            "subtracted at inference",
            **measure_bias(box_fit_images, yunet_model, args.out),
        }
        card_path.write_text(json.dumps(card, indent=2) + "\n")  # evaluate() loads the detector from the card
    card["evaluation_lfw_vs_yunet"] = {
        "protocol": "first image of every 10th LFW person (sorted); NME = mean point error / YuNet inter-ocular "
        "distance on the largest YuNet face; detection rate = Haar box containing that face's landmark centre",
        **evaluate(evaluation_images, yunet_model, args.out),
    }
    photos = demo_photos(args.data)
    card["evaluation_demo_photos_vs_yunet"] = {
        "protocol": f"{len(photos)} photos that are not LFW: shared/data/demo (face_recognition, facenet_pytorch "
        "raw), scikit-image's astronaut and matplotlib's grace_hopper; every YuNet face, NME as above",
        **evaluate(photos, yunet_model, args.out, every_face=True),
    }
    print(json.dumps({key: card[key] for key in ("bias_correction", "evaluation_lfw_vs_yunet",
                                                  "evaluation_demo_photos_vs_yunet")}, indent=2))
    if not args.evaluate_only:  # a measurement alone leaves the shipped card (and the points it gives) as it is
        card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
