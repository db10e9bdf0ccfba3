"""Model folders: their weight checksums, the checks before anything is loaded, and writes that a kill never spoils.

Every command that reads a model folder (`chat`, `serve`, `evaluate`, `train --from-pretrained`) goes through
`load_model` / `load_tokenizer`, which refuse with a `ModelFolderError` naming the file and the problem:

- a missing folder, `config.json`, weight file or tokenizer file;
- a `config.json` that is not JSON, is not a Smolite config, or has a field of the wrong type or value;
- a weight file that is truncated or not safetensors, or whose SHA-256 differs from `checksums.json`
  (safetensors itself checks only the header, so a flipped bit in the data would load silently);
- weights whose names or shapes do not match what `config.json` describes (transformers would otherwise initialise
  the missing ones at random and only warn);
- a pickle weight file (`pytorch_model.bin`) unless `allow_pickle=True` (`--allow-pickle`): unpickling can run code;
- a folder whose last save was interrupted (`.smolite-saving` is present).

Checksums live here and nowhere else: `write_weight_checksums` writes `checksums.json` (the SHA-256 and size of each
`*.safetensors` file, hashed by streaming), `verify_weight_checksums` compares a folder with it. The folders that
`smolite` writes carry it: `smolite convert`, `smolite push`, the final folder of `smolite train`
(`replace_folder_contents` records it) and its checkpoints (`WeightChecksumCallback`). A folder without
`checksums.json` (from `model.save_pretrained`, or the Hub) is checked for everything else. A folder is hashed once
per load: `check_model_folder` followed by `load_model` does not hash the same unchanged files again.

`replace_folder_contents` is how `smolite train` writes its final model beside the checkpoints: `config.json`, the
file every loader reads first, is removed before the other files are replaced and written back last, so a process
killed midway leaves a folder that no loader accepts (and that `smolite` commands name as interrupted), never a mix
that loads. `last_complete_checkpoint` is how `--resume` finds the checkpoint to continue from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .configuration_smolite import SmoliteConfig
from .modeling_smolite import SmoliteForCausalLM

WEIGHT_CHECKSUMS = "checksums.json"

logger = logging.getLogger(__name__)

SAVING_MARKER = ".smolite-saving"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or corrupted; the message names the file and the problem."""


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_weight_checksums(folder: str | os.PathLike) -> dict:
    """Write `folder/checksums.json` for its `*.safetensors` files (atomically: a temporary file, then a rename)."""
    folder = Path(folder)
    files = {
        path.name: {"sha256": sha256_of(path), "size": path.stat().st_size}
        for path in sorted(folder.glob("*.safetensors"))
    }
    record = {"algorithm": "sha256", "files": files}
    temporary = folder / f".{WEIGHT_CHECKSUMS}.tmp"
    temporary.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(temporary, folder / WEIGHT_CHECKSUMS)
    return record


# resolved folder -> (name, size, mtime, inode) of the files it was verified with, so that an unchanged folder is
# hashed once per process (check_model_folder, then load_model)
_VERIFIED: dict[str, tuple] = {}


def _fingerprint(paths: list[Path]) -> tuple:
    stats = [(path.name, path.stat()) for path in paths if path.is_file()]
    return tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats)


def verify_weight_checksums(folder: str | os.PathLike, files: list[Path] | None = None) -> None:
    """Compare the weight `files` of `folder` (default: its `*.safetensors`) with `checksums.json`.

    Raises `ModelFolderError` naming the file whose size or SHA-256 differs. Files that the record does not list, and
    folders without `checksums.json`, pass.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if files is None else files
    checksums_path = folder / WEIGHT_CHECKSUMS
    if not checksums_path.is_file():
        return
    key, fingerprint = str(folder.resolve()), _fingerprint([*files, checksums_path])
    if _VERIFIED.get(key) == fingerprint:
        return
    recorded = _read_json(checksums_path, "checksum record").get("files", {})
    for path in files:
        entry = recorded.get(path.name)
        if entry is None or not path.is_file():
            continue
        size = path.stat().st_size
        if size != entry.get("size"):
            raise ModelFolderError(f"{path}: {size} bytes, but {checksums_path.name} records {entry.get('size')}; "
                                   "the file is truncated or was replaced. Re-download or re-convert it.")
        if sha256_of(path) != entry.get("sha256"):
            raise ModelFolderError(
                f"{path}: its SHA-256 differs from the one in {checksums_path.name} (written when the folder was "
                "saved); the file is corrupted. Re-download or re-convert it (or, if you changed it on purpose, "
                f"delete {checksums_path.name})."
            )
    _VERIFIED[key] = fingerprint


class WeightChecksumCallback(TrainerCallback):
    """Writes `checksums.json` into each checkpoint the `Trainer` saves, so that `--resume` can verify its weights.

    It runs after the checkpoint is complete (`trainer_state.json` written); a run killed in between leaves a
    checkpoint without checksums, which is still resumed from (its other checks pass).
    """

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            write_weight_checksums(checkpoint)


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelFolderError(f"{path}: not UTF-8 text (byte {error.start}); the {what} is corrupted.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                               f"the {what} is corrupted or was cut short.") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: the {what} must be a JSON object, not {type(data).__name__}.")
    return data


def check_config(folder: Path) -> SmoliteConfig:
    path = folder / "config.json"
    if not path.is_file():
        if (folder / SAVING_MARKER).exists():
            raise ModelFolderError(f"{folder}: its last save was interrupted ({SAVING_MARKER} is present and config.json "
                                   "is not); save again, or for a `smolite train` folder run it again with --resume.")
        raise ModelFolderError(f"{path}: missing; is {folder} a complete Smolite model folder?")
    data = _read_json(path, "model configuration")
    if data.get("model_type") != "smolite":
        raise ModelFolderError(f"{path}: model_type is {data.get('model_type')!r}, not 'smolite'.")
    try:
        return SmoliteConfig.from_pretrained(folder)
    except Exception as error:  # strict-dataclass validation names the field and value
        raise ModelFolderError(f"{path}: {error}") from None


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(_read_json(index, "weight index").get("weight_map", {}).values()))
        if not names:
            raise ModelFolderError(f"{index}: its weight_map is empty.")
        return [folder / name for name in names]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    pickles = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if pickles and not allow_pickle:
        raise ModelFolderError(
            f"{folder / pickles[0]}: a pickle weight file; loading pickles can run arbitrary code, so it is refused. "
            "If you trust its source, pass --allow-pickle (allow_pickle=True), or convert it to model.safetensors."
        )
    if pickles:
        return []
    raise ModelFolderError(f"{folder / 'model.safetensors'}: missing; is {folder} a complete Smolite model folder?")


def check_weights(folder: Path, config: SmoliteConfig, allow_pickle: bool = False) -> None:
    """Checksums (when recorded), readability, and names and shapes against `config`."""
    from safetensors import safe_open

    files = _weight_files(folder, allow_pickle)
    for path in files:
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing (the weight index lists it).")
    verify_weight_checksums(folder, files)
    found: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    found[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as error:
            raise ModelFolderError(f"{path}: not a readable safetensors file ({error}); it is truncated or corrupted."
                                   ) from None
    if files:
        _check_shapes(folder, config, found)


def _check_shapes(folder: Path, config: SmoliteConfig, found: dict[str, tuple[int, ...]]) -> None:
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in SmoliteForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
        found = {name: shape for name, shape in found.items() if name != "lm_head.weight"}
    sizes = (f"vocab_size={config.vocab_size}, hidden_size={config.hidden_size}, num_hidden_layers="
             f"{config.num_hidden_layers}, intermediate_size={config.intermediate_size}, adapter_size={config.adapter_size}")
    for name, shape in expected.items():
        if name not in found:
            raise ModelFolderError(f"{folder}: the weights have no {name}, which config.json ({sizes}) requires; "
                                   "config.json and the weight file do not belong together.")
        if found[name] != shape:
            raise ModelFolderError(f"{folder}: {name} has shape {list(found[name])} in the weights, but config.json "
                                   f"({sizes}) needs {list(shape)}; config.json and the weight file do not belong together.")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ModelFolderError(f"{folder}: the weights hold {extra[0]} (and {len(extra) - 1} more) that config.json "
                               f"({sizes}) does not describe; config.json and the weight file do not belong together.")


def check_model_folder(folder, *, tokenizer: bool = True, allow_pickle: bool = False) -> SmoliteConfig:
    """Everything above for a local folder; returns its config. Raises `ModelFolderError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder.")
    if (folder / SAVING_MARKER).exists():
        raise ModelFolderError(f"{folder}: its last save was interrupted ({SAVING_MARKER} is present); its files may "
                               "come from two different saves. Save again, or rerun `smolite train` with --resume.")
    config = check_config(folder)
    check_weights(folder, config, allow_pickle)
    if tokenizer:
        for name in TOKENIZER_FILES:
            if not (folder / name).is_file():
                raise ModelFolderError(f"{folder / name}: missing; is {folder} a complete Smolite model folder?")
        _read_json(folder / "tokenizer_config.json", "tokenizer configuration")
    return config


def load_model(name_or_folder, *, allow_pickle: bool = False, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` after `check_model_folder` (for a local folder; a Hub id is loaded with
    the Hub's own integrity checks). Pickle weights only with `allow_pickle`. Weights already verified by a
    `check_model_folder` call and unchanged since are not hashed again."""
    from transformers import AutoModelForCausalLM

    if Path(name_or_folder).exists():
        check_model_folder(name_or_folder, tokenizer=False, allow_pickle=allow_pickle)
    return AutoModelForCausalLM.from_pretrained(name_or_folder, use_safetensors=None if allow_pickle else True, **kwargs)


def load_tokenizer(name_or_folder):
    """`AutoTokenizer.from_pretrained`, with a missing or corrupted tokenizer file named."""
    from transformers import AutoTokenizer

    folder = Path(name_or_folder)
    if folder.exists():
        for name in TOKENIZER_FILES:
            if not (folder / name).is_file():
                raise ModelFolderError(f"{folder / name}: missing; is {folder} a complete Smolite model folder?")
        _read_json(folder / "tokenizer_config.json", "tokenizer configuration")
        try:
            return AutoTokenizer.from_pretrained(folder)
        except Exception as error:
            raise ModelFolderError(f"{folder / 'tokenizer.json'}: cannot be loaded ({error}); the tokenizer files "
                                   "are corrupted.") from None
    return AutoTokenizer.from_pretrained(name_or_folder)


# ---------------------------------------------------------------------------------------------------------------
# writing


def replace_folder_contents(staging: Path, folder: Path) -> None:
    """Move every file of `staging` into `folder`, so that a kill at any point never leaves a loadable mix.

    `config.json` is removed first and moved in last; `.smolite-saving` marks the folder meanwhile. Weight files of
    an earlier save that the new one does not have (old shards) are removed. The weight checksums of `staging` are
    recorded first (`write_weight_checksums`) unless it has them already.
    """
    if any(staging.glob("*.safetensors")) and not (staging / WEIGHT_CHECKSUMS).exists():
        write_weight_checksums(staging)
    marker = folder / SAVING_MARKER
    marker.write_text("a save is in progress; if no process is writing this folder, that save was interrupted\n")
    (folder / "config.json").unlink(missing_ok=True)
    new = {item.name for item in staging.iterdir()}
    for old in folder.glob("model*.safetensors*"):
        if old.name not in new:
            old.unlink()
    for item in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
        os.replace(item, folder / item.name)
    marker.unlink()
    shutil.rmtree(staging, ignore_errors=True)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from (`None` when it can).

    The Trainer writes the model, then the optimizer, scheduler and RNG states, and `trainer_state.json` last; a
    checkpoint whose `trainer_state.json` is missing or cut short was being written when the run stopped.
    """
    state_path = checkpoint / "trainer_state.json"
    if not state_path.is_file():
        return "it has no trainer_state.json (the run stopped while writing it)"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "its trainer_state.json is cut short (the run stopped while writing it)"
    step = checkpoint.name.rpartition("-")[2]
    if str(state.get("global_step")) != step:
        return f"its trainer_state.json is for step {state.get('global_step')}, not {step}"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (checkpoint / name).is_file():
            return f"it has no {name}"
    try:
        check_model_folder(checkpoint, tokenizer=False)
    except ModelFolderError as error:
        if not (checkpoint / "adapter_model.safetensors").is_file():  # a LoRA checkpoint holds only its adapter
            return str(error)
    return None


def last_complete_checkpoint(output_dir: Path, report=print) -> Path | None:
    """The newest `checkpoint-N` of `output_dir` that can be resumed from; incomplete newer ones are removed, each
    with a message to `report` (they hold nothing that can be used, and would confuse the Trainer's rotation)."""
    checkpoints = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.rpartition("-")[2].isdigit()),
        key=lambda p: int(p.name.rpartition("-")[2]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        report(f"smolite train: {checkpoint} is incomplete: {problem}; removing it and resuming from an earlier one.")
        shutil.rmtree(checkpoint)
    return None


__all__ = [
    "WEIGHT_CHECKSUMS",
    "ModelFolderError",
    "WeightChecksumCallback",
    "check_model_folder",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "load_model",
    "load_tokenizer",
    "replace_folder_contents",
    "sha256_of",
    "verify_weight_checksums",
    "write_weight_checksums",
]
