"""EditReward (DESIGN 6): the TIGER-AI-Lab EditReward reward model's score of (instruction, source, result).

EditReward's code is not a package, so its scoring is implemented here from its published facts
(github.com/TIGER-AI-Lab/EditReward, config ``EditReward-Qwen2.5-7B-VL.yaml``):

* backbone Qwen2.5-VL-7B-Instruct, with one added special token ``<|Reward|>`` (input
  embeddings resized to the tokenizer length);
* ``rm_head_type: ranknet_multi_head``: two heads ``rm_heads.head_0`` / ``head_1``, each
  ``Linear(hidden, 1024) - ReLU - Dropout - Linear(1024, 16) - ReLU - Linear(16, 2)`` in float32,
  output (mean, log sigma) (``loss_type: uncertainty``);
* head 0 reads the *instruction following* prompt, head 1 the *visual quality* prompt; each prompt
  shows the source image then the edited image, both resized to 256*28*28 pixels, followed by
  ``"Please provide the overall ratings of this image: <|Reward|>"``; a head reads the last hidden
  state at the ``<|Reward|>`` token;
* ``pooling_strategy: mean``: the two heads' outputs are averaged; the reward is the mean
  component. The reference forward passes the language model ``inputs_embeds`` without
  ``input_ids``, so positions are plain 1-D (attention-mask cumsum) rather than M-RoPE; we do the
  same because the heads were trained on those hidden states;
* checkpoint: ``model.pth`` or ``model.safetensors`` holding the full state dict (optionally
  under ``"model"``).

Paths: ``BENCH_EDITREWARD_PATH`` (checkpoint file or directory; default
``$BENCH_WEIGHTS_DIR/EditReward/``) and ``BENCH_EDITREWARD_BASE`` (the Qwen2.5-VL-7B-Instruct
directory for config and processor; default weights dir / HF cache of
``Qwen/Qwen2.5-VL-7B-Instruct``). Nothing is downloaded; missing files raise ``MissingWeights``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metrics import EvalBatch, Metric, MetricInfo
from metrics.cache import MetricCache, count_forwards, count_hits, image_hash, text_hash
from metrics.embedding import default_device
from metrics.weights import WeightRequest, fingerprint, force_offline, resolve_dir, resolve_file, weights_dir

REWARD_TOKEN = "<|Reward|>"
CHECKPOINT_FILES = ("model.safetensors", "model.pth")

# The two prompts the reward heads were trained with (EditReward's dataset/prompts.py, verbatim:
# the model's input format, so it must match to the character).
FOLLOWING_PROMPT = """
You are tasked with evaluating an edited image **in comparison with the original source image** based on **Instruction Following & Semantic Fidelity**, and assigning a score from 1 to 4, with 1 being the worst and 4 being the best.  
This dimension focuses on how accurately, completely, and exclusively the model executed the given text instruction.

**Inputs Provided:**  
- Source Image (before editing)  
- Edited Image (after applying the instruction)  
- Text Instruction  

**Sub-Dimensions to Evaluate:**

- **Semantic Accuracy:**  
  Assess whether the edited content accurately captures the semantics of the instruction. The edited result should precisely match the intended meaning. For example, if the instruction is "replace apples with oranges," the object must clearly be oranges, not other fruits.

- **Completeness of Editing:**  
  Check whether **all parts** of the instruction are fully executed. For multi-step edits (e.g., "replace a red car with a blue bicycle"), both the color change and the object replacement must be done without omissions.

- **Exclusivity of Edit (No Over-Editing):**  
  Ensure that only the requested parts are changed. The rest of the image (as seen in the source) should remain unaltered. For example, if the instruction only involves replacing an object, the background, lighting, and unrelated objects should not be unnecessarily modified.

**Scoring Criteria:**
- **4 (Very Good):** Perfectly accurate, complete, and exclusive execution of the instruction.  
- **3 (Relatively Good):** Largely correct, but with minor omissions or slight over-editing.  
- **2 (Relatively Poor):** Major misinterpretation, incomplete edits, or noticeable unintended changes.  
- **1 (Very Poor):** Instruction ignored or completely wrong execution.

Text instruction - {text_prompt}
"""

QUALITY_PROMPT = """
You are tasked with evaluating an edited image **in comparison with the original source image** based on **Visual Quality & Realism**, and assigning a score from 1 to 4, with 1 being the worst and 4 being the best.  
This dimension focuses on how realistic, artifact-free, and aesthetically appealing the edited image is, while remaining consistent with the source image.

**Inputs Provided:**  
- Source Image (before editing)  
- Edited Image (after applying the instruction)  
- Text Instruction  

**Sub-Dimensions to Evaluate:**

- **Plausibility & Physical Consistency:**  
  Check whether the edit aligns with the laws of physics and the scene context. Lighting, shadows, reflections, perspective, size, and interactions with the environment should all appear natural compared to the source image.

- **Artifact-Free Quality:**  
  Look for technical flaws such as blur, distortions, pixel misalignment, unnatural textures, or seams around edited regions. High-quality results should be free from such visible artifacts.

- **Aesthetic Quality:**  
  Evaluate the overall harmony and visual appeal. The image should look natural, balanced, and pleasant. Colors, composition, and atmosphere should enhance the image rather than degrade it.

**Scoring Criteria:**
- **4 (Very Good):** Perfectly realistic, artifact-free, seamless, and aesthetically pleasing.  
- **3 (Relatively Good):** Mostly realistic and clean, with only minor flaws that do not significantly distract.  
- **2 (Relatively Poor):** Noticeable physical inconsistencies or visible artifacts that make the edit unnatural.  
- **1 (Very Poor):** Severe artifacts, incoherent composition, or visually unusable result.

Text instruction - {text_prompt}
"""

RATING_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
HEAD_PROMPTS = (FOLLOWING_PROMPT, QUALITY_PROMPT)  # head_0, head_1


@dataclass(frozen=True)
class EditRewardConfig:
    checkpoint: str | None = None                      # model.safetensors / model.pth, or their directory
    base: str | None = None                            # Qwen2.5-VL directory (config + processor)
    base_repo: str = "Qwen/Qwen2.5-VL-7B-Instruct"     # looked up in the weights dir / HF cache when base is None
    image_pixels: int = 256 * 28 * 28                  # min = max pixels of both images (EditReward's setting)
    batch_size: int = 4
    device: str = field(default_factory=default_device)

    @classmethod
    def from_env(cls) -> "EditRewardConfig":
        return cls(checkpoint=os.environ.get("BENCH_EDITREWARD_PATH") or None,
                   base=os.environ.get("BENCH_EDITREWARD_BASE") or None)


def smart_size(h: int, w: int, factor: int, pixels: int) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule with min_pixels = max_pixels = ``pixels`` (sides multiples of ``factor``)."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > pixels:
        beta = math.sqrt(h * w / pixels)
        hb, wb = max(factor, math.floor(h / beta / factor) * factor), max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < pixels:
        beta = math.sqrt(pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def _head(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(),
                         nn.Linear(16, 2))


class EditRewardModel(nn.Module):
    """Qwen2.5-VL + two reward heads; parameter names match EditReward checkpoints."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.vlm = Qwen2_5_VLForConditionalGeneration(config)
        hidden = config.text_config.hidden_size
        self.rm_heads = nn.ModuleDict({f"head_{i}": _head(hidden) for i in range(2)})

    def load_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        state = {(k if k.startswith("rm_heads.") else "vlm." + k): v for k, v in _modern_keys(state).items()}
        self.load_state_dict(state, strict=True, assign=True)
        self.rm_heads.float()

    def reward(self, inputs: dict[str, torch.Tensor], head: int, token_id: int) -> torch.Tensor:
        """(B, 2) = (mean, log sigma) of one head at the ``<|Reward|>`` token."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.vlm.model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                             image_grid_thw=inputs["image_grid_thw"],
                             position_ids=positions.unsqueeze(0).expand(3, -1, -1))
        at = ids == token_id
        if not bool((at.sum(-1) == 1).all()):
            raise RuntimeError(f"expected exactly one {REWARD_TOKEN} token per sequence")
        return self.rm_heads[f"head_{head}"](out.last_hidden_state[at].float())


def _modern_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved before transformers 4.52 name ``visual.*`` / ``model.layers.*`` at the top."""
    if not any(k.startswith("visual.") or k.startswith("model.layers.") for k in state):
        return state
    out = {}
    for k, v in state.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model.") and not k.startswith(("model.visual.", "model.language_model.")):
            k = "model.language_model." + k[len("model."):]
        out[k] = v
    return out


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state.get("model", state) if isinstance(state.get("model"), dict) else state


def resolve_editreward(cfg: EditRewardConfig) -> tuple[Path, Path]:
    """(checkpoint file, base directory); MissingWeights within milliseconds when absent."""
    default_dir = weights_dir() / "EditReward"
    checkpoint = resolve_file(WeightRequest(
        what="EditReward checkpoint", env="BENCH_EDITREWARD_PATH", explicit=cfg.checkpoint, filenames=CHECKPOINT_FILES,
        extra=tuple(str(default_dir / n) for n in CHECKPOINT_FILES),
        hint=f"download the EditReward (Qwen2.5-VL-7B) checkpoint linked from github.com/TIGER-AI-Lab/EditReward "
             f"into {default_dir}"))
    base = resolve_dir(WeightRequest(what=f"EditReward base {cfg.base_repo} (config + processor)",
                                     env="BENCH_EDITREWARD_BASE", explicit=cfg.base, repo=cfg.base_repo),
                       required=("config.json", "tokenizer_config.json"), weights=False)
    return checkpoint, base


class EditRewardScore(Metric):
    info = MetricInfo("editreward", higher_is_better=True, compares=("results", "sources", "instructions"),
                      batch_size=4, role="EditReward",
                      description="EditReward reward model score of (instruction, source, result)")
    label = "editreward"

    def __init__(self, config: EditRewardConfig | None = None, *,
                 cache: MetricCache | str | bool | None = True) -> None:
        self.config = config if config is not None else EditRewardConfig.from_env()
        self.cache = cache if isinstance(cache, MetricCache) else MetricCache(cache)
        self._model: EditRewardModel | None = None

    def load(self) -> None:
        if self._model is not None:
            return
        checkpoint, base = resolve_editreward(self.config)
        force_offline()
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoProcessor

        state = _read_state(checkpoint)
        vocab = _modern_keys(state)["model.language_model.embed_tokens.weight"].shape[0]
        config = AutoConfig.from_pretrained(base, local_files_only=True)
        config.text_config.vocab_size = vocab  # the checkpoint's embeddings include <|Reward|>
        with init_empty_weights():
            model = EditRewardModel(config)
        model.load_checkpoint(state)
        dtype = torch.bfloat16 if str(self.config.device).startswith("cuda") else torch.float32
        model.vlm.to(dtype)
        self._model = model.to(self.config.device).eval()
        processor = AutoProcessor.from_pretrained(base, local_files_only=True, padding_side="right")
        processor.tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)
        self._token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if self._token_id >= vocab:
            raise RuntimeError(f"{REWARD_TOKEN} got id {self._token_id}, beyond the checkpoint's {vocab} embeddings: "
                               f"the base tokenizer in {base} does not match the EditReward checkpoint")
        self._processor = processor
        ip = processor.image_processor
        self._factor = ip.patch_size * ip.merge_size
        self._namespace = f"editreward|{fingerprint(checkpoint)}|{fingerprint(base, ['config.json'])}|" \
                          f"{self.config.image_pixels}px"

    def _pil(self, image: torch.Tensor):
        from PIL import Image

        arr = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        h, w = arr.shape[:2]
        nh, nw = smart_size(h, w, self._factor, self.config.image_pixels)
        return Image.fromarray(arr).resize((nw, nh), Image.BICUBIC)

    @torch.no_grad()
    def _rewards(self, instructions: list[str], sources: torch.Tensor, results: torch.Tensor) -> torch.Tensor:
        images = [im for s, r in zip(sources, results) for im in (self._pil(s), self._pil(r))]
        heads = []
        for head, prompt in enumerate(HEAD_PROMPTS):
            texts = []
            for instruction in instructions:
                messages = [{"role": "user", "content": [
                    {"type": "image"}, {"type": "image"},
                    {"type": "text", "text": prompt.format(text_prompt=instruction) + RATING_SUFFIX}]}]
                texts.append(self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            inputs = self._processor(text=texts, images=images, padding=True, return_tensors="pt")
            inputs = {k: v.to(self.config.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            heads.append(self._model.reward(inputs, head, self._token_id))
        return torch.stack(heads).mean(0)[:, 0].double().cpu()  # pooling "mean", reward = mean component

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        self.load()
        keys = [text_hash(batch.instructions[i], image_hash(batch.sources[i]), image_hash(batch.results[i]))
                for i in range(len(batch))]
        values: dict[int, float] = {}
        todo = []
        for i, key in enumerate(keys):
            hit = self.cache.get_json(self.label, self._namespace, key)
            if hit is None:
                todo.append(i)
            else:
                values[i] = hit["reward"]
        count_hits(self.label, len(values))
        if todo:
            rewards = self._rewards([batch.instructions[i] for i in todo], batch.sources[todo], batch.results[todo])
            count_forwards(self.label, len(todo))
            for i, reward in zip(todo, rewards.tolist()):
                values[i] = reward
                self.cache.put_json(self.label, self._namespace, keys[i], {"reward": reward})
        return torch.tensor([values[i] for i in range(len(batch))], dtype=torch.float64)
