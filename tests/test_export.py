"""ONNX export and the ONNX Runtime backends: same embeddings as torch on real faces, int8 close to fp32."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from facekit.alignment import align_face  # noqa: E402
from facekit.cli import main  # noqa: E402
from facekit.export import (  # noqa: E402
    OUTPUT_NAME,
    cached_model_path,
    calibration_crops,
    create_session,
    model_fingerprint,
    session_weights_key,
    weights_key,
)
from facekit.model import ModelConfig, build_model  # noqa: E402
from facekit.representation import DEFAULT_MODEL, Embedder, ModelWarning  # noqa: E402

# Five landmarks (YuNet's) of the two bundled portraits, so the crops need no detector model.
ASTRONAUT_LANDMARKS = [[200.1, 101.8], [247.1, 102.6], [220.4, 124.5], [198.6, 142.8], [239.7, 143.6]]
GRACE_HOPPER_LANDMARKS = [[227.1, 193.3], [307.8, 195.4], [266.5, 240.0], [228.5, 267.9], [302.2, 269.6]]


@pytest.fixture(scope="session")
def face_crops(astronaut_bgr, grace_hopper_bgr) -> np.ndarray:
    """16 aligned crops of two real faces, each alignment nudged a little as a detector's would be."""
    rng = np.random.default_rng(0)
    crops = []
    for image, landmarks in ((astronaut_bgr, ASTRONAUT_LANDMARKS), (grace_hopper_bgr, GRACE_HOPPER_LANDMARKS)):
        for _ in range(8):
            nudged = np.float32(landmarks) + rng.normal(0, 1.5, (5, 2)).astype(np.float32)
            crops.append(align_face(image, nudged))
    return np.stack(crops)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """The shipped model where present, else a seeded random one: torch and ONNX must agree either way."""
    if DEFAULT_MODEL.with_suffix(".safetensors").is_file():
        return DEFAULT_MODEL
    import torch

    from facekit.training.train import save_weights

    torch.manual_seed(0)
    config = ModelConfig(width=0.25)
    model = build_model(width=config.width).eval()
    path = tmp_path_factory.mktemp("weights") / "facekit-irv2"
    save_weights(model, config, path, {"threshold": 0.3})
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A seeded random model of the smallest architecture: quick to export and to quantise."""
    import torch

    from facekit.training.train import save_weights

    torch.manual_seed(6)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_weights(build_model(width=0.125, blocks=(1, 1, 1)).eval(), ModelConfig(width=0.125, blocks=(1, 1, 1)), path,
                 {"threshold": 0.3})
    return path


def copy_model(weights: Path, base: Path) -> Path:
    """The weights and card at <base>.safetensors and <base>.json (the name appended: base may hold a dot)."""
    for suffix in (".safetensors", ".json"):
        Path(f"{base}{suffix}").write_bytes(Path(f"{weights}{suffix}").read_bytes())
    return base


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("facekit-cache")


@pytest.fixture(autouse=True)
def isolated_cache(cache, monkeypatch) -> None:
    monkeypatch.setenv("FACEKIT_CACHE", str(cache))
    monkeypatch.delenv("FACEKIT_INT8", raising=False)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("flip", [True, False])
def test_onnx_backend_matches_torch_on_real_faces(weights, face_crops, flip):
    torch_embedder = Embedder(weights, backend="torch")
    onnx_embedder = Embedder(weights, backend="onnx")
    assert onnx_embedder.backend == "onnx"
    assert session_weights_key(onnx_embedder._session) == weights_key(weights)  # the shipped file is current
    expected = torch_embedder.embed(face_crops, flip=flip)
    got = onnx_embedder.embed(face_crops, flip=flip)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got, expected).min() >= 0.9999
    assert onnx_embedder.dim == torch_embedder.dim and onnx_embedder.threshold == torch_embedder.threshold


def test_the_shipped_onnx_file_is_used_as_is_and_a_stale_one_is_not(weights, face_crops, cache, tmp_path):
    if weights != DEFAULT_MODEL:
        pytest.skip("no shipped weights in this checkout")
    # The shipped model needs no export: nothing is written to the cache.
    before = set(cache.iterdir())
    shipped = Embedder(DEFAULT_MODEL, backend="onnx")
    assert set(cache.iterdir()) == before and not cached_model_path(DEFAULT_MODEL).exists()
    # Beside other weights, the same file is stale (exported from different weights) and is passed over.
    import torch

    from facekit.training.train import save_weights

    torch.manual_seed(1)
    other = tmp_path / "other"
    save_weights(build_model(width=0.25).eval(), ModelConfig(width=0.25), other, {"threshold": 0.3})
    (tmp_path / "other.onnx").write_bytes(DEFAULT_MODEL.with_suffix(".onnx").read_bytes())
    assert session_weights_key(create_session(tmp_path / "other.onnx")) != weights_key(other)
    embedder = Embedder(other, backend="onnx")
    assert session_weights_key(embedder._session) == weights_key(other) and cached_model_path(other).is_file()
    expected = Embedder(other, backend="torch").embed(face_crops[:4])
    assert cosines(embedder.embed(face_crops[:4]), expected).min() >= 0.9999
    assert cosines(shipped.embed(face_crops[:4]), expected).max() < 0.9


def test_a_damaged_file_beside_the_weights_is_passed_over_and_a_damaged_model_is_one_error(
        weights, face_crops, tmp_path, capsys, astronaut_bgr):
    import torch

    from facekit.training.train import save_weights

    torch.manual_seed(2)
    model = tmp_path / "model"
    save_weights(build_model(width=0.125, blocks=(1, 1, 1)).eval(), ModelConfig(width=0.125, blocks=(1, 1, 1)), model,
                 {"threshold": 0.3})
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07 cut off")
    embedder = Embedder(model, backend="onnx")  # the cached export serves instead
    expected = Embedder(model, backend="torch").embed(face_crops[:2])
    assert cosines(embedder.embed(face_crops[:2]), expected).min() > 0.9999
    # Damaged weights, a card without the architecture, a damaged .onnx given as the model: one line, exit 2.
    photo = str(tmp_path / "a.png")
    cv2.imwrite(photo, astronaut_bgr)
    cut = tmp_path / "cut"
    cut.with_suffix(".safetensors").write_bytes(model.with_suffix(".safetensors").read_bytes()[:5000])
    cut.with_suffix(".json").write_text(model.with_suffix(".json").read_text())
    bare = tmp_path / "bare"
    bare.with_suffix(".safetensors").write_bytes(model.with_suffix(".safetensors").read_bytes())
    bare.with_suffix(".json").write_text("[]")
    for weights_option, message in ((cut, "damaged or does not match its card"), (bare, 'no "model" block'),
                                    (tmp_path / "model.onnx", "cannot read ONNX model")):
        for backend in ("torch", "onnx"):
            if backend == "torch" and str(weights_option).endswith(".onnx"):
                continue
            with pytest.raises(ValueError, match=message):
                Embedder(weights_option, backend=backend)
        code = main(["verify", photo, photo, "--weights", str(weights_option)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and message in err and err.count("\n") == 1, err


def test_a_weights_file_rewritten_in_place_is_hashed_again(tmp_path):
    import torch

    from facekit.training.train import save_weights

    config = ModelConfig(width=0.125, blocks=(1, 1, 1))
    fingerprints = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        save_weights(build_model(width=0.125, blocks=(1, 1, 1)).eval(), config, tmp_path / "model", {})
        weights_file = tmp_path / "model.safetensors"
        os.utime(weights_file, ns=(1_000_000_000, 1_000_000_000))  # same size, and the same time set back
        fingerprints.append(model_fingerprint(tmp_path / "model"))
    assert fingerprints[0] != fingerprints[1]


def test_onnx_backend_is_independent_of_batching(weights, face_crops):
    embedder = Embedder(weights, backend="onnx", batch_size=5)
    one_by_one = np.concatenate([embedder.embed(crop) for crop in face_crops[:6]])
    assert np.allclose(embedder.embed(face_crops[:6]), one_by_one, atol=1e-5)


def test_auto_picks_onnx_runtime_on_the_cpu_and_torch_without_it(weights, monkeypatch):
    assert Embedder(weights, device="cpu").backend == "onnx"
    monkeypatch.setattr("facekit.representation.onnxruntime_available", lambda: False)
    assert Embedder(weights, device="cpu").backend == "torch"
    with pytest.raises(ValueError, match="unknown embedder backend"):
        Embedder(weights, backend="tensorrt")


def test_export_cli_writes_a_loadable_model_with_a_dynamic_batch(weights, face_crops, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--weights", str(weights), "--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    model = onnx.load(str(output))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    # The .onnx file carries its model card, so it works as --weights on its own.
    from_file = Embedder(output)
    assert from_file.dim == 512 and from_file.threshold == Embedder(weights, backend="torch").threshold
    # The same weights, so a gallery filled through either one accepts the other.
    assert from_file.model_id == Embedder(weights, backend="torch").model_id == model_fingerprint(weights)
    expected = Embedder(weights, backend="torch").embed(face_crops[:3])
    assert cosines(from_file.embed(face_crops[:3]), expected).min() >= 0.9999


def test_enroll_and_identify_run_without_torch_installed(weights, cache, tmp_path, astronaut_bgr, grace_hopper_bgr):
    """torch is the `train` extra: a CLI call without it saves 1.5 s and 190 MB, and an install some GB."""
    Embedder(weights, backend="onnx")  # only weights without a shipped ONNX file need this export (and torch)
    for name, image in (("eileen", astronaut_bgr), ("grace", grace_hopper_bgr)):
        (tmp_path / "people" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "people" / name / "1.jpg"), image)
    probe = tmp_path / "probe.jpg"
    cv2.imwrite(str(probe), cv2.flip(grace_hopper_bgr, 1))
    # Packages that cannot be imported stand in for an install without the extra (sympy comes with torch).
    for missing in ("torch", "sympy"):
        (tmp_path / "no_torch" / missing).mkdir(parents=True)
        (tmp_path / "no_torch" / missing / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {missing!r}'!r}, name={missing!r})\n")
    options = f"'--gallery', {str(tmp_path / 'gallery')!r}, '--detector', 'haar', '--weights', {str(weights)!r}"
    script = ("import sys; from facekit.cli import main; "
              f"assert main(['enroll', {str(tmp_path / 'people')!r}, '--quiet', {options}]) == 0; "
              f"sys.exit(main(['identify', {str(probe)!r}, '--json', {options}]))")
    env = {**os.environ, "FACEKIT_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "no_torch"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    faces = json.loads(result.stdout.strip().splitlines()[-1])["faces"]
    assert [face["identity"] for face in faces] == ["grace"]
    if weights == DEFAULT_MODEL:  # int8 quantisation starts from the shipped ONNX file: no torch either
        script = ("import sys; from facekit.cli import main; sys.exit(main(['export', 'onnx', '--int8', "
                  f"'--calibration', {str(tmp_path / 'people')!r}, '--output', {str(tmp_path / 'int8.onnx')!r}]))")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        assert Embedder(tmp_path / "int8.onnx").model_id == model_fingerprint(weights)
        # A plain export of the shipped weights is a copy of their ONNX file, labelled with today's card.
        script = ("import sys; from facekit.cli import main; sys.exit(main(['export', 'onnx', "
                  f"'--output', {str(tmp_path / 'fp32.onnx')!r}]))")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        copied = Embedder(tmp_path / "fp32.onnx")
        assert copied.model_id == model_fingerprint(weights)
        assert copied.card == json.loads(weights.with_suffix(".json").read_text())
    # What does need torch says so in one line, and how to install it.
    script = f"import sys; from facekit.cli import main; sys.exit(main(['train', {str(tmp_path)!r}]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: facekit train needs PyTorch, which is not installed: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu (the CPU build; or, in a clone, pip install -e '.[train]')"]


def test_weights_without_their_onnx_file_say_why_identify_needs_torch(tiny, tmp_path, monkeypatch, capsys,
                                                                       grace_hopper_bgr):
    """identify asked for no export: its error says the ONNX file is missing or stale, not "exporting ... needs"."""
    photo = tmp_path / "grace.jpg"
    cv2.imwrite(str(photo), grace_hopper_bgr)
    base = copy_model(tiny, tmp_path / "other")
    monkeypatch.setenv("FACEKIT_CACHE", str(tmp_path / "cache"))  # no export of tiny made by an earlier test
    monkeypatch.setitem(sys.modules, "torch", None)  # as where torch is not installed
    hint = "needs PyTorch, which is not installed: pip install torch --index-url https://download.pytorch.org/whl/cpu"
    command = ["identify", str(photo), "--weights", f"{base}.safetensors", "--gallery", str(tmp_path / "gallery")]
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {base}.safetensors has no ONNX file beside it ({base}.onnx), and making one {hint}")
    Path(f"{base}.onnx").write_bytes(b"not a model")  # damaged, or exported from other weights: no use either way
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {base}.onnx is not an export of {base}.safetensors, and making one {hint}")


def test_int8_needs_calibration_data(weights, capsys):
    assert main(["export", "onnx", "--weights", str(weights), "--int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="facekit export onnx --int8"):
        Embedder(weights, backend="onnx-int8")


def test_int8_stays_close_to_fp32(weights, face_crops, tmp_path, monkeypatch, capsys):
    calibration = tmp_path / "crops"
    calibration.mkdir()
    for number, crop in enumerate(face_crops[::2]):
        cv2.imwrite(str(calibration / f"{number}.png"), crop)
    code = main(["export", "onnx", "--weights", str(weights), "--int8", "--calibration", str(calibration), "--cache"])
    assert code == 0 and "mean cosine" in capsys.readouterr().out
    int8_file = cached_model_path(weights, int8=True)
    # Really quantised: most convolutions take int8 weights (QDQ form); the late blocks stay fp32 by design.
    graph = onnx.load(str(int8_file)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert sum(node.input[1] in dequantized for node in convolutions) > 0.6 * len(convolutions)
    assert Embedder(int8_file).dim == 512  # the card survives quantisation
    assert Embedder(int8_file).model_id == model_fingerprint(weights)

    monkeypatch.setenv("FACEKIT_INT8", "1")
    int8 = Embedder(weights)
    assert int8.backend == "onnx-int8"
    agreement = cosines(int8.embed(face_crops), Embedder(weights, backend="torch").embed(face_crops))
    assert agreement.mean() >= 0.98 and agreement.min() >= 0.95


def test_float16_weights_halve_both_files_and_still_embed_in_float32(weights, face_crops, tmp_path):
    """A model too big for git in float32 is released with float16 weights; it must embed as before."""
    import torch
    from safetensors import safe_open

    from facekit.export import export_onnx, quantize_int8
    from facekit.representation import load_model
    from facekit.training.train import save_weights

    model, _ = load_model(weights)
    full, half = tmp_path / "full", tmp_path / "half"
    save_weights(model, model.config, full, {"threshold": 0.3})
    save_weights(model, model.config, half, {"threshold": 0.3}, half=True)
    for base in (full, half):
        export_onnx(base, base.with_suffix(".onnx"))

    def size(base: Path, suffix: str) -> int:
        return base.with_suffix(suffix).stat().st_size

    assert size(half, ".safetensors") < 0.55 * size(full, ".safetensors")
    assert size(half, ".onnx") < 0.55 * size(full, ".onnx")
    with safe_open(str(half.with_suffix(".safetensors")), "pt") as stored:
        dtypes = {name: stored.get_tensor(name).dtype for name in stored.keys()}
    assert dtypes["embedding.weight"] == torch.float16
    assert {dtypes[name] for name in dtypes if "running_var" in name or name.endswith("bias")} == {torch.float32}
    assert json.loads(half.with_suffix(".json").read_text())["weights_dtype"] == "float16"

    reference = Embedder(full, backend="torch").embed(face_crops)
    in_torch, in_onnx = Embedder(half, backend="torch"), Embedder(half, backend="onnx")
    assert next(in_torch.model.parameters()).dtype == torch.float32
    assert session_weights_key(in_onnx._session) == weights_key(half)  # the file beside it, not a fresh export
    for embedder in (in_torch, in_onnx):
        assert cosines(embedder.embed(face_crops), reference).min() >= 0.9999

    # The int8 quantiser finds a convolution's weights only as initializers, not behind a float16 cast.
    quantize_int8(half.with_suffix(".onnx"), tmp_path / "int8.onnx", face_crops)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert sum(node.input[1] in dequantized for node in convolutions) > 0.6 * len(convolutions)


def test_a_card_without_a_threshold_is_said_so(tmp_path, capsys, astronaut_bgr):
    import torch

    from facekit.training.train import save_weights

    torch.manual_seed(5)
    save_weights(build_model(width=0.125, blocks=(1, 1, 1)).eval(), ModelConfig(width=0.125, blocks=(1, 1, 1)),
                 tmp_path / "run", {})  # a training run's card: no calibrated thresholds yet
    photo = str(tmp_path / "a.png")
    cv2.imwrite(photo, astronaut_bgr)
    code = main(["verify", photo, photo, "--weights", str(tmp_path / "run"), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["threshold"] == 0.3
    assert "warning: the model card of" in captured.err and "no calibrated threshold" in captured.err


def test_a_version_in_the_weights_name_is_part_of_the_name(tiny, tmp_path):
    """model-1.0 is model-1.0.safetensors: with_suffix() took its ".0" for a suffix and opened model-1's files."""
    import torch

    from facekit.training.train import save_weights

    torch.manual_seed(7)
    config = ModelConfig(width=0.125, blocks=(1, 1, 1), embedding_size=128)
    save_weights(build_model(width=0.125, blocks=(1, 1, 1), embedding_size=128).eval(), config, tmp_path / "model-1",
                 {"threshold": 0.3})
    versioned = copy_model(tiny, tmp_path / "model-1.0")
    for weights in (versioned, Path(f"{versioned}.safetensors")):
        assert model_fingerprint(weights) == model_fingerprint(tiny)
        for backend in ("torch", "onnx"):
            assert Embedder(weights, backend=backend).dim == 512


def test_an_onnx_file_of_another_model_is_refused_by_name(tmp_path):
    from onnx import TensorProto, helper

    def save(name: str, node, input_shape: list, output_shape: list) -> Path:
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT,
                                                                               input_shape)],
                                  [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, output_shape)])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    # Another input (it failed at the first embed()), and the right input with 3 numbers per face, not 512 (they
    # came out as 3-number "embeddings").
    for path in (save("vector", helper.make_node("Identity", ["x"], ["y"]), [None, 10], [None, 10]),
                 save("means", helper.make_node("ReduceMean", ["input"], ["embedding"], axes=[2, 3], keepdims=0),
                      [None, 3, 112, 112], [None, 3])):
        with pytest.raises(ValueError, match=f"{re.escape(str(path))} is not a facekit embedder"):
            Embedder(path)


def test_a_cache_that_cannot_be_written_falls_back_to_torch_or_says_where_it_is(tiny, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    monkeypatch.setenv("FACEKIT_CACHE", str(not_a_folder))
    with pytest.warns(ModelWarning, match=f"cannot write facekit's ONNX cache .*: {re.escape(str(not_a_folder))}; "):
        assert Embedder(tiny, device="cpu").backend == "torch"
    with pytest.raises(OSError, match="FACEKIT_CACHE sets another") as raised:
        Embedder(tiny, backend="onnx")
    assert raised.value.filename == str(not_a_folder)
    # A full disk, likewise.
    monkeypatch.setenv("FACEKIT_CACHE", str(tmp_path / "full"))

    def full(*_args) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("facekit.export.export_onnx", full)
    with pytest.warns(ModelWarning, match="No space left on device"):
        assert Embedder(tiny, device="cpu").backend == "torch"


def test_export_does_not_overwrite_the_model_it_is_made_from(tiny, face_crops, tmp_path, capsys):
    model = copy_model(tiny, tmp_path / "model")
    beside = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--weights", str(model), "--output", str(beside)]) == 0
    originals = {path: path.read_bytes() for path in tmp_path.iterdir()}
    (tmp_path / "crops").mkdir()
    cv2.imwrite(str(tmp_path / "crops" / "0.png"), face_crops[0])
    # An int8 model in the fp32 file's place ran as fp32, labelled as exported from these weights; the agreement
    # printed was the int8 model's with itself (1.0000).
    for output, int8 in ((beside, ["--int8", "--calibration", str(tmp_path / "crops")]),
                         (tmp_path / "model.safetensors", [])):
        assert main(["export", "onnx", "--weights", str(model), "--output", str(output), *int8]) == 2
        assert "would overwrite the model it is made from" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in originals} == originals


def test_export_errors_name_the_file_or_folder_asked_for(tiny, tmp_path, capsys, monkeypatch):
    """They named a temporary file: one gone by the time the error was read, or one that was never made."""
    assert main(["export", "onnx", "--weights", str(tiny), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: Is a directory: {tmp_path}\n"

    def forbidden(*_args, dir: str, prefix: str, suffix: str) -> None:  # a folder this user may not write in
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, f"{prefix}1234{suffix}"))

    monkeypatch.setattr("facekit.export.tempfile.mkstemp", forbidden)
    assert main(["export", "onnx", "--weights", str(tiny), "--output", str(tmp_path / "model.onnx")]) == 2
    assert capsys.readouterr().err == f"error: Permission denied: {tmp_path}\n"


def test_a_calibration_count_below_one_is_refused(tiny, face_crops, tmp_path, capsys):
    for number, crop in enumerate(face_crops[:3]):
        cv2.imwrite(str(tmp_path / f"{number}.png"), crop)
    for count in ("0", "-1"):  # both quantised on every image found, however many
        code = main(["export", "onnx", "--weights", str(tiny), "--int8", "--calibration", str(tmp_path),
                     "--calibration-count", count, "--output", str(tmp_path / "int8.onnx")])
        assert code == 2 and "--calibration-count must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "int8.onnx").exists()


def test_calibration_reads_images_as_the_pipeline_does_and_names_a_damaged_zip(tiny, face_crops, tmp_path, capsys):
    # Float TIFF crops, which enroll reads, were skipped (OpenCV cannot read them in colour).
    for number, crop in enumerate(face_crops[:2]):
        cv2.imwrite(str(tmp_path / f"{number}.tiff"), crop.astype(np.float32) / 255)
    assert sorted(crop.tobytes() for crop in calibration_crops(tmp_path)) == sorted(c.tobytes() for c in face_crops[:2])
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")  # a traceback
    code = main(["export", "onnx", "--weights", str(tiny), "--int8", "--calibration", str(junk),
                 "--output", str(tmp_path / "int8.onnx")])
    assert code == 2 and capsys.readouterr().err == f"error: calibration data: {junk}: File is not a zip file\n"


def test_a_ctrl_c_inside_onnxruntimes_import_is_not_taken_for_a_missing_runtime(monkeypatch):
    import builtins

    from facekit import representation

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "onnxruntime":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                raise ImportError("initialization failed") from interrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        representation.onnxruntime_available()


def test_facekit_threads_sets_the_threads_of_both_backends(tiny, face_crops, monkeypatch):
    """Only FAISS honoured FACEKIT_THREADS: ONNX Runtime took a thread per core, torch its own default."""
    import torch

    torch_threads = torch.get_num_threads()
    monkeypatch.setenv("FACEKIT_THREADS", "3")
    try:
        in_onnx, in_torch = Embedder(tiny, backend="onnx"), Embedder(tiny, backend="torch")
        assert in_onnx._session.get_session_options().intra_op_num_threads == 3
        assert torch.get_num_threads() == 3
        assert cosines(in_onnx.embed(face_crops[:2]), in_torch.embed(face_crops[:2])).min() >= 0.9999
        assert Embedder(tiny, backend="onnx", threads=1)._session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(torch_threads)
    monkeypatch.setenv("FACEKIT_THREADS", "all")
    with pytest.raises(ValueError, match="^FACEKIT_THREADS must be a whole number of at least 1, not 'all'$"):
        Embedder(tiny, backend="onnx")


def test_onnx_runtime_threads_sleep_rather_than_spin_when_idle(tiny):
    """Spinning workers took the cores from FAISS and OpenCV between embeds: a 0.2 ms search took 20 ms."""
    options = Embedder(tiny, backend="onnx")._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_onnx_cache_keeps_only_the_most_recently_used_exports(tiny, face_crops, tmp_path, monkeypatch):
    """It kept an export (tens of MB) of every weights version ever used."""
    import torch

    from facekit.export import CACHE_KEEP, cached_model_path
    from facekit.training.train import save_weights

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("FACEKIT_CACHE", str(cache))
    # Exports of earlier weights, oldest first, and files the cache did not name: those are never deleted.
    earlier = [cache / f"facekit-irv2-{number:016x}.onnx" for number in range(CACHE_KEEP + 1)]
    for age, path in enumerate(earlier):
        path.write_bytes(b"an earlier export")
        os.utime(path, (1_000_000_000 + age,) * 2)
    not_the_caches = [cache / name for name in ("facekit-irv2-0000000000000000-int8.onnx", "facekit-irv2.onnx",
                                                "facekit-irv2-notahexkey000000.onnx", "notes.txt",
                                                ".facekit-irv2-0000000000000009.onnx.x1y2.tmp")]
    for path in not_the_caches:
        path.write_bytes(b"kept")

    first = Embedder(tiny, backend="onnx")  # exported now: the CACHE_KEEP - 1 most recent earlier ones stay
    current = cached_model_path(tiny)
    assert current.is_file()
    assert [path.exists() for path in earlier] == [False] * 2 + [True] * (CACHE_KEEP - 1)
    # A used export counts as recent, however old: made again by a second Embedder, it was the oldest.
    os.utime(current, (1, 1))
    Embedder(tiny, backend="onnx")
    torch.manual_seed(8)
    save_weights(build_model(width=0.125, blocks=(1, 1, 1)).eval(), ModelConfig(width=0.125, blocks=(1, 1, 1)),
                 tmp_path / "next", {"threshold": 0.3})
    Embedder(tmp_path / "next", backend="onnx")
    assert cached_model_path(tmp_path / "next").is_file() and current.is_file()
    assert [path.exists() for path in earlier] == [False] * 3 + [True] * (CACHE_KEEP - 2)
    assert all(path.read_bytes() == b"kept" for path in not_the_caches)
    # A session open on a deleted export still embeds: ONNX Runtime read the file when it opened it.
    current.unlink()
    assert first.embed(face_crops[:1]).shape == (1, 512)


def test_pruning_the_cache_passes_over_files_another_process_deletes_or_holds(tmp_path, monkeypatch):
    from facekit.export import prune_cache

    stale = [tmp_path / f"facekit-irv2-{number:016x}.onnx" for number in range(4)]
    for age, path in enumerate(stale):
        path.write_bytes(b"an earlier export")
        os.utime(path, (1_000_000_000 + age,) * 2)
    current = tmp_path / "facekit-irv2-ffffffffffffffff.onnx"
    current.write_bytes(b"the current export")
    real_unlink = Path.unlink

    def contended(path: Path, missing_ok: bool = False) -> None:
        if path == stale[0]:  # deleted by another process between our listing and our unlink
            real_unlink(path)
        elif path == stale[1]:  # open in another process, on Windows
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        real_unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", contended)
    prune_cache(current, keep=2)
    assert [path.exists() for path in stale] == [False, True, False, True] and current.is_file()
