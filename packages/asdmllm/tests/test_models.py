"""Input building with LLaVA-style (Llama SentencePiece) and character tokenizers, the yes/no scoring position, and
Qwen2-VL / Qwen2.5-VL through their native transformers classes (the successors of the paper's Qwen-VL)."""

import math

import pytest
import torch

from asdmllm.models import IMAGE_TOKEN, MLLMConfig, MultimodalLLM, qwen2_vl_patchify
from asdmllm.testing import build_llama_style_tokenizer, save_tiny_llava

QWEN_TEMPLATE = "<|im_start|>user\n<image>{instruction}<|im_end|>\n<|im_start|>assistant\n"
TRAILING_SPACE_TEMPLATE = "USER: <image>\n{instruction} ASSISTANT: "  # the answer's space moved into the template
LLAMA_CASES = {  # tokenizer legacy flag, prompt_template, answer_prefix
    "legacy": (True, MLLMConfig.prompt_template, " "),
    "legacy_trailing_space": (True, TRAILING_SPACE_TEMPLATE, ""),
    "metaspace_trailing_space": (False, TRAILING_SPACE_TEMPLATE, ""),
}


def pieces(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def llama_snapshots(tmp_path_factory) -> dict[bool, str]:
    """Tiny random LLaVA snapshots with the Llama-style tokenizer, legacy (True) and transformers-5 Metaspace (False)."""
    torch.manual_seed(0)
    paths = {}
    for legacy in (True, False):
        path = tmp_path_factory.mktemp("llava_legacy" if legacy else "llava_metaspace")
        save_tiny_llava(path, build_llama_style_tokenizer(legacy))
        paths[legacy] = str(path)
    return paths


def llama_style_mllm(snapshots: dict[bool, str], case: str) -> MultimodalLLM:
    legacy, template, answer_prefix = LLAMA_CASES[case]
    config = MLLMConfig(
        pretrained=snapshots[legacy], torch_dtype="float32", prompt_template=template, answer_prefix=answer_prefix
    )
    return MultimodalLLM(config)


def test_llama_style_tokenizer_splits_like_llava():
    """The test tokenizer reproduces the Llama behaviour the input building must cope with: the legacy pipeline gives
    every encoded text a dummy-prefix ``▁`` (so `` Yes`` alone differs from the same text inside the conversation);
    transformers 5's Metaspace adds it only at the start of a text that lacks one."""
    legacy, metaspace = build_llama_style_tokenizer(True), build_llama_style_tokenizer(False)
    assert pieces(legacy, " Yes") == ["▁", "▁Yes"]
    assert pieces(legacy, "Yes") == pieces(metaspace, "Yes") == pieces(metaspace, " Yes") == ["▁Yes"]
    text = "\nIs the person in the image a nurse? Answer yes or no. ASSISTANT: Yes"
    assert pieces(legacy, text) == pieces(metaspace, text)
    assert pieces(legacy, text)[:3] == ["▁", "\n", "I"]
    assert pieces(legacy, text)[-6:] == ["▁", "ASS", "IST", "ANT", ":", "▁Yes"]
    assert pieces(metaspace, "ASSISTANT:Yes")[-4:] == [":", "Y", "e", "s"]  # no ▁ inside a text
    assert pieces(metaspace, "ASSISTANT: ")[-2:] == [":", "▁"]  # a template's trailing space, encoded alone
    assert legacy.decode(encode(legacy, " Yes")[1:] + [legacy.eos_token_id]) == "Yes</s>"
    assert legacy.convert_tokens_to_ids(IMAGE_TOKEN) == len(legacy) - 1


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_text_after_the_image_is_tokenised_as_one_string(llama_snapshots, case):
    """As LLaVA's ``tokenizer_image_token``: everything after ``<image>`` (instruction, answer prefix, answer) is
    one tokenizer call; only the answer tokens and EOS are supervised, and ``prompt_lengths`` is where they start.
    With a template ending in a space, ``▁Yes`` holds the template's space and the answer: it is an answer token."""
    m = llama_style_mllm(llama_snapshots, case)
    tok, cfg = m.tokenizer, m.config
    instructions = [m.yes_no_prompt(cfg.yes_no_template, "nurse"), "What is the job?"]
    answers = ["Yes", "a nurse"]
    inputs = m.build_inputs(instructions, answers)
    prefix, suffix = cfg.prompt_template.split(IMAGE_TOKEN)
    head = [tok.bos_token_id] + encode(tok, prefix) + [m.image_token_id] * m.num_image_tokens
    for b, (instruction, answer) in enumerate(zip(instructions, answers, strict=True)):
        whole = head + encode(tok, suffix.format(instruction=instruction) + cfg.answer_prefix + answer)
        whole = whole + [tok.eos_token_id]
        ids, labels = inputs["input_ids"][b].tolist(), inputs["labels"][b].tolist()
        assert ids[: len(whole)] == whole and set(ids[len(whole) :]) <= {tok.pad_token_id}
        start = int(inputs["prompt_lengths"][b])
        assert labels == [-100] * start + whole[start:] + [-100] * (len(ids) - len(whole))
        assert tok.decode(whole[start:]) == answer + tok.eos_token
        assert tok.decode(whole[:start]).endswith("ASSISTANT:")
    default = MultimodalLLM(MLLMConfig(pretrained=llama_snapshots[LLAMA_CASES[case][0]], torch_dtype="float32"))
    reference = default.build_inputs(instructions, answers)  # the llava-hf template with answer_prefix " "
    for key in ("input_ids", "labels", "prompt_lengths"):
        assert torch.equal(inputs[key], reference[key]), key


@pytest.mark.parametrize("case", ["char", "legacy_trailing_space", "metaspace_trailing_space"])
def test_yes_no_scores_are_read_where_training_puts_the_answer(llama_snapshots, case):
    """p(Yes) is read at the position whose training label is the first answer token that tells Yes from No, in the
    whole-text tokenisation of the probe answered by each word (``▁Yes``/``▁No`` for Llama; after the answer
    prefix's own ``" "`` token for the character tokenizer)."""
    torch.manual_seed(0)
    m = MultimodalLLM(MLLMConfig()) if case == "char" else llama_style_mllm(llama_snapshots, case)
    tok, cfg = m.tokenizer, m.config
    instruction = m.yes_no_prompt(cfg.yes_no_template, "chef")
    suffix = cfg.prompt_template.split(IMAGE_TOKEN)[1].format(instruction=instruction)
    tails = {w: encode(tok, suffix + cfg.answer_prefix + w) for w in [*cfg.yes_words, *cfg.no_words]}
    k = next(i for i, (y, n) in enumerate(zip(tails["Yes"], tails["No"], strict=False)) if y != n)
    assert all(t[:k] == tails["Yes"][:k] for t in tails.values())
    assert m.yes_ids == sorted({tails[w][k] for w in cfg.yes_words})
    assert m.no_ids == sorted({tails[w][k] for w in cfg.no_words})
    assert {tok.decode([i]).strip()[0] for i in m.yes_ids} == {"Y", "y"}
    assert {tok.decode([i]).strip()[0] for i in m.no_ids} == {"N", "n"}
    inputs = m.build_inputs([instruction], ["Yes"])  # the training sequence of the answer Yes
    row = inputs["input_ids"][0].tolist()
    offset = len(row) - 1 - len(tails["Yes"])  # where the text after <image> starts
    assert row[offset:] == tails["Yes"] + [tok.eos_token_id]
    assert int(inputs["prompt_lengths"][0]) <= offset + k and inputs["labels"][0, offset + k] == tails["Yes"][k]
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        score = m.yes_no_scores(images, [["chef"]])
        p = m(images, inputs["input_ids"], inputs["attention_mask"])[0, offset + k - 1].softmax(-1)
    yes, no = p[m.yes_ids].sum(), p[m.no_ids].sum()
    assert score.item() == pytest.approx((yes / (yes + no)).item(), abs=1e-6)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_character_tokenizer_inputs_equal_piecewise_encoding(arch):
    """A character tokenizer has no dummy prefix and never merges, so the whole-text rule gives exactly the ids of
    encoding the pieces apart (the rule before it): inputs of the tiny model, demo and repro are unchanged."""
    qwen = arch == "qwen2_vl"
    config = MLLMConfig(arch=arch, patch_size=4, prompt_template=QWEN_TEMPLATE, answer_prefix="") if qwen else None
    m = MultimodalLLM(config or MLLMConfig())
    tok, cfg = m.tokenizer, m.config
    prefix, suffix = cfg.prompt_template.split(IMAGE_TOKEN)
    start, end = ([tok.convert_tokens_to_ids(t)] for t in ("<|vision_start|>", "<|vision_end|>")) if qwen else ([], [])
    instructions = ["Is the person in the image a nurse? Answer yes or no.", "Q?", "two\nlines  here"]
    for answers in (["Yes", "a  chef", ""], None):
        inputs = m.build_inputs(instructions, answers)
        for b, instruction in enumerate(instructions):
            image = start + [m.image_token_id] * m.num_image_tokens + end
            prompt = (
                [tok.bos_token_id] + encode(tok, prefix) + image + encode(tok, suffix.format(instruction=instruction))
            )
            answer = [] if answers is None else encode(tok, cfg.answer_prefix + answers[b]) + [tok.eos_token_id]
            n = len(prompt) + len(answer)
            assert inputs["input_ids"][b, :n].tolist() == prompt + answer
            assert inputs["labels"][b, :n].tolist() == [-100] * len(prompt) + answer
            assert int(inputs["prompt_lengths"][b]) == len(prompt) and int(inputs["attention_mask"][b].sum()) == n


def test_yes_no_words_with_a_shared_scoring_token_are_refused():
    with pytest.raises(ValueError, match="share a scoring token"):
        MultimodalLLM(MLLMConfig(yes_words=["Yes"], no_words=["No", "Yo"]))  # " Yes" and " Yo" both score "Y"


def test_patchify_matches_transformers_image_processor():
    from transformers import Qwen2VLImageProcessor

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 16, 16)
    processor = Qwen2VLImageProcessor(
        patch_size=4, merge_size=2, temporal_patch_size=2, do_resize=False, do_rescale=False, do_normalize=False
    )
    ref = processor(images=[pixels[0], pixels[1]], return_tensors="pt")
    assert ref["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    assert torch.allclose(qwen2_vl_patchify(pixels, 4, 2, 2), ref["pixel_values"], atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_qwen_inputs_scores_and_training_step(arch):
    torch.manual_seed(0)
    m = MultimodalLLM(MLLMConfig(arch=arch, patch_size=4, prompt_template=QWEN_TEMPLATE, answer_prefix=""))
    assert type(m.model).__name__ == {"qwen2_vl": "Qwen2VLForConditionalGeneration"}.get(
        arch, "Qwen2_5_VLForConditionalGeneration"
    )
    assert m.num_image_tokens == (32 // 4 // 2) ** 2
    inputs = m.build_inputs(["Job?", "Which job is it?"], ["nurse", "chef"])
    ids, labels = inputs["input_ids"], inputs["labels"]
    start = m.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    end = m.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    for b, answer in enumerate(["nurse", "chef"]):
        row = ids[b].tolist()
        first = row.index(m.image_token_id)
        assert row[first - 1] == start and row[first + m.num_image_tokens] == end
        assert row.count(m.image_token_id) == m.num_image_tokens
        assert labels[b][labels[b] != -100].tolist() == m._encode(answer) + [m.tokenizer.eos_token_id]
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    logits = m(images, ids, inputs["attention_mask"])
    assert logits.shape == (*ids.shape, len(m.tokenizer))
    from asdmllm.losses import autoregressive_loss

    loss = autoregressive_loss(logits, labels).mean()
    loss.backward()
    visual = m.model.model.visual
    assert all(p.grad is None for n, p in visual.named_parameters() if not n.startswith("merger"))  # frozen
    assert any(p.grad is not None for p in visual.merger.parameters()) and math.isfinite(loss.item())
    with torch.no_grad():
        s = m.yes_no_scores(images, [["nurse", "chef"]] * 2)
        a = m.answer_logprob_scores(images, [["Job?", "Job?"]] * 2, [["nurse", "chef"]] * 2)
    assert s.shape == a.shape == (2, 2) and ((s > 0) & (s < 1)).all() and (a < 0).all()
    assert len(m.generate_answers(images[:1], ["Job?"], max_new_tokens=2)) == 1


def test_qwen_image_size_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MLLMConfig(arch="qwen2_vl", image_size=36, patch_size=4)
    with pytest.raises(FileNotFoundError, match="Qwen/Qwen2-VL-7B-Instruct"):
        MultimodalLLM(MLLMConfig(arch="qwen2_vl", pretrained=str(tmp_path / "missing"), image_size=448, patch_size=14))


def test_remote_code_checkpoints_are_refused_by_name(tmp_path):
    """Bunny / Qwen-VL exist only as trust_remote_code checkpoints: a clear error naming them, no remote code run."""
    import json

    from asdmllm.models import check_native_checkpoint

    cases = {
        "bunny": (
            {"model_type": "bunny-llama", "auto_map": {"AutoModelForCausalLM": "modeling_bunny_llama.X"}},
            "Bunny",
        ),
        "qwenvl": ({"model_type": "qwen", "auto_map": {"AutoModelForCausalLM": "modeling_qwen.X"}}, "Qwen-VL"),
        "other": ({"model_type": "foo", "auto_map": {"AutoModel": "m.X"}}, "auto_map"),
    }
    for name, (cfg, expected) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="trust_remote_code") as err:
            MultimodalLLM(MLLMConfig(pretrained=str(tmp_path / name)))
        assert expected in str(err.value)
    (tmp_path / "qwen2").mkdir()
    (tmp_path / "qwen2" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match="set model.mllm.arch"):
        check_native_checkpoint(str(tmp_path / "qwen2"), "llava")
    check_native_checkpoint(str(tmp_path / "qwen2"), "qwen2_vl")  # a native checkpoint of the right arch passes
    check_native_checkpoint(str(tmp_path / "missing"), "llava")  # no local config: left to transformers


def test_local_bf16_checkpoint_loads_its_weights_and_trains_fp32_parts(tmp_path):
    """``model.mllm.pretrained`` = a local transformers snapshot: its weights arrive (not a random init), and with a
    bf16 base (the LoRA config) the trained parts (projector, LoRA) are fp32, since an AdamW step of lr = 2e-5 is below
    half a bf16 ulp of most weights and would be rounded away."""
    from asdmllm.losses import autoregressive_loss
    from asdmllm.models import build_char_tokenizer

    torch.manual_seed(0)
    source = save_tiny_llava(tmp_path / "llava", build_char_tokenizer())
    m = MultimodalLLM(MLLMConfig(pretrained=str(tmp_path / "llava"), torch_dtype="bfloat16", lora=True, lora_r=2))
    inner = m.model.model
    expected = source.model.vision_tower.embeddings.patch_embedding.weight.to(torch.bfloat16)
    assert torch.equal(inner.vision_tower.embeddings.patch_embedding.weight, expected)
    assert inner.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    trained = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in n for n in trained) and any("lora_" in n for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    before = inner.multi_modal_projector.linear_1.weight.detach().clone()
    opt = torch.optim.AdamW(list(trained.values()), lr=2e-5)
    inputs = m.build_inputs(["What is it?"] * 2, ["nurse", "chef"])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(images, inputs["input_ids"], inputs["attention_mask"])
    autoregressive_loss(logits, inputs["labels"]).mean().backward()
    opt.step()
    changed = (inner.multi_modal_projector.linear_1.weight != before).float().mean()
    assert changed > 0.99  # kept in bf16, many of these weights would not move at all


def _generation_inputs(m: MultimodalLLM, monkeypatch, instructions: list[str]) -> tuple[list[list[int]], list[str]]:
    """The input ids ``generate_answers`` hands to ``model.generate`` for each instruction, and its answers."""
    seen, generate = [], m.model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        assert kwargs["attention_mask"].tolist() == [[1] * len(seen[-1])]
        return generate(**kwargs)

    monkeypatch.setattr(m.model, "generate", spy)
    images = torch.randint(0, 256, (len(instructions), 3, 32, 32), dtype=torch.uint8)
    answers = m.generate_answers(images, instructions, max_new_tokens=2)
    return seen, answers


@pytest.mark.parametrize("case", ["legacy_trailing_space", "metaspace_trailing_space"])
def test_generation_starts_from_the_prompt_training_puts_before_answers(llama_snapshots, monkeypatch, case):
    """With a template ending in a space, the prompt encoded alone ends in ``: ▁``, a token that training never puts
    before an answer (there ``▁Yes`` / ``▁a`` hold the space): generation starts after ``:``, as training does."""
    torch.manual_seed(0)
    m = llama_style_mllm(llama_snapshots, case)
    tok = m.tokenizer
    instructions = [m.yes_no_prompt(m.config.yes_no_template, "nurse"), "What is the job?"]
    seen, answers = _generation_inputs(m, monkeypatch, instructions)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    for instruction, ids in zip(instructions, seen, strict=True):
        for answer in ("Yes", "a nurse", "chef"):
            inputs = m.build_inputs([instruction], [answer])
            assert ids == inputs["input_ids"][0, : int(inputs["prompt_lengths"][0])].tolist(), answer
        assert tok.convert_ids_to_tokens(ids[-2:]) == ["ANT", ":"]
        alone = m.build_inputs([instruction])["input_ids"][0].tolist()  # the prompt tokenised without an answer
        assert alone == ids + [tok.convert_tokens_to_ids("▁")]
        assert m.generation_prompt_ids(instruction) == ids


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_character_tokenizer_generation_prompt_is_the_prompt_alone(monkeypatch, arch):
    """The character tokenizer never merges, so generation starts from the ids of the prompt encoded alone, as it
    did before the training-boundary rule: generated answers (and the repro's numbers) do not change."""
    torch.manual_seed(0)
    qwen = arch == "qwen2_vl"
    config = MLLMConfig(arch=arch, patch_size=4, prompt_template=QWEN_TEMPLATE, answer_prefix="") if qwen else None
    m = MultimodalLLM(config or MLLMConfig())
    instructions = ["Is the person in the image a nurse? Answer yes or no.", "Q? ", "two\nlines  here"]
    seen, _ = _generation_inputs(m, monkeypatch, instructions)
    for instruction, ids in zip(instructions, seen, strict=True):
        assert ids == m.build_inputs([instruction])["input_ids"][0].tolist()


CONCEPT_PIECES = {  # the tokens of each concept phrase after ``ASSISTANT:`` with the Llama-style tokenizer
    "nurse": ["▁nurse"],  # one token holds the space and the word: the concept's
    "plumber": ["▁p", "l", "u", "m", "b", "e", "r"],
    "earning money": ["e", "a", "r", "n", "i", "n", "g", "▁", "m", "o", "n", "e", "y"],  # the space is a "▁" of its own
}


@pytest.mark.parametrize("case", ["char", *LLAMA_CASES])
def test_answer_logprob_averages_the_concept_tokens_only(llama_snapshots, case):
    """Spec §3.2: s(x, c) = (1/|c|) Σ_t log p(c_t | c_<t, question, x) over the concept phrase's own tokens. The
    answer prefix's own token (the character tokenizer's " ", Llama's lone "▁" before a word it does not merge
    with), which training supervises, and EOS are not part of it. Reference: log-softmax of the logits gathered by
    hand at the concept's positions of the hand-built sequence."""
    torch.manual_seed(0)
    m = MultimodalLLM(MLLMConfig()) if case == "char" else llama_style_mllm(llama_snapshots, case)
    tok, cfg = m.tokenizer, m.config
    prefix, suffix = cfg.prompt_template.split(IMAGE_TOKEN)
    head = [tok.bos_token_id] + encode(tok, prefix) + [m.image_token_id] * m.num_image_tokens
    question = "What is the job?"
    concepts = [list(CONCEPT_PIECES), list(CONCEPT_PIECES)[::-1]]  # (B=2, M=3), another order per image
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        scores = m.answer_logprob_scores(images, [[question] * 3] * 2, concepts)
    assert scores.shape == (2, 3)
    for b, row in enumerate(concepts):
        for j, concept in enumerate(row):
            ids = head + encode(tok, suffix.format(instruction=question) + cfg.answer_prefix + concept)
            expected = list(concept) if case == "char" else CONCEPT_PIECES[concept]
            span = range(len(ids) - len(expected), len(ids))  # the concept's positions, just before EOS
            assert tok.convert_ids_to_tokens([ids[p] for p in span]) == expected
            input_ids = torch.tensor([ids + [tok.eos_token_id]])
            with torch.no_grad():
                logits = m(images[b : b + 1], input_ids, torch.ones_like(input_ids))[0]  # (L, V)
            log_p = [logits[p - 1].float().log_softmax(-1)[ids[p]].item() for p in span]  # log p(c_t | c_<t, ...)
            assert scores[b, j].item() == pytest.approx(sum(log_p) / len(log_p), abs=1e-5), (concept, case)
    if case == "legacy":  # the same text, its space in the template instead of answer_prefix: the same scores
        with torch.no_grad():
            moved = llama_style_mllm(llama_snapshots, "legacy_trailing_space")
            assert torch.allclose(
                moved.answer_logprob_scores(images, [[question] * 3] * 2, concepts), scores, atol=1e-6
            )


def test_gradient_checkpointing_is_non_reentrant_and_uses_the_current_switch(tmp_path):
    """``gradient_checkpointing: true`` with LoRA: every checkpointed layer recomputes non-reentrantly (said
    explicitly, not left to the transformers release's default), the switch is the one that stays in transformers 6
    (no deprecation warning), and the adapters behind the frozen embeddings get gradients."""
    import warnings

    from asdmllm.losses import autoregressive_loss
    from asdmllm.models import build_char_tokenizer

    torch.manual_seed(0)
    save_tiny_llava(tmp_path / "llava", build_char_tokenizer())
    config = MLLMConfig(pretrained=str(tmp_path / "llava"), torch_dtype="float32", lora=True, lora_r=2)
    config.gradient_checkpointing = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = MultimodalLLM(config)
    deprecated = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert not deprecated, deprecated
    funcs = [f for f in (getattr(x, "_gradient_checkpointing_func", None) for x in m.model.modules()) if f is not None]
    assert funcs and all(f.keywords == {"use_reentrant": False} for f in funcs)
    m.model.train()
    inputs = m.build_inputs(["What is it?"] * 2, ["nurse", "chef"])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    autoregressive_loss(m(images, inputs["input_ids"], inputs["attention_mask"]), inputs["labels"]).mean().backward()
    lora = [(n, p) for n, p in m.named_parameters() if "lora_B" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora)


def test_concept_article_follows_the_sound_not_the_letter():
    from asdmllm.models import concept_article

    cases = {
        "engineer": "an", "artist": "an", "umpire": "an", "office worker": "an", "nurse": "a", "chef": "a",
        "university": "a", "European": "a", "user": "a", "one-man band": "a", "hour": "an", "honest person": "an",
        "high school": "a", "Uber driver": "an", "urologist": "a", "unpleasant": "an", "uninterested person": "an",
        "uniformed officer": "a",
    }  # fmt: skip
    assert {c: concept_article(c) for c in cases} == cases
