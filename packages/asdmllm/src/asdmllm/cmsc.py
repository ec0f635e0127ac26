"""CMSC builder (spec §4.2): generate counterfactual sets of the 18 social concepts with a diffusers text-to-image
pipeline, from a concepts × attributes prompt table, into the package's CMSC parquet layout.

``asdmllm build-cmsc --pipeline <SDXL dir or hub id> --out <data_root>/CMSC`` writes one parquet file per
counterfactual set under ``<out>/sets/`` (atomically: a temporary file renamed into place, so a crash never leaves a
half-written set, and a rerun skips the sets already there), then merges them into ``<out>/data/train-*.parquet``.

Reconstruction / Deviation: the paper generates with SDXL + Prompt-to-Prompt attention control (four gender × age
base images per race, then race words swapped with the other tokens' cross-attention maps kept). This builder keeps
the *counterfactual* property by sharing the initial latent noise (one seed per set) across every attribute
combination of the set, without attention control; the manual filtering step of the paper is not reproduced.
"""

from __future__ import annotations

import argparse
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mmzoo.config import check_range
from mmzoo.data import written_whole
from tqdm.auto import tqdm

from .data import CMSC_COLUMNS, CMSC_CONCEPTS

__all__ = ["CMSCBuildConfig", "build_cmsc", "build_cmsc_main", "build_tiny_text2image_pipeline", "cmsc_prompt"]

log = logging.getLogger(__name__)

GROUP_TEMPLATES = {
    "personality": "A photo of the face of a {age} {race} {gender}, who is {concept}",
    "responsibility": "A photo of the face of a {age} {race} {gender}, associated with {concept}",
    "education": "A photo of the face of a {age} {race} {gender}, {concept}",
}
"""Reconstruction: one prompt template per concept group (the paper hand-writes one per concept; override with
``prompts``)."""


@dataclass
class CMSCBuildConfig:
    """What ``build-cmsc`` generates."""

    out: str = "data/CMSC"
    """Output folder (``<data_root>/CMSC``)."""
    concepts: dict[str, list[str]] = field(default_factory=lambda: {g: list(c) for g, c in CMSC_CONCEPTS.items()})
    """Concepts by group (spec §4.2: 18 concepts in three groups)."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Per-concept prompt template overriding the group template (keys: concept; fields {age} {race} {gender} {concept})."""
    genders: list[str] = field(default_factory=lambda: ["man", "woman"])
    """Gender words (spec §4.2: gender × age base images)."""
    ages: list[str] = field(default_factory=lambda: ["young", "old"])
    """Age words (Reconstruction: two values)."""
    races: list[str] = field(default_factory=lambda: ["White", "Black", "Indian", "Asian", "Middle Eastern", "Latino"])
    """Race words (Reconstruction: the SocialCounterfactuals races)."""
    sets_per_concept: int = 10
    """Counterfactual sets per concept (each set = |genders|·|ages|·|races| images)."""
    image_size: int = 1024
    """Generated image size (SDXL native 1024)."""
    num_inference_steps: int = 30
    """Denoising steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    seed: int = 0
    """Base seed; set k of concept j uses seed + 100003·j + k for every image of the set."""
    shard_size: int = 5000
    """Images per merged parquet shard."""

    def __post_init__(self) -> None:
        # named by the build-cmsc flags that set them
        for flag, value in (
            ("--sets-per-concept", self.sets_per_concept),
            ("--image-size", self.image_size),
            ("--steps", self.num_inference_steps),
            ("--shard-size", self.shard_size),
        ):
            check_range(f"build-cmsc {flag}", value, ge=1, integer=True)
        check_range("build-cmsc --guidance-scale", self.guidance_scale)
        for flag, words in (("--genders", self.genders), ("--ages", self.ages), ("--races", self.races)):
            if not words:
                raise ValueError(f"build-cmsc {flag}: at least one value is needed (each set crosses all of them)")


def cmsc_prompt(cfg: CMSCBuildConfig, group: str, concept: str, gender: str, age: str, race: str) -> str:
    template = cfg.prompts.get(concept) or GROUP_TEMPLATES.get(group)
    if template is None:
        raise KeyError(f"build-cmsc: no prompt template for concept {concept!r} of group {group!r}; add one to prompts")
    return template.format(age=age, race=race, gender=gender, concept=concept)


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with written_whole(path) as tmp:  # a set file is either complete or absent
        pq.write_table(table, tmp)


def build_cmsc(pipe, cfg: CMSCBuildConfig, device: torch.device | str = "cpu", progress: bool = True) -> Path:
    """Generate every missing counterfactual set, then (re)write the merged shards. Returns ``cfg.out``.

    ``pipe`` is any diffusers text-to-image pipeline (``pipe(prompt=[...], generator=[...], ...) .images``).
    """
    import datasets

    out = Path(cfg.out).expanduser()
    (out / "sets").mkdir(parents=True, exist_ok=True)
    for stale in (out / "sets").glob(".*.partial"):
        stale.unlink()  # leftovers of a write killed outright (an exception removes its own)
    features = datasets.Features(
        {c: datasets.Image() if c == "image" else datasets.Value("string") for c in CMSC_COLUMNS}
    )
    jobs = [
        (j, g, c, k)
        for j, (g, c) in enumerate((g, c) for g, cs in cfg.concepts.items() for c in cs)
        for k in range(cfg.sets_per_concept)
    ]
    combos = [(gender, age, race) for gender in cfg.genders for age in cfg.ages for race in cfg.races]
    done, paths = 0, []
    for j, group, concept, k in tqdm(jobs, desc="build-cmsc sets", total=len(jobs), disable=not progress):
        set_id = f"{group}_{concept.replace(' ', '_')}_{k}"
        path = out / "sets" / f"{set_id}.parquet"
        paths.append(path)
        prompts = [cmsc_prompt(cfg, group, concept, *combo) for combo in combos]
        if path.exists():
            _check_existing_set(path, combos, prompts)
            done += 1
            continue
        seed = cfg.seed + 100003 * j + k
        generators = [torch.Generator(device=device).manual_seed(seed) for _ in prompts]  # shared initial noise
        images = pipe(
            prompt=prompts,
            generator=generators,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.image_size,
            width=cfg.image_size,
        ).images
        rows = {c: [] for c in CMSC_COLUMNS}
        for (gender, age, race), prompt, image in zip(combos, prompts, images, strict=True):
            rows["image"].append({"bytes": _png_bytes(image), "path": None})
            rows["caption"].append(prompt)
            rows["concept"].append(concept)
            rows["concept_group"].append(group)
            rows["gender"].append(gender)
            rows["race"].append(race)
            rows["age"].append(age)
            rows["counterfactual_set"].append(set_id)
        _write_atomic(datasets.Dataset.from_dict(rows, features=features).data.table, path)
    if done:
        log.info("build-cmsc: %d of %d sets already existed and were skipped", done, len(jobs))
    _merge_shards(out, sorted(paths), cfg.shard_size)
    return out


def _check_existing_set(path: Path, combos: list[tuple[str, str, str]], prompts: list[str]) -> None:
    """A set file kept by a rerun must hold this run's images: the same gender × age × race rows and prompts."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["gender", "age", "race", "caption"]).to_pydict()
    have = sorted(zip(table["gender"], table["age"], table["race"], table["caption"], strict=True))
    want = sorted((*combo, prompt) for combo, prompt in zip(combos, prompts, strict=True))
    if have != want:
        raise ValueError(
            f"build-cmsc: {path} was generated with other genders, ages, races or prompts than this run's "
            f"({len(have)} images there, {len(want)} asked for); delete it to regenerate it, or build into another --out"
        )


def _merge_shards(out: Path, files: list[Path], shard_size: int) -> None:
    """Concatenate this run's per-set ``files`` into ``data/train-NNNNN-of-NNNNN.parquet`` (each shard written
    atomically); set files of concepts no longer asked for stay in ``sets/`` but out of the shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        raise ValueError(f"build-cmsc: no sets to merge under {out / 'sets'} (no concepts, or sets_per_concept 0)")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    (out / "data").mkdir(exist_ok=True)
    for old in (out / "data").glob("train-*.parquet"):
        old.unlink()
    n = max(1, -(-table.num_rows // shard_size))
    for i in range(n):
        _write_atomic(table.slice(i * shard_size, shard_size), out / "data" / f"train-{i:05d}-of-{n:05d}.parquet")


def build_tiny_text2image_pipeline(seed: int = 0):
    """A tiny random StableDiffusionPipeline built from configs (tests, ``--pipeline tiny``): no weights, no hub."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import build_char_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer()
    tokenizer.model_max_length = 77
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_pipeline(path: str, dtype: str, local_files_only: bool, device: str):
    if path == "tiny":
        return build_tiny_text2image_pipeline().to(device)
    from diffusers import AutoPipelineForText2Image

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            path, torch_dtype=torch_dtype, local_files_only=local_files_only
        )
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"build-cmsc --pipeline {path!r}: could not load a diffusers text-to-image pipeline ({err}). Supply a local "
            "diffusers folder (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/, scheduler/), e.g. a snapshot "
            "of stabilityai/stable-diffusion-xl-base-1.0, or pass --no-local-files-only to download it."
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def build_cmsc_main(argv: list[str]) -> Path:
    """``asdmllm build-cmsc``: argument parsing for :func:`build_cmsc`."""
    defaults = CMSCBuildConfig()
    parser = argparse.ArgumentParser(prog="asdmllm build-cmsc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="diffusers text-to-image folder or hub id (SDXL), or 'tiny'")
    parser.add_argument("--out", default=defaults.out, help="output folder (<data_root>/CMSC)")
    parser.add_argument("--sets-per-concept", type=int, default=defaults.sets_per_concept)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--steps", type=int, default=defaults.num_inference_steps)
    parser.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--races", nargs="+", default=defaults.races)
    parser.add_argument("--genders", nargs="+", default=defaults.genders)
    parser.add_argument("--ages", nargs="+", default=defaults.ages)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--no-local-files-only", action="store_true", help="allow downloading --pipeline from the hub")
    args = parser.parse_args(argv)
    cfg = CMSCBuildConfig(
        out=args.out,
        genders=args.genders,
        ages=args.ages,
        races=args.races,
        sets_per_concept=args.sets_per_concept,
        image_size=args.image_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        shard_size=args.shard_size,
    )
    pipe = _load_pipeline(
        args.pipeline, args.dtype if args.pipeline != "tiny" else "float32", not args.no_local_files_only, args.device
    )
    return build_cmsc(pipe, cfg, args.device)
