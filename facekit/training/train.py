"""The training loop behind `facekit train`.

One script for CPU, one GPU, or several GPUs under torchrun (DDP is switched on by the
environment torchrun sets). Crops sit in memory as one uint8 tensor - on the GPU when
there is one - and are augmented there, so the loop never waits on a data loader.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from facekit.errors import first_line, one_line
from facekit.export import beside
from facekit.model import ModelConfig, build_model
from facekit.training.data import (
    CropSet,
    PKSampler,
    RandomSampler,
    augment,
    load_crops,
    load_teacher,
    to_model_input,
)
from facekit.training.losses import CombinedMarginLoss, DistillationLoss, relational_distillation_loss, triplet_loss
from facekit.training.widen import widen


@dataclass
class TrainConfig:
    data: str
    output: str = "runs/facekit"
    width: float = 0.25
    blocks: tuple[int, int, int] = (5, 10, 5)
    embedding_size: int = 512
    batch_size: int = 128
    minutes: float | None = None
    epochs: float = 10.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.03
    arcface_weight: float = 1.0
    arcface_s: float = 32.0
    arcface_m: float = 0.3  # additive angular margin (m2)
    cosface_m: float = 0.0  # additive cosine margin (m3); set with arcface_m=0 for CosFace
    margin_warmup_fraction: float = 0.1
    triplet_weight: float = 0.0
    triplet_margin: float = 0.2
    triplet_mining: str = "batch_hard"
    pk_k: int = 4
    teacher: str | None = None  # .npy of teacher embeddings, row i for crop i; may be partial (load_teacher)
    distill_weight: float = 0.0
    relation_weight: float = 0.0  # relational_distillation_loss, on the same teacher file
    relation_closest: float = 1.0  # the fraction of a batch's pairs (the teacher's closest) it compares
    min_per_class: int = 2
    limit_classes: int | None = None
    cache_dir: str | None = None
    val_pairs: str | None = None
    val_root: str | None = None
    eval_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 20
    compile: bool = False
    bf16: bool = False  # bf16 autocast on the CPU too (always on a GPU); pays where the CPU has native bf16
    seed: int = 0
    resume: bool = True
    init_from: str | None = None  # a checkpoint.pt or released .safetensors to fine-tune, with a fresh schedule
    average_from: float | None = None  # ship the mean of the weights after each step from this fraction on
    device: str | None = None


# The settings a run may be resumed under with other values: they change neither its weights nor its batches (where
# and how fast it runs, what it evaluates and logs). The budget may change too, to take a finished run further.
RESUMABLE_UNDER_OTHER = ("output", "resume", "device", "compile", "cache_dir", "val_pairs", "val_root", "eval_every",
                         "checkpoint_every", "log_every", "minutes", "epochs")
LOG_COLUMNS = ["step", "elapsed_s", "lr", "loss", "arcface", "triplet", "distill", "images_per_s", "val_accuracy",
               "relation"]


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM once the step in hand was done and checkpointed; str() says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # as a shell reports a process ended by the signal


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM (kill, timeout, torchrun passing its own on) noted in the list yielded, for the loop to stop
    after the step in hand, which it then checkpoints: killed mid-step, a run lost every step since its last periodic
    checkpoint. A second signal ends the process at once (exit status 128 + its number, with no checkpoint), for a
    step that never ends (a DDP peer gone). A thread counts them: Python runs a handler only between its own
    instructions, never while torch waits in C++, where such a step waits. The handlers before are put back after;
    outside the main thread, which alone may set them, nothing changes."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    stops = (signal.SIGINT, signal.SIGTERM)

    def note(signum: int, _frame: object) -> None:
        if not requested:
            requested.append(signum)

    # Python's own C handler writes the number of every signal it catches here, whatever the main thread is doing.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def end_at_the_second() -> None:
        seen = 0
        while received := os.read(read_end, 1):
            if received[0] in stops:
                seen += 1
            if seen == 2:
                os._exit(128 + received[0])

    counter = threading.Thread(target=end_at_the_second, name="facekit-second-signal", daemon=True)
    counter.start()
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, note) for signum in stops}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)  # the thread reads the end of the pipe, and returns
        counter.join()
        os.close(read_end)


def _stop_signal(requested: list[int], device: torch.device, world: int) -> int:
    """The signal that asked the run to stop, 0 if none; under DDP the highest any process got, so that all stop at
    the same step (the checkpoint gathers from every process): a collective there, called by all at the same step."""
    mine = requested[0] if requested else 0
    if world == 1:
        return mine
    shared = torch.tensor(mine, device=device)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    return int(shared.item())


def _distributed(device: torch.device) -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        # By the training device, not by whether a GPU is there: NCCL cannot reduce CPU tensors (--device cpu).
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _average_head_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """DDP averages the trunk's gradients; the class centres and the distillation projection sit outside
    it, so without this each process would train its own copy of them."""
    for param in params:
        if param.grad is None:  # e.g. no crop of this process's batch had a teacher target
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad.div_(world)


def _gather_rng_states(sampler: PKSampler | RandomSampler, device: torch.device, world: int) -> list[dict] | None:
    """Every process's sampler and generator states in rank order, for rank 0 to checkpoint (None elsewhere):
    each process draws its own share of every batch and its own augmentations. Under DDP every process must
    call it at the same step."""
    mine = {"sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda_rng"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return [mine]
    states = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(mine, states, dst=0)
    return states


def _saved_rng_state(checkpoint: dict, rank: int, world: int) -> dict | None:
    """This process's states in a checkpoint (_gather_rng_states); None where it holds none for it: one written by
    another number of processes, whose batches were shared out otherwise, or an older one written under DDP."""
    states = checkpoint.get("rng")
    if states is None and world == 1 and "sampler" in checkpoint:
        states = [checkpoint]  # before the list, a single process's states were kept at the top
    return states[rank] if states is not None and len(states) == world else None


def _replicas_agree(modules: list[torch.nn.Module], device: torch.device) -> bool:
    """Whether every process ends with the same weights: a cheap end-of-run check that DDP did its job."""
    norms = torch.stack([p.detach().double().square().sum() for m in modules for p in m.parameters()]).to(device)
    lowest, highest = norms.clone(), norms.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    return bool(torch.allclose(lowest, highest, rtol=1e-9, atol=0.0))


def _compile_before_the_clock(forward: Callable[..., torch.Tensor], model: torch.nn.Module,
                              optimizer: torch.optim.Optimizer, batch_rows: int, device: torch.device,
                              use_bf16: bool) -> None:
    """One forward and backward pass of a batch of zeros through the compiled model, which leaves the weights,
    batch-norm statistics, gradients and random generators as they were.

    torch.compile compiles on the first call, for minutes on a large trunk. In the first step that time counted
    against --minutes, and as the step's share of the budget, which sets its rate, it took the first step past the
    warm-up to the full rate. Timing the first step and leaving it out of the budget would leave that step no
    share to be set from; compiling before the clock starts lets the first step take its own.
    """
    buffers = [buffer.clone() for buffer in model.buffers()]  # batch norm's running statistics
    rng = torch.get_rng_state()  # dropout draws from it
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    # The input the loop gives it, so that the compiled graph's checks of shape, layout and autocast pass there.
    x = torch.zeros(batch_rows, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        raw = forward(x, normalize=False)
    raw.float().sum().backward()  # the backward graph is compiled on its first call too
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 itself; torch says so only through private helpers, so a torch without
    them counts as yes, and the warning it guards stays silent."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [check for check in checks if check is not None]
    return not checks or any(check() for check in checks)


def _lr_at(progress: float, config: TrainConfig, step_share: float) -> float:
    """The rate of the step that starts at progress and takes step_share of the run. Warm-up follows the progress
    at the step's end, so step k of W runs at (k + 1) / W of the rate: the first step, at 0, would learn nothing."""
    if progress < config.warmup_fraction:
        return config.lr * min(1.0, (progress + step_share) / config.warmup_fraction)
    rest = (progress - config.warmup_fraction) / max(1e-8, 1.0 - config.warmup_fraction)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(rest, 1.0)))


def _aligned_crop(path: str) -> Path | None:
    """The crop of an image a pair list names, as tools/align_dataset.py writes it (.png or .jpg); None if absent."""
    return next((crop for crop in (Path(path).with_suffix(s) for s in (".png", ".jpg")) if crop.exists()), None)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image's header, without decoding it; None where it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        return None


class VerificationCallback:
    """Every N steps: 10-fold accuracy on a pair list of already-aligned crops (e.g. LFW)."""

    def __init__(self, pairs_file: str, crop_root: str, device: torch.device) -> None:
        from facekit.evaluation import read_lfw_pairs

        self.pairs = read_lfw_pairs(pairs_file, crop_root)
        paths = sorted({p for pair in self.pairs for p in (pair.path1, pair.path2)})
        self.index: dict[str, int] = {}
        crops = []
        for path in paths:
            found = _aligned_crop(path)
            if found is None:
                continue
            # Crops written by tools/align_dataset.py: our own files, so plain OpenCV decoding suffices.
            image = cv2.imread(str(found), cv2.IMREAD_COLOR)
            if image is None or image.shape[:2] != (112, 112):
                continue
            self.index[path] = len(crops)
            crops.append(np.ascontiguousarray(image[:, :, ::-1]))
        self.crops = torch.from_numpy(np.stack(crops)) if crops else torch.empty(0, 112, 112, 3, dtype=torch.uint8)
        self.device = device
        # Each counts as an error at every evaluation, which lowers the accuracy logged without a word.
        self.pairs_without_crops = sum(p.path1 not in self.index or p.path2 not in self.index for p in self.pairs)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict:
        from facekit.evaluation import verification_metrics

        was_training = model.training
        model.eval()
        embeddings = []
        for start in range(0, len(self.crops), 256):
            x = to_model_input(self.crops[start:start + 256].to(self.device))
            x = x.contiguous(memory_format=torch.channels_last)
            embeddings.append(torch.nn.functional.normalize(model(x) + model(x.flip(3))).float().cpu())
        table = torch.cat(embeddings).numpy() if embeddings else np.zeros((0, 1), np.float32)
        # A pair without both crops is an error, as a pair without a face is in `facekit eval`; scored as -1 it
        # took part in choosing the threshold and could count as a correct rejection.
        missing = np.array([p.path1 not in self.index or p.path2 not in self.index for p in self.pairs])
        scores = np.array([0.0 if gone else float(table[self.index[p.path1]] @ table[self.index[p.path2]])
                           for p, gone in zip(self.pairs, missing)])
        same = np.array([p.same for p in self.pairs])
        folds = np.array([p.fold for p in self.pairs])
        model.train(was_training)
        result = verification_metrics(scores, same, folds, failed=missing)
        result["missing_crops"] = int(missing.sum())
        return result


def save_weights(model: torch.nn.Module, config: ModelConfig, path: Path, card: dict, half: bool = False) -> None:
    """Write <path>.safetensors and its model card <path>.json.

    half: store the convolution and linear weights as float16, which halves the file; biases and batch-norm
    statistics stay float32 (running variances can be too small for float16). Loading casts them back,
    so the model still computes in float32, on weights rounded once, here.
    """
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() and v.dim() > 1 else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written here, not by save_file, which made the file 0600: a new file gets the mode the umask gives, as the
    # card and the rest of a run or release folder do; renamed into place, so a reader never sees half of it.
    weights_file = beside(path, ".safetensors")
    partial = weights_file.with_name(f".{weights_file.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(save(state, metadata={"format": "pt"}))
        os.replace(partial, weights_file)
    finally:
        partial.unlink(missing_ok=True)
    card = {"architecture": "inception_resnet_v2", "model": config.to_dict(), **card,
            "weights_dtype": "float16" if half else "float32"}
    beside(path, ".json").write_text(json.dumps(card, indent=2) + "\n")


def shipped_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The weights a run's checkpoint ships: the mean kept by --average-from once it holds a step, else the
    last step's."""
    averaged = checkpoint.get("averaged")
    if averaged is None or int(averaged["n_averaged"]) == 0:
        return checkpoint["model"]
    return {name.removeprefix("module."): value for name, value in averaged.items() if name != "n_averaged"}


def _read_checkpoint(path: str | Path, device: torch.device) -> dict:
    """A training checkpoint, read as data only (weights_only: never code); unreadable is a ValueError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # the unpickler fails on other files in many ways (a text file: KeyError: 101)
        # The reason is kept where it says one (no permission; out of memory on the device, which a good file
        # meets too), not the unpickler's bare key.
        if isinstance(exc, OSError) and exc.strerror:
            why = f": {exc.strerror}"
        elif isinstance(exc, RuntimeError):
            why = f": {one_line(exc).split('. ')[0]}"  # torch's own first sentence; the rest is advice
        else:
            why = ""
        raise ValueError(f"cannot read checkpoint {path} (truncated, or not one?){why}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a training checkpoint (a run's checkpoint.pt; it holds no model weights)")
    return state


@contextlib.contextmanager
def _fits(path: str | Path, remedy: str) -> Iterator[None]:
    """load_state_dict's size mismatches as one ValueError naming the file, for a one-line CLI error."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} does not fit this run (another width, embedding size or set of identities?): "
                         f"{_first_mismatch(exc)}; {remedy}") from exc


def _first_mismatch(error: BaseException) -> str:
    """The first of the mismatches load_state_dict lists below its summary line (\"Error(s) in loading state_dict
    for InceptionResNetV2:\"), which names none; of a list of keys, the first key."""
    details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    if not details:
        return first_line(error)
    kind, _, keys = details[0].rstrip(".").partition(": ")
    if keys.startswith('"'):  # Missing key(s) in state_dict: "a", "b", ...
        first, _, more = keys.partition(", ")
        return f"{kind}: {first}{', ...' if more else ''}"
    return details[0].rstrip(".")


def _open_log(path: Path, resumed_step: int):
    """log.csv for appending: rows after the step a run resumes from (written before it was killed) are
    dropped, and a run that starts afresh starts a new log."""
    kept: list[str] = []
    if resumed_step and path.exists():
        with open(path, newline="") as handle:
            lines = handle.read().splitlines()
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0] or 0) <= resumed_step]
    # The rows kept end as the csv module ends the new ones (\r\n): read as text, they came back with \n.
    with open(path, "w", newline="") as handle:
        handle.writelines(line + "\r\n" for line in kept)
    return open(path, "a", newline="")


def _load_released_weights(model: torch.nn.Module, path: str, config: ModelConfig) -> None:
    from facekit.representation import load_model

    released, _ = load_model(path)
    # widen assigns by index, and CUDA takes no values from the CPU there: the model may already be on the GPU.
    released = released.to(next(model.parameters()).device)
    if released.config == config:
        model.load_state_dict(released.state_dict())
    elif released.config == replace(config, width=released.config.width) \
            and released.config.width < config.width:
        widen(released, model)  # a wider run starts out computing the released model's embedding
    else:
        raise ValueError(f"{path} is a {released.config} model; train with the same --blocks and --embedding-size "
                         "and the same or a larger --width to start from it")


@torch.no_grad()
def class_mean_embeddings(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Each class's L2-normalised mean embedding of its (unaugmented) crops."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(num_classes, model.config.embedding_size, device=device)
    for start in tqdm(range(0, len(images), batch_size), desc="class centres", unit="batch"):
        x = to_model_input(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        sums.index_add_(0, labels[start:start + batch_size].to(device), model(x).float())
    model.train(was_training)
    return torch.nn.functional.normalize(sums)


def imprinted_centres(model: torch.nn.Module, weights: str, crops: CropSet, images: torch.Tensor,
                      labels: torch.Tensor, device: torch.device, use_bf16: bool,
                      cache_dir: str | None) -> torch.Tensor:
    """class_mean_embeddings for a model just loaded from released weights, kept under cache_dir.

    The pass over the whole pool takes about 19 minutes in float32 on a 2-core CPU, and a series of
    fine-tunes usually starts from the same release: the cache is keyed by the weights file's hash, the
    architecture, the pool and the precision, so any change to them computes the centres again.
    """
    from facekit.export import model_fingerprint

    cache = None
    if cache_dir:
        parts = f"{model_fingerprint(weights)}|{model.config}|{crops.key}|{len(images)}|{use_bf16}"
        cache = Path(cache_dir) / f"centres-{hashlib.sha256(parts.encode()).hexdigest()[:16]}.npy"
        try:
            cached = np.load(cache)  # allow_pickle stays False: the file is data only
        except (OSError, ValueError):  # absent or unreadable: computed again and rewritten
            cached = None
        if cached is not None and cached.shape == (crops.num_classes, model.config.embedding_size):
            return torch.from_numpy(cached).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        centres = class_mean_embeddings(model, images, labels, crops.num_classes, device)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial.npy")  # DDP ranks may write it at once
        np.save(partial, centres.cpu().numpy())
        partial.replace(cache)  # a run killed while writing leaves no half-written cache behind
    return centres


def earlier_stages(init_from: str | None) -> list[dict]:
    """The training records of the runs a fine-tune descends from, oldest first, so its card tells all."""
    if not init_from:
        return []
    card_path = Path(init_from).with_suffix(".json") if init_from.endswith(".safetensors") \
        else Path(init_from).parent / "model.json"
    if not card_path.exists():
        return [{"init_from": init_from, "record": "missing"}]
    training = dict(json.loads(card_path.read_text()).get("training", {}))
    # A card's own list was written when its stage was trained. The chain of init_from paths is followed
    # only for cards that predate the list: a path such as the released weights may since hold a later
    # stage, whose history would then be counted twice.
    earlier = training.pop("stages_before", None) or earlier_stages(training.get("init_from"))
    return [*earlier, training]


def _check_config(config: TrainConfig) -> None:
    """Settings that would fail deep inside the run, or train nothing and end as if all went well, refused before
    anything is read or written. NaN fails every comparison, so it is refused with the rest."""
    if not 0.0 < config.relation_closest <= 1.0:
        raise ValueError(f"--relation-closest takes a fraction of the pairs in (0, 1], not {config.relation_closest}")
    if config.average_from is not None and not 0.0 <= config.average_from < 1.0:
        raise ValueError(f"--average-from takes a fraction of the run in [0, 1), not {config.average_from}")
    budget = ("--minutes", config.minutes) if config.minutes is not None else ("--epochs", config.epochs)
    above_zero = dict([budget, ("--width", config.width), ("--arcface-s", config.arcface_s)])
    zero_or_more = {"--lr": config.lr, "--weight-decay": config.weight_decay, "--arcface-weight": config.arcface_weight,
                    "--arcface-m": config.arcface_m, "--cosface-m": config.cosface_m,
                    "--triplet-weight": config.triplet_weight, "--triplet-margin": config.triplet_margin,
                    "--distill-weight": config.distill_weight, "--relation-weight": config.relation_weight}
    one_or_more = {"--embedding-size": config.embedding_size, "--batch-size": config.batch_size,
                   "--eval-every": config.eval_every, "log_every": config.log_every,
                   "checkpoint_every": config.checkpoint_every}
    if config.limit_classes is not None:
        one_or_more["--limit-classes"] = config.limit_classes
    checks = [(option, value, value > 0, "above 0") for option, value in above_zero.items()]
    checks += [(option, value, value >= 0, "0 or more") for option, value in zero_or_more.items()]
    checks += [(option, value, value >= 1, "1 or more") for option, value in one_or_more.items()]
    for option, value, in_range, words in checks:
        if not (math.isfinite(value) and in_range):
            raise ValueError(f"{option} must be {words}{'' if math.isfinite(value) else ' and finite'}, not {value}")
    if len(config.blocks) != 3 or min(config.blocks) < 0:
        raise ValueError(f"--blocks takes three counts of 0 or more, e.g. 5,10,5, not {config.blocks}")
    if config.teacher and not (config.distill_weight > 0 or config.relation_weight > 0):
        raise ValueError("--teacher is read only for --distill-weight or --relation-weight, and both are 0: give one "
                         "of them (e.g. --distill-weight 10), or leave --teacher out")
    if not config.teacher and (config.distill_weight > 0 or config.relation_weight > 0):
        option = "--distill-weight" if config.distill_weight > 0 else "--relation-weight"
        raise ValueError(f"{option} needs --teacher, the teacher embeddings .npy (tools/teacher_embeddings.py)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.triplet_weight > 0 and config.batch_size // world < config.pk_k:
        # Each process's share of a batch is whole identities of pk_k crops each (PKSampler).
        processes = f" shared by {world} processes" if world > 1 else ""
        raise ValueError(f"--triplet-weight draws batches of identities, {config.pk_k} crops of each: --batch-size "
                         f"{config.batch_size}{processes} holds none; raise it to {config.pk_k * world} or more")
    if bool(config.val_pairs) != bool(config.val_root):
        raise ValueError("--val-pairs needs --val-root, the folder of aligned crops its pairs name "
                         "(tools/align_dataset.py)" if config.val_pairs else
                         "--val-root needs --val-pairs, the LFW-style pairs.txt to evaluate on")
    if not (config.arcface_weight > 0 or config.triplet_weight > 0
            or config.teacher and (config.distill_weight > 0 or config.relation_weight > 0)):
        raise ValueError("no loss to train: --arcface-weight and --triplet-weight are 0, and no --teacher with "
                         "--distill-weight or --relation-weight above 0")


def _check_validation_crops(config: TrainConfig) -> None:
    """--val-root must hold both crops of a pair at least: else the first evaluation, at step --eval-every (1000 by
    default), ended the run. A pair with one missing counts as an error there, as in `facekit eval`."""
    if not config.val_pairs:
        return
    from facekit.evaluation import read_lfw_pairs

    pairs = read_lfw_pairs(config.val_pairs, config.val_root)
    crops = {path: _aligned_crop(path) for pair in pairs for path in (pair.path1, pair.path2)}
    sizes = {path: _image_size(crop) for path, crop in crops.items() if crop is not None}
    # The in-training check reads 112x112 crops alone: raw photos (LFW's 250x250) were all left out, and the first
    # evaluation stopped the run with "no pair of the 6000 has a face found in both images".
    usable = {path for path, size in sizes.items() if size == (112, 112)}
    if not any(pair.path1 in usable and pair.path2 in usable for pair in pairs):
        other = [(crops[path], size) for path, size in sizes.items() if size is not None and size != (112, 112)]
        if other:
            example, (width, height) = other[0]
            raise ValueError(f"--val-root {config.val_root}: {len(other)} of the {len(crops)} images that "
                             f"{config.val_pairs} names are not aligned 112x112 crops (such as {example}, "
                             f"{width}x{height}): give the folder tools/align_dataset.py wrote their crops to")
        example = Path(pairs[0].path1).with_suffix(".png")
        raise ValueError(f"--val-root {config.val_root} holds no pair of the {len(pairs)} that {config.val_pairs} "
                         f"names (no {example}, say): give the folder tools/align_dataset.py wrote their crops to")


def _check_output_folder(output: Path) -> None:
    """--output is new, empty, or a facekit run's (its checkpoint, or its log alone where the run stopped before its
    first checkpoint): into a folder of one's own files, or a release's, a run wrote its log.csv, model.json and
    model.safetensors over theirs."""
    if not output.exists():
        return
    if not output.is_dir():
        raise ValueError(f"--output {output} is a file: give a folder for the run (new, or empty)")
    # Hidden files (.DS_Store, a .gitignore) are no one's work the run would write over.
    entries = sorted(entry.name for entry in output.iterdir() if not entry.name.startswith("."))
    if not entries or "checkpoint.pt" in entries:
        return
    log = output / "log.csv"
    if set(entries) <= {"log.csv", "checkpoint.tmp"} and log.is_file():
        with open(log, newline="", errors="replace") as handle:
            if handle.readline().rstrip("\r\n") == ",".join(LOG_COLUMNS):
                return
    named = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise ValueError(f"--output {output} holds files that are not a facekit run's ({named}; no checkpoint.pt), which "
                     "the run would write over: give a new or empty folder")


def _training_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device takes cpu, cuda or cuda:N, not {name}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} found)")
    return device


def _budget(config: TrainConfig) -> dict:
    """The length of the schedule as a card records it: --minutes, or --epochs where no --minutes was given (the
    other None: a --minutes run recorded the default 10 epochs it never ran)."""
    return {"budget_minutes": config.minutes, "epochs": None if config.minutes is not None else config.epochs}


def _with_budget(config: TrainConfig, budget: dict) -> TrainConfig:
    return replace(config, minutes=budget["budget_minutes"],
                   epochs=config.epochs if budget["epochs"] is None else budget["epochs"])


def _shown(budget: dict) -> str:
    return (f"--minutes {budget['budget_minutes']:g}" if budget["budget_minutes"] is not None
            else f"--epochs {budget['epochs']:g}")


def _run_settings(config: TrainConfig) -> dict:
    """What a checkpoint keeps of the settings that made it, for _check_same_run; paths resolved, so that a run
    resumed from another folder with the same files is the same run."""
    settings = {name: value for name, value in asdict(config).items() if name not in RESUMABLE_UNDER_OTHER}
    for name in ("data", "teacher", "init_from"):
        if settings[name]:
            settings[name] = str(Path(settings[name]).resolve())
    return settings


def _check_same_run(path: Path, checkpoint: dict, config: TrainConfig) -> None:
    """A run resumes only under the settings that made its checkpoint: resumed under others, it went on (or, when
    finished, trained nothing) and wrote them on a card for weights they did not make, and an --init-from given
    then was never loaded. A checkpoint from before they were kept holds none to compare, and its own --init-from
    cannot be told from a new one: with one given it is refused."""
    here, there = _run_settings(config), checkpoint.get("settings")
    if there is None:
        if config.init_from:
            raise ValueError(f"{path} predates the settings a checkpoint keeps, so whether its run started from "
                             f"--init-from {config.init_from} cannot be told: leave --init-from out to resume it (a "
                             "resumed run does not read it), or give another --output for a new run")
        return
    differing = [name for name in here if name in there and there[name] != here[name]]
    if not differing:
        return

    def shown(value: object) -> str:
        if value is None:
            return "unset"
        return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    options = "; ".join(f"{'DATA' if name == 'data' else '--' + name.replace('_', '-')} {shown(there[name])} there, "
                        f"{shown(here[name])} here" for name in differing)
    raise ValueError(f"{path} does not fit this run (settings differ: {options}): give the same to resume it, or "
                     "another --output for a new run (--no-resume starts afresh in this one)")


def _teacher_targets(config: TrainConfig, num_crops: int,
                     device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
    """The teacher's centred targets for DistillationLoss and its raw ones for the relational loss, each None where
    its loss is off, and the number of crops with a target (None where no teacher is loaded)."""
    if not (config.teacher and (config.distill_weight > 0 or config.relation_weight > 0)):
        return None, None, None
    centred, raw = load_teacher(config.teacher, num_crops, config)
    teacher = centred.to(device) if config.distill_weight > 0 else None
    teacher_raw = raw.to(device) if config.relation_weight > 0 else None
    loaded = teacher if teacher is not None else teacher_raw
    return teacher, teacher_raw, int(torch.isfinite(loaded[:, 0]).sum())


def _init_from(config: TrainConfig, model: torch.nn.Module, margin_loss: CombinedMarginLoss, crops: CropSet,
               images: torch.Tensor, labels: torch.Tensor, device: torch.device, use_bf16: bool) -> None:
    """Weights and class centres from --init-from only: the new run gets its own schedule, steps and clock."""
    if config.init_from.endswith(".safetensors"):
        _load_released_weights(model, config.init_from, model.config)
        # A released model has no class centres: each identity's starts at its mean embedding, so
        # ArcFace does not begin by tearing the trained embedding apart to fit random centres.
        centres = imprinted_centres(model, config.init_from, crops, images, labels, device, use_bf16,
                                    config.cache_dir)
        margin_loss.weight.data.copy_(centres)
    else:
        state = _read_checkpoint(config.init_from, device)
        with _fits(config.init_from, "--init-from a run of the same architecture on the same identities"):
            model.load_state_dict(shipped_weights(state))  # what that run released, its mean if it kept one
            margin_loss.load_state_dict(state["margin_loss"])


def _resume(path: Path, state: dict, model: torch.nn.Module, margin_loss: CombinedMarginLoss,
            distill: DistillationLoss | None, optimizer: torch.optim.Optimizer,
            averaged: torch.optim.swa_utils.AveragedModel | None) -> tuple[int, float, dict]:
    """Loads a run's checkpoint (read from path) into its modules and optimizer; returns the step and the seconds it
    was written at, and the checkpoint itself, which holds the generator states (_saved_rng_state)."""
    with _fits(path, "--no-resume to start afresh there, or another --output"):
        model.load_state_dict(state["model"])
        margin_loss.load_state_dict(state["margin_loss"])
        if distill is not None and "distill" in state:
            distill.load_state_dict(state["distill"])
        optimizer.load_state_dict(state["optimizer"])
        if averaged is not None and "averaged" in state:
            averaged.load_state_dict(state["averaged"])
        return int(state["step"]), float(state["elapsed"]), state


class _Clock:
    """How far a run has got, from 0 to 1: through its time budget (--minutes) where it has one, else its steps."""

    def __init__(self, config: TrainConfig, num_crops: int, elapsed_before: float, device: torch.device,
                 world: int) -> None:
        self.budget_s = config.minutes * 60 if config.minutes else None
        self.total_steps = int(config.epochs * max(1, num_crops // config.batch_size))
        self.warmup_fraction = config.warmup_fraction
        self.elapsed_before, self.device, self.world = elapsed_before, device, world
        self.start = time.time()

    def elapsed(self, now: float | None = None) -> float:
        """Seconds of training, the runs this one resumes included."""
        return self.elapsed_before + (time.time() if now is None else now) - self.start

    def progress(self, step: int) -> float:
        if not self.budget_s:
            return min(1.0, step / max(1, self.total_steps))
        elapsed = self.elapsed()
        if self.world > 1:
            # Every process must stop at the same step (a lone extra step waits forever for its peers)
            # and use the same learning rate, so all follow rank 0's clock.
            shared = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
            dist.broadcast(shared, 0)
            elapsed = float(shared.item())
        return min(1.0, elapsed / self.budget_s)

    def step_share(self, step: int, fraction: float) -> float:
        """The share of the run the step that started at fraction takes, for _lr_at's warm-up. Under a time budget
        it is known once the step is computed (so the rate is set just before the update), and asked for in warm-up
        alone: progress() is a collective under DDP, and every process is in warm-up at the same steps."""
        if not self.budget_s:
            return 1.0 / max(1, self.total_steps)
        return self.progress(step) - fraction if fraction < self.warmup_fraction else 0.0


def _batch_losses(config: TrainConfig, raw: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                  margin_scale: float, margin_loss: CombinedMarginLoss, distill: DistillationLoss | None,
                  teacher: torch.Tensor | None, teacher_raw: torch.Tensor | None,
                  every_crop_has_a_target: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each loss on a batch's float32 embeddings (before normalisation), 0 where it is off, and their weighted sum.
    index: the batch's rows of the crops, and of the teacher's targets."""
    parts = {name: torch.zeros((), device=raw.device) for name in ("arcface", "triplet", "distill", "relation")}
    if config.arcface_weight > 0:
        parts["arcface"] = margin_loss(raw, labels, margin_scale)
    if config.triplet_weight > 0:
        parts["triplet"] = triplet_loss(raw, labels, config.triplet_margin, config.triplet_mining)
    if distill is not None:
        target = teacher[index.to(teacher.device)]
        known = slice(None) if every_crop_has_a_target else torch.isfinite(target[:, 0])
        if every_crop_has_a_target or known.any():
            parts["distill"] = distill(raw[known], target[known])
        else:  # a zero with a graph: distillation alone would leave the loss nothing to differentiate
            parts["distill"] = raw.sum() * 0.0
    if teacher_raw is not None:
        target = teacher_raw[index.to(teacher_raw.device)]
        known = slice(None) if every_crop_has_a_target else torch.isfinite(target[:, 0])
        parts["relation"] = relational_distillation_loss(raw[known], target[known], config.relation_closest)
    loss = (config.arcface_weight * parts["arcface"] + config.triplet_weight * parts["triplet"]
            + config.distill_weight * parts["distill"] + config.relation_weight * parts["relation"])
    return parts, loss


def train(config: TrainConfig) -> dict:
    _check_config(config)
    _check_validation_crops(config)
    device = _training_device(config.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.index is not None:
        # DDP gives each process the GPU of its LOCAL_RANK (device_ids); one index would put every process on it.
        raise ValueError(f"--device {config.device} under torchrun would put every process on one GPU: give "
                         "--device cuda, and each process takes its own")
    output = Path(config.output)
    _check_output_folder(output)
    checkpoint_path = output / "checkpoint.pt"
    # Read and checked before the crops are: a run that cannot resume is refused before minutes are spent. Onto the
    # CPU, where every process may read it: under torchrun, onto plain `cuda` it went to GPU 0 from every process
    # (which takes its own GPU only below). The modules and the optimizer copy what they load onto their devices.
    saved = (_read_checkpoint(checkpoint_path, torch.device("cpu")) if config.resume and checkpoint_path.exists()
             else None)
    if saved is not None:
        _check_same_run(checkpoint_path, saved, config)
    rank, local_rank, world = _distributed(device)
    is_main = rank == 0
    if device.type == "cuda":
        if device.index is None:  # `--device cuda` under torchrun: one GPU per process, not all on GPU 0
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    on_gpu = device.type == "cuda"
    use_bf16 = on_gpu or config.bf16
    if config.bf16 and device.type == "cpu" and is_main and not cpu_has_native_bf16():
        print("warning: --bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX) is emulated, and slower than "
              "float32 (6 times for the class centres on an AMD Zen 3); leave it off here", file=sys.stderr)
    torch.manual_seed(config.seed)  # the same initial heads in every process (DDP only copies the trunk's)

    crops = load_crops(config.data, config.cache_dir, config.min_per_class, config.limit_classes)
    if crops.undecodable and is_main:
        print(f"warning: left out {crops.undecodable} crops under {config.data} that did not decode, and "
              f"{crops.classes_dropped} identities that kept fewer than {config.min_per_class}", file=sys.stderr)
    if crops.num_classes < 2 and (config.arcface_weight > 0 or config.triplet_weight > 0):
        # One class is every crop's: ArcFace's softmax and the triplets' negatives have nothing to learn from.
        raise ValueError(f"training needs crops of 2 or more identities to tell apart; {config.data} has "
                         f"{crops.num_classes} with {config.min_per_class} or more crops")
    images = torch.from_numpy(crops.images)
    labels = torch.from_numpy(crops.labels)
    if on_gpu:
        images, labels = images.to(device), labels.to(device)
    teacher, teacher_raw, teacher_targets = _teacher_targets(config, len(images), device)
    if teacher_targets is not None and is_main:
        print(f"teacher targets for {teacher_targets} of {len(images)} crops")
    # A finished teacher run has a target for every crop (the centred table, counted where both are loaded, lacks
    # every row the raw one lacks). Then no batch needs its crops without one left out: a boolean mask, and asking
    # whether it holds any, would make the CPU wait for the GPU at every step.
    every_crop_has_a_target = teacher_targets == len(images)

    model = build_model(config.width, config.blocks, config.embedding_size).to(device)
    model = model.to(memory_format=torch.channels_last)
    margin_loss = CombinedMarginLoss(config.embedding_size, crops.num_classes, s=config.arcface_s,
                                     m2=config.arcface_m, m3=config.cosface_m).to(device)
    distill = DistillationLoss(config.embedding_size, teacher.shape[1]).to(device) if teacher is not None else None
    torch.manual_seed(config.seed + rank)  # but each its own augmentation
    params = list(model.parameters()) + list(margin_loss.parameters())
    if distill is not None:
        params += list(distill.parameters())
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    step, elapsed_before, state = 0, 0.0, {}
    if config.init_from and saved is None:
        _init_from(config, model, margin_loss, crops, images, labels, device, use_bf16)
        if is_main:
            print(f"initialised from {config.init_from}")
    # The tail of the schedule wanders around a minimum; the mean of the weights along it (stochastic weight
    # averaging) lies nearer its centre. Batch-norm statistics are averaged with the weights.
    averaged = None
    if is_main and config.average_from is not None:
        # With no averaging function given, a CUDA model takes a foreach path whose addcdiv refuses the integer
        # buffers (batch norm's num_batches_tracked); this one is the function the CPU path applies anyway.
        # On the model's device, its count of steps too: left on the CPU (device=None), reading it in each update
        # made hundreds of copies between GPU and CPU wait for the GPU's queue at every step.
        averaged = torch.optim.swa_utils.AveragedModel(model, device=device, use_buffers=True,
                                                       avg_fn=torch.optim.swa_utils.get_swa_avg_fn())
    # Each budget the run was given, from the step it took over at: more --minutes or --epochs take a finished run
    # further, on a schedule that is then not the first one's (a checkpoint from before they were kept: this one).
    budgets = [{**_budget(config), "from_step": 0}]
    if saved is not None:
        step, elapsed_before, state = _resume(checkpoint_path, saved, model, margin_loss, distill, optimizer,
                                              averaged)
        budgets = state.get("budgets") or budgets
        if _Clock(config, len(images), elapsed_before, device, world).progress(step) >= 1.0:
            # Nothing to train under this budget. A finished run keeps its card: written again, it recorded this
            # budget for weights another one made.
            own = _with_budget(config, budgets[-1])
            if _Clock(own, len(images), elapsed_before, device, world).progress(step) < 1.0:
                raise ValueError(f"{checkpoint_path} is at step {step}, already past the end of "
                                 f"{_shown(_budget(config))}: give the budget it was trained under "
                                 f"({_shown(budgets[-1])}) to finish it, or a larger one")
            if (output / "model.json").exists():
                if is_main:
                    print(f"{output} had already finished, at step {step} of {_shown(budgets[-1])}: nothing was "
                          "trained, and its model card is left as it was (a larger --minutes or --epochs trains it "
                          "further)", file=sys.stderr)
                if world > 1:
                    dist.destroy_process_group()
                result_file = output / "result.json"
                return json.loads(result_file.read_text()) if result_file.exists() else {"steps": step}
            config = own  # its card was never written (the process ended just before): written now, as trained
        if is_main:
            print(f"resumed from {checkpoint_path} at step {step}")
    if budgets[-1] != {**_budget(config), "from_step": budgets[-1]["from_step"]}:
        budgets.append({**_budget(config), "from_step": step})

    head_params = [p for m in (margin_loss, distill) if m is not None for p in m.parameters()]
    if world > 1:
        # DDP copies rank 0's trunk to the others; the heads outside it are copied here. Every process imprinted
        # its own class centres, and on a GPU index_add_ sums in no fixed order: they would start apart.
        for param in head_params:
            dist.broadcast(param.detach(), 0)
    trainable = model
    if world > 1:
        trainable = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if on_gpu else None)
    forward = torch.compile(trainable) if config.compile else trainable

    per_rank_batch = config.batch_size // world
    use_pk = config.triplet_weight > 0
    sampler = (PKSampler(crops.labels, per_rank_batch // config.pk_k, config.pk_k, seed=config.seed + rank + step)
               if use_pk else RandomSampler(len(images), per_rank_batch, seed=config.seed + rank + step))
    saved_rng = _saved_rng_state(state, rank, world) if step else None
    saved = state = None  # loaded: the checkpoint's copy of the weights is not kept for the whole run
    if saved_rng is not None:
        # The batches and augmentations an uninterrupted run would have drawn next, in every process. (Where the
        # checkpoint has no states for this process, it re-seeds from the step instead.)
        sampler.load_state_dict(saved_rng["sampler"])
        torch.set_rng_state(saved_rng["torch_rng"])
        if on_gpu and "cuda_rng" in saved_rng:
            torch.cuda.set_rng_state(saved_rng["cuda_rng"], device)
    callback = (VerificationCallback(config.val_pairs, config.val_root, device)
                if is_main and config.val_pairs and config.val_root else None)
    if callback is not None and callback.pairs_without_crops:
        print(f"warning: {callback.pairs_without_crops} of the {len(callback.pairs)} pairs of {config.val_pairs} lack "
              f"a 112x112 crop under {config.val_root}, and count as errors: the val accuracy is lower for them "
              "(result.json's val.missing_crops)", file=sys.stderr)

    # Whether every step's loss so far was finite. It stays on the device, and is read only on log and checkpoint
    # steps: reading it back waits for the device's queue.
    finite = torch.ones((), dtype=torch.bool, device=device)

    def stop_if_diverged(weights_too: bool) -> None:
        """A run whose loss, or weights, turned NaN or infinite stops before they are logged or saved, so the
        checkpoint keeps its last good step and no released weights are written."""
        ok = finite
        if weights_too:
            kept = [value for module in (model, margin_loss, distill, averaged) if module is not None
                    for value in module.state_dict().values() if value.is_floating_point()]
            ok = ok & torch.stack([torch.isfinite(value).all() for value in kept]).all()
        if not bool(ok):
            left = f"; {checkpoint_path} is left as it was" if checkpoint_path.exists() else ""
            bar.close()  # else its last frame is redrawn when the process exits, after the error line
            raise ValueError(f"training diverged by step {step}: the loss or the weights are NaN or infinite "
                             f"(--lr too high?), and the run stopped before saving them{left}")

    def save_checkpoint() -> None:
        """Called by every process, whose generator states it gathers; rank 0 writes the file."""
        stop_if_diverged(weights_too=True)
        rng_states = _gather_rng_states(sampler, device, world)
        if not is_main:
            return
        state = {"model": model.state_dict(), "margin_loss": margin_loss.state_dict(),
                 "optimizer": optimizer.state_dict(), "step": step, "elapsed": clock.elapsed()}
        if distill is not None:
            state["distill"] = distill.state_dict()
        if averaged is not None:
            state["averaged"] = averaged.state_dict()
        state["rng"] = rng_states
        state["settings"] = _run_settings(config)  # what a resume must give again (_check_same_run)
        state["budgets"] = budgets
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, checkpoint_path)

    if is_main:
        output.mkdir(parents=True, exist_ok=True)  # only now: a run that fails to start leaves no empty folder
    log_file = _open_log(output / "log.csv", step) if is_main else open(os.devnull, "w")  # rank 0 keeps the log
    log = csv.writer(log_file)
    if log_file.tell() == 0:
        log.writerow(LOG_COLUMNS)
    model.train()
    if config.compile:
        batch_rows = per_rank_batch // config.pk_k * config.pk_k if use_pk else per_rank_batch
        _compile_before_the_clock(forward, model, optimizer, batch_rows, device, use_bf16)
    clock = _Clock(config, len(images), elapsed_before, device, world)
    # Counted in thousandths of the run, shown as a percentage and times alone: a rate in them read "‰/s".
    bar = tqdm(total=1000, desc="training", bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
               disable=not is_main)
    batches = iter(sampler)
    last_log, images_since_log = time.time(), 0
    latest_val: dict = {}
    fraction = clock.progress(step)
    stopped_by = 0  # the signal that ended the run before its budget, once every process has it
    with _stop_requests() as requested:
        while fraction < 1.0:
            index = torch.from_numpy(next(batches))
            if on_gpu:  # from pinned memory the copy is queued; from pageable memory it waits for the GPU's queue
                index = index.pin_memory().to(device, non_blocking=True)
            batch_labels = labels[index].to(device)
            x = augment(to_model_input(images[index].to(device, non_blocking=True)))
            x = x.contiguous(memory_format=torch.channels_last)
            margin_scale = (min(1.0, fraction / config.margin_warmup_fraction) if config.margin_warmup_fraction
                            else 1.0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                raw = forward(x, normalize=False)
            parts, loss = _batch_losses(config, raw.float(), batch_labels, index, margin_scale, margin_loss, distill,
                                        teacher, teacher_raw, every_crop_has_a_target)
            finite &= torch.isfinite(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_head_gradients(head_params, world)
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            lr = _lr_at(fraction, config, clock.step_share(step, fraction))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            step += 1
            images_since_log += len(index) * world
            if averaged is not None and fraction >= config.average_from:
                averaged.update_parameters(model)
            fraction = clock.progress(step)
            if world == 1 or step % config.log_every == 0:  # under DDP a collective: at steps all processes share
                stopped_by = _stop_signal(requested, device, world) if fraction < 1.0 else 0
            last = fraction >= 1.0 or stopped_by != 0  # logged whatever its number: the log ends where the run does
            evaluated = is_main and step % config.eval_every == 0 and callback is not None
            # .item() waits for the GPU's queue: only as often as this. An evaluation's step has its row, which holds
            # its accuracy.
            logged = step % config.log_every == 0 or last or evaluated
            if logged:
                stop_if_diverged(weights_too=False)
            bar.n = int(fraction * 1000)
            if is_main and logged:
                bar.set_postfix(step=step, loss=f"{loss.item():.3f}", lr=f"{lr:.4f}", refresh=False)
            bar.refresh()
            if evaluated:
                latest_val = callback(model)
                tqdm.write(f"step {step}: val accuracy {latest_val['accuracy']:.4f} "
                           f"+- {latest_val['accuracy_std']:.4f}, TAR@1e-3 {latest_val['tar_at_far_1e-3']:.3f}")
            if is_main and logged:
                now = time.time()
                log.writerow([step, round(clock.elapsed(now), 1), round(lr, 6), round(loss.item(), 4),
                              round(parts["arcface"].item(), 4), round(parts["triplet"].item(), 4),
                              round(parts["distill"].item(), 4), round(images_since_log / (now - last_log), 1),
                              latest_val.get("accuracy", ""), round(parts["relation"].item(), 4)])
                log_file.flush()
                last_log, images_since_log = now, 0
            if step % config.checkpoint_every == 0 or stopped_by:
                save_checkpoint()
            if stopped_by:
                break
    bar.close()  # before any message, which its last frame would otherwise be drawn over
    result: dict = {}
    if not stopped_by:
        # "minutes" is the time trained, which tools/release_model.py adds up over stages; the card keeps the
        # --minutes budget as "budget_minutes" (None for an --epochs run, whose "epochs" a --minutes run has None).
        result = {"steps": step, "minutes": round(clock.elapsed() / 60, 1),
                  "images_seen": step * config.batch_size, "device": str(device), "world_size": world}
        if teacher_targets is not None:
            result["teacher_targets"] = teacher_targets
        if averaged is not None:
            result["steps_averaged"] = int(averaged.n_averaged)
        if world > 1:
            result["replicas_in_sync"] = _replicas_agree([m for m in (model, margin_loss, distill) if m is not None],
                                                         device)
        save_checkpoint()
        if is_main:
            shipped = averaged.module if averaged is not None and averaged.n_averaged > 0 else model
            if callback is not None:
                latest_val = callback(shipped)
                result["val"] = latest_val
            settings = asdict(config)
            del settings["minutes"]
            settings.update(_budget(config))
            if len(budgets) > 1:  # taken further: the budget it ended under above, each with the step it began at
                settings["budgets"] = budgets
            card = {"training": {**settings, **result, "num_classes": crops.num_classes,
                                 "num_images": len(images), "stages_before": earlier_stages(config.init_from)}}
            save_weights(shipped.eval(), model.config, output / "model", card)
            (output / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log_file.close()
    if world > 1:
        # The DDP wrapper goes before its process group does: left to the interpreter's final clean-up, it
        # sometimes ends a process with "terminate called without an active exception" (SIGABRT) after a
        # good run (about 1 in 10 two-process CPU runs here; none in 160 with this).
        del forward, trainable
        gc.collect()
        dist.destroy_process_group()
    if stopped_by:
        who = "Ctrl-C" if stopped_by == signal.SIGINT else signal.Signals(stopped_by).name
        raise TrainingStopped(f"stopped by {who} after step {step}, which {checkpoint_path} holds: the same command "
                              "again resumes the run from there", stopped_by)
    return result
