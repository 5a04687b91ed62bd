"""Tiny random stand-ins of every metric backbone, written to disk in the real on-disk layouts.

Tests and ``benchmarks/metrics_throughput.py`` load them through the very code that loads the
real weights (``metrics.clip.load_open_clip``, ``metrics.dino.load_timm_vit``, the unmodified
``dreamsim()``, transformers' ``from_pretrained``), so loading, preprocessing, caching and
scoring are exercised without downloads. Their numbers mean nothing; never report them.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from metrics.clip import ClipConfig
from metrics.dino import DinoConfig
from metrics.dreamsim import DreamSimConfig
from metrics.editreward import EditRewardConfig

TINY_CLIP = "bench-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 128, "width": 32, "heads": 2, "layers": 1},
}


def tiny_open_clip(folder: str | Path, seed: int = 0) -> ClipConfig:
    """A 2-layer open_clip model: registered config + ``open_clip_model.safetensors`` (also a local-dir)."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP_CFG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    return ClipConfig(model=TINY_CLIP, pretrained="", weights=str(folder / "open_clip_model.safetensors"), device="cpu")


TINY_DINO_KWARGS = (("img_size", 32), ("patch_size", 8), ("embed_dim", 32), ("depth", 2), ("num_heads", 2))


def tiny_dino(folder: str | Path, seed: int = 0) -> DinoConfig:
    """A 2-block timm DINO ViT saved as ``model.safetensors``."""
    import timm
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    name = "vit_small_patch16_224.dino"
    model = timm.create_model(name, pretrained=False, num_classes=0, **dict(TINY_DINO_KWARGS))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return DinoConfig(model=name, weights=str(folder / "model.safetensors"), model_kwargs=TINY_DINO_KWARGS,
                      device="cpu")


# A torch.hub entry point with the contract of facebookresearch/dino's dino_vitb16 (same URL, same
# checkpoint name in <hub>/checkpoints), but a narrow ViT; dreamsim hooks block 11, so 12 blocks.
_DINO_HUBCONF = '''dependencies = ["torch"]
import torch
from dreamsim.feature_extraction.vision_transformer import VisionTransformer

URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"


def dino_vitb16(pretrained=True, **kwargs):
    model = VisionTransformer(patch_size=16, embed_dim={dim}, depth=12, num_heads=2, mlp_ratio=1.0,
                              qkv_bias=True, **kwargs)
    if pretrained:
        model.load_state_dict(torch.hub.load_state_dict_from_url(URL, map_location="cpu"), strict=True)
    return model
'''


def tiny_dreamsim(folder: str | Path, seed: int = 0, dim: int = 16) -> DreamSimConfig:
    """A dreamsim cache directory with the real ``dino_vitb16`` layout and random narrow weights."""
    import torch.hub
    from peft import LoraConfig, get_peft_model

    folder = Path(folder)
    repo = folder / "facebookresearch_dino_main"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "hubconf.py").write_text(_DINO_HUBCONF.replace("{dim}", str(dim)))
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(patch_size=16, embed_dim=dim, depth=12, num_heads=2, mlp_ratio=1.0, qkv_bias=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    torch.save(vit.state_dict(), folder / "checkpoints" / "dino_vitbase16_pretrain.pth")
    # The DINO projection head dreamsim reads; unused by the "cls" features, so tiny tensors do.
    head = {f"module.head.{k}": torch.randn(2, 2) for k in
            ("mlp.0.weight", "mlp.2.weight", "mlp.4.weight", "last_layer.weight")}
    head |= {f"module.head.{k}": torch.randn(2) for k in ("mlp.0.bias", "mlp.2.bias", "mlp.4.bias")}
    torch.save({"student": head}, folder / "dino_vitb16_pretrain.pth")
    hub_dir = torch.hub.get_dir()
    try:
        from dreamsim.model import PerceptualModel

        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.hub's "Using cache" line, DINOHead's weight_norm
            base = PerceptualModel(model_type="dino_vitb16", feat_type="cls", stride="16", lora=True,
                                   load_dir=str(folder), normalize_embeds=True, device="cpu")
    finally:
        torch.hub.set_dir(hub_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, bias="none", target_modules=["qkv"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # peft starts B at zero; a random adapter makes loading it matter
    lora.save_pretrained(str(folder / "dino_vitb16_single_lora"))
    return DreamSimConfig(dreamsim_type="dino_vitb16", cache_dir=str(folder), device="cpu")


QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")
# Minimal Qwen-style chat template: same role markers and vision placeholders as Qwen2.5-VL's.
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen_processor(side: int = 56):
    """An offline Qwen2VLProcessor: byte-level BPE trained here, Qwen special tokens, chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    from metrics import editreward, judge

    # Trained on the prompts the metrics send, so they tokenise to hundreds, not thousands, of tokens.
    corpus = ['{"brief_reasoning": "the subject keeps its identity", "scores": 4}',
              '{"brief_reasoning": "the effect is missing", "is_bad_case": true}',
              editreward.FOLLOWING_PROMPT, editreward.QUALITY_PROMPT, editreward.RATING_SUFFIX,
              judge._SYSTEM, judge._VSA_RUBRIC, judge._BCR_RUBRIC, judge._RETRY]
    bpe.train_from_iterator(corpus * 4, trainers.BpeTrainer(
        vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(list(QWEN_SPECIAL), special_tokens=True)
    images = Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side)
    return Qwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=QWEN_TEMPLATE)


def tiny_qwen_config(processor, extra_tokens: int = 0):
    from transformers import Qwen2_5_VLConfig

    ids = processor.tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL))
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(processor.tokenizer) + extra_tokens, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=ids[0], eos_token_id=ids[2], pad_token_id=ids[0],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids[5], video_token_id=ids[6], vision_start_token_id=ids[3], vision_end_token_id=ids[4],
        tie_word_embeddings=False)


def tiny_qwen_vl(folder: str | Path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2_5_VLForConditionalGeneration + offline processor, ``save_pretrained``-ed."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    processor = tiny_qwen_processor()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(processor)).eval()
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_editreward(folder: str | Path, base: str | Path, seed: int = 0) -> EditRewardConfig:
    """An EditReward-format checkpoint (``model.safetensors``) on the tiny Qwen2.5-VL ``base``."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from metrics.editreward import EditRewardModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    config.text_config.vocab_size += 1  # room for <|Reward|>, as EditReward resizes its embeddings
    torch.manual_seed(seed)
    model = EditRewardModel(config)
    state = {(k[len("vlm."):] if k.startswith("vlm.") else k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return EditRewardConfig(checkpoint=str(folder), base=str(base), image_pixels=56 * 56, device="cpu")


class CannedJudgeServer:
    """An OpenAI-compatible ``/chat/completions`` endpoint on 127.0.0.1 answering canned replies.

    Replies are served in order and the last one repeats. A reply is the assistant's text, an
    ``int`` (that HTTP status is sent, with a small error body) or a callable of the recorded
    request returning either. Every request (path with query, Authorization header, JSON body)
    is recorded in ``requests``. Use as a context manager or call ``close``.
    """

    def __init__(self, *replies: str | int | Callable[[dict], str | int]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.replies = list(replies)
        self.requests: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                with lock:
                    outer.requests.append(request)
                    reply = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                if callable(reply):
                    reply = reply(request)
                if isinstance(reply, int):
                    status, data = reply, json.dumps({"error": f"canned HTTP {reply}"}).encode()
                else:
                    status = 200
                    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test and benchmark output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "CannedJudgeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
