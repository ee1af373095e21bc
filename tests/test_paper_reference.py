"""Self-checks of tests/paper_reference.py, the transcription of the paper's scripts: values
worked out by hand from the scripts' code, and the quirks the transcription must keep."""

from __future__ import annotations

import random

import numpy as np
import paper_reference as ref
import pytest
import torch
from PIL import Image


def _entry(n_levels: int, none_at: tuple[int, ...] = ()) -> dict:
    entry = {"image": "x.jpg", "label": "leaf"}
    for k in range(1, n_levels + 1):
        entry[f"level{k}"] = None if k in none_at else f"n{k}a"
        entry[f"choices_level{k}"] = [f"n{k}a", f"n{k}b", f"n{k}c", f"n{k}d"]
    return entry


# ---------------------------------------------------------------- InternVL tiling


@pytest.mark.parametrize(
    ("size", "max_num", "grid", "tiles"),
    [
        ((500, 375), 4, (1, 1), 1),  # 4:3 is closer to 1:1 than to 2:1; one tile, no thumbnail
        ((500, 333), 4, (2, 1), 3),  # 1.5015: 2:1 is 0.4985 away, 1:1 0.5015: 2 tiles + thumbnail
        ((500, 334), 4, (1, 1), 1),  # 1.497: 1:1 wins
        ((600, 400), 4, (2, 1), 3),  # exactly 1.5, a tie; 240000 > 0.5 * 448 * 448 * 2: 2:1
        ((450, 300), 4, (1, 1), 1),  # the same tie; 135000 <= 200704: 1:1 stays
        ((700, 700), 4, (2, 2), 5),  # 1:1 ties 2:2; 490000 > 401408: 2 x 2 + thumbnail
        ((600, 600), 4, (1, 1), 1),  # 360000 <= 401408: stays one tile
        ((375, 500), 4, (1, 1), 1),
        ((500, 375), 12, (4, 3), 13),  # the checkpoint default max 12: 12 tiles + thumbnail
    ],
)
def test_internvl_grid_and_tile_count(size, max_num, grid, tiles):
    w, h = size
    ratios = ref.target_ratios(1, max_num)
    assert ref.find_closest_aspect_ratio(w / h, ratios, w, h, 448) == grid
    got, pixels = ref.load_image(Image.new("RGB", size, (10, 20, 30)), max_num=max_num)
    assert len(got) == tiles
    assert tuple(pixels.shape) == (tiles, 3, 448, 448)
    assert all(t.size == (448, 448) for t in got)


def test_internvl_pixels_are_imagenet_normalised():
    colour = (124, 116, 104)
    _, pixels = ref.load_image(Image.new("RGB", (500, 375), colour), max_num=4)
    want = [(c / 255 - m) / s for c, m, s in zip(colour, ref.IMAGENET_MEAN, ref.IMAGENET_STD)]
    for ch in range(3):
        assert torch.allclose(pixels[0, ch], torch.full((448, 448), want[ch]), atol=1e-6)


def test_internvl_tiles_are_row_major_crops_and_thumbnail_is_whole_image():
    # a 2:1 image whose left half is black and right half white: two tiles, then the thumbnail
    img = Image.new("RGB", (896, 448), (0, 0, 0))
    img.paste((255, 255, 255), (448, 0, 896, 448))
    tiles, _ = ref.load_image(img, max_num=4)
    assert len(tiles) == 3
    left, right, thumb = (np.asarray(t, dtype=np.int32) for t in tiles)
    assert left[:, :440].max() == 0 and right[:, 8:].min() == 255
    assert thumb[:, :200].max() < 5 and thumb[:, 248:].min() > 250


def test_internvl_grid_does_not_depend_on_the_order_of_equal_tile_counts():
    # transformers' GotOcr2 lists the grids column-major before its stable sort; the script sorts
    # a set. Same choice on every size tried, so max_patches=4 there picks the paper's grid.
    def listed(max_num):
        grids = [(w, h) for w in range(1, max_num + 1) for h in range(1, max_num + 1)]
        return sorted([g for g in grids if g[0] * g[1] <= max_num], key=lambda x: x[0] * x[1])

    for max_num in (4, 12):
        paper, other = ref.target_ratios(1, max_num), listed(max_num)
        assert sorted(paper) == sorted(other)
        for w in range(50, 2100, 37):
            for h in range(50, 2100, 41):
                assert ref.find_closest_aspect_ratio(
                    w / h, paper, w, h, 448
                ) == ref.find_closest_aspect_ratio(w / h, other, w, h, 448)


# ---------------------------------------------------------------- LLaVA pad


def test_llava_pad_centres_the_image_on_the_mean_grey():
    assert ref.llava_pad_background() == (127, 127, 127)
    square = np.asarray(ref.expand2square(Image.new("RGB", (500, 375), (255, 0, 0)), (127,) * 3))
    assert square.shape == (500, 500, 3)
    # (500 - 375) // 2 = 62 rows above, 63 below
    assert (square[:62] == 127).all() and (square[437:] == 127).all()
    assert (square[62:437] == (255, 0, 0)).all()
    tall = np.asarray(ref.expand2square(Image.new("RGB", (301, 400), (0, 0, 0)), (127,) * 3))
    assert tall.shape == (400, 400, 3)
    assert (tall[:, :49] == 127).all() and (tall[:, 49:350] == 0).all()
    assert (tall[:, 350:] == 127).all()


def test_llava_pad_pixels():
    pixels = ref.llava_pad_pixels(Image.new("RGB", (500, 375), (127, 127, 127)))
    assert pixels.dtype == torch.float32 and tuple(pixels.shape) == (3, 384, 384)
    assert torch.allclose(pixels, torch.full_like(pixels, (127 / 255 - 0.5) / 0.5), atol=1e-6)
    white = ref.llava_pad_pixels(Image.new("RGB", (375, 500), (255, 255, 255)))
    assert torch.allclose(white[:, :, 192], torch.ones(3, 384), atol=1e-6)  # the image centre
    assert torch.allclose(white[:, 192, 0], torch.full((3,), -1 / 255), atol=1e-6)  # the pad
    assert ref.LLAVA_PAD_IMAGE_TOKENS == 730


# ---------------------------------------------------------------- Qwen resizing


def test_smart_resize_rounds_to_multiples_of_28():
    assert ref.smart_resize(375, 500) == (364, 504)
    assert ref.qwen_image_tokens(504, 364) == 26 * 36 // 4 == 234
    # a tiny image is scaled up to at least 4 x 28 x 28 pixels
    h, w = ref.smart_resize(20, 30)
    assert h * w >= ref.QWEN_MIN_PIXELS and h % 28 == 0 and w % 28 == 0


def test_paper_resizes_to_multiples_of_28_before_the_1680_cap():
    img = ref.paper_qwen_image(Image.new("RGB", (2000, 1500), (1, 2, 3)))
    # 2000 x 1500 -> 1988 x 1512 (qwen_vl_utils), then x 1680 / 1988 -> 1680 x 1277
    assert img.size == (1680, 1277)
    assert ref.paper_qwen_sizes(2000, 1500) == ((1680, 1277), (1680, 1288))

    def cap_first(w, h):  # capping the original first, then the processor's rounding
        s = 1680 / max(w, h)
        w, h = int(w * s), int(h * s)
        ph, pw = ref.smart_resize(h, w, min_pixels=3136, max_pixels=12845056)
        return pw, ph

    assert cap_first(2000, 1500) == (1680, 1260)  # 2700 image tokens, the paper 2760
    assert ref.qwen_image_tokens(1680, 1288) == 2760 and ref.qwen_image_tokens(1680, 1260) == 2700
    # int() truncation: 2996 * (1680 / 2996) is just below 1680
    assert ref.paper_qwen_sizes(3000, 2000) == ((1679, 1114), (1680, 1120))
    # at most 1680 px: the cap does nothing and the processor keeps qwen_vl_utils' size
    assert ref.paper_qwen_sizes(500, 375) == ((504, 364), (504, 364))


def test_qwen_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (56, 56), (0, 0, 0, 0))
    assert ref.qwen_fetch_image(rgba).getpixel((10, 10)) == (255, 255, 255)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("C", "C"),
        (" B.", "B"),
        ("Answer: C", "A"),  # the A of "Answer"
        ("D. Anatidae", "A"),  # the A of "Anatidae"
        ("The answer is B", "B"),
        ("c", "Unknown"),  # case-sensitive
        ("", "Unknown"),
        ("BA", "A"),  # letters are tried in the order A, B, C, D
    ],
)
def test_parse_letter(reply, letter):
    cmap = ref.choice_map(["w", "x", "y", "z"])
    assert ref.parse_letter(reply, cmap) == (letter, cmap.get(letter, "Unknown"))


def test_parse_letter_only_tries_the_asked_letters():
    assert ref.parse_letter("D", ref.choice_map(["a", "b", "c"])) == ("Unknown", "Unknown")


@pytest.mark.parametrize(
    ("reply", "answer"),
    [("Yes.", 1), (" no", 0), ("YES", 1), ("Nope", 0), ("I think yes", -1), ("Error", -1)],
)
def test_parse_binary(reply, answer):
    assert ref.parse_binary(reply)[0] == answer


def test_text_leaf_letter():
    cmap = ref.choice_map(["sooty albatross", "black-footed albatross", "a", "b"])
    assert ref.text_leaf_letter(cmap, "Black-footed Albatross") == "B"
    assert ref.text_leaf_letter(cmap, "Black-footed Albatross", lowercase_label=True) == "B"
    upper = ref.choice_map(["Sooty Albatross", "Black-footed Albatross"])
    assert ref.text_leaf_letter(upper, "Black-footed Albatross") == "B"
    # LLaVA lower-cases the label but not the option
    assert ref.text_leaf_letter(upper, "Black-footed Albatross", lowercase_label=True) == "Unknown"


# ---------------------------------------------------------------- option shuffling


def test_shuffle_equals_the_module_generator_seeded_in_main():
    entries = [_entry(4) for _ in range(5)]
    state = random.getstate()
    try:
        random.seed(42)
        script = []
        for entry in [_entry(4) for _ in range(5)]:
            maps = {}
            for key, ckey in zip(*ref.level_keys(entry, numeric=False)):
                choices = entry[ckey]
                random.shuffle(choices)
                maps[key] = {chr(65 + i): o for i, o in enumerate(choices)}
            script.append(maps)
    finally:
        random.setstate(state)
    got = ref.shuffled_choice_maps(entries, numeric=False)
    assert got == script
    assert got == ref.shuffled_choice_maps(entries, numeric=False)  # deterministic
    assert got != ref.shuffled_choice_maps(entries, seed=43, numeric=False)


def test_level_order_string_versus_numeric():
    entry = _entry(11)
    keys_s, ckeys_s = ref.level_keys(entry, numeric=False)
    keys_n, _ = ref.level_keys(entry, numeric=True)
    assert keys_s[:4] == ["level1", "level10", "level11", "level2"]
    assert ckeys_s[:4] == ["choices_level1", "choices_level10", "choices_level11", "choices_level2"]
    assert keys_n == [f"level{k}" for k in range(1, 12)]
    s = ref.shuffled_choice_maps([entry], numeric=False)[0]
    n = ref.shuffled_choice_maps([entry], numeric=True)[0]
    assert s["level1"] == n["level1"]  # the first draw is the same
    assert s["level2"] != n["level2"] or s["level10"] != n["level10"]
    # the same draws, used in another order: with four options at every level the next entry
    # gets the same orders either way
    after_s = ref.shuffled_choice_maps([entry, _entry(4)], numeric=False)[1]
    after_n = ref.shuffled_choice_maps([entry, _entry(4)], numeric=True)[1]
    assert after_s == after_n
    by_s = ref.shuffled_indices([[4] * 11], numeric=False)[0]
    by_n = ref.shuffled_indices([[4] * 11], numeric=True)[0]
    assert by_s != by_n and sorted(by_s) == sorted(by_n)
    # up to nine levels the two orders agree
    nine = _entry(9)
    assert ref.shuffled_choice_maps([nine], numeric=False) == ref.shuffled_choice_maps(
        [nine], numeric=True
    )


def test_a_level_without_answer_draws_nothing():
    with_none = ref.shuffled_choice_maps([_entry(4, none_at=(2,)), _entry(4)], numeric=False)
    without = _entry(4)
    del without["level2"], without["choices_level2"]
    plain = ref.shuffled_choice_maps([without, _entry(4)], numeric=False)
    assert "level2" not in with_none[0]
    assert with_none == plain


def test_shuffled_indices_match_the_shuffled_names():
    entries = [_entry(11, none_at=(3,)), _entry(4), _entry(7, none_at=(7,))]
    depths = [sum(key.startswith("level") for key in e) for e in entries]
    counts = [
        [None if e[f"level{k}"] is None else 4 for k in range(1, depth + 1)]
        for e, depth in zip(entries, depths)
    ]
    for numeric in (False, True):
        maps = ref.shuffled_choice_maps(entries, numeric=numeric)
        orders = ref.shuffled_indices(counts, numeric=numeric)
        for entry, m, o in zip(entries, maps, orders):
            for k, order in enumerate(o):
                key = f"level{k + 1}"
                if not order:
                    assert key not in m
                    continue
                names = entry[f"choices_{key}"]
                assert list(m[key].values()) == [names[j] for j in order]


# ---------------------------------------------------------------- prompts and layouts


def test_question_texts():
    cmap = ref.choice_map(["a", "b"])
    q = ref.question("Q?", cmap)
    assert q == "Q?\nA. a\nB. b\nAnswer with the option's letter from the given choices directly."
    assert ref.question_llava("Q?", cmap) == "\n" + q
    assert (
        ref.question_taxonomy_qwen("Q?", cmap)
        == "Q?\nA. a\nB. bAnswer with the option's letter from the given choices directly."
    )
    cot = ref.question("Q?", cmap, ref.COT_QWEN + ref.INSTRUCTION)
    assert cot == (
        "Q?\nA. a\nB. b\nLet\u2019s think step by step. Answer with the option's letter from the "
        "given choices directly."
    )
    assert "\u2019" in ref.COT_QWEN and "'" in ref.COT_ASCII
    assert ref.binary_question(1, "diomedeidae") == (
        "The bird in the image belongs to the family diomedeidae.\n"
        "Is this statement correct? Please answer Yes or No."
    )
    assert ref.binary_question(5, "x").startswith("The bird in the image belongs to the species x.")
    assert ref.og_llm_base_prompt(q) == q + " Answer:"


def test_message_layouts():
    msgs = ref.qwen_messages("T", image="img.jpg")
    assert msgs[0] == {"role": "system", "content": ref.SYSTEM_EXPERT}
    assert [c["type"] for c in msgs[1]["content"]] == ["image", "text"]
    assert [c["type"] for c in ref.qwen_messages("T", system=ref.SYSTEM_HELPFUL)[1]["content"]] == [
        "text"
    ]
    gpt = ref.gpt_messages("T", "QUJD")
    assert gpt[0]["content"] == "You are a helpful assistant."
    assert [c["type"] for c in gpt[1]["content"]] == ["text", "image_url"]
    assert gpt[1]["content"][1]["image_url"] == {
        "url": "data:image/jpeg;base64,QUJD",
        "detail": "low",
    }
    assert ref.og_llm_messages("T")[1] == {"role": "user", "content": "T"}
    assert ref.llava_text_prompt("T") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nT<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ref.llava_image_prompt("\nT", None) == (
        "<|im_start|>user\n<image>\nT<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llava_ov_hf_template_drops_a_plain_string_system_message():
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}
    plain = ref.llava_ov_hf_render([{"role": "system", "content": "S"}, user], True)
    assert plain == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<image>\nQ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    listed = ref.llava_ov_hf_render(
        [{"role": "system", "content": [{"type": "text", "text": "S"}]}, user], True
    )
    assert listed.startswith("<|im_start|>system\nS<|im_end|>\n")


def test_internvl_query():
    q = ref.internvl_query("Q?", num_patches=3)
    assert q.startswith("<|im_start|>system\n" + ref.INTERNVL_SYSTEM + "<|im_end|>\n")
    assert q.count("<IMG_CONTEXT>") == 3 * 256
    assert "<|im_start|>user\n<img><IMG_CONTEXT>" in q
    assert q.endswith("</img>\nQ?<|im_end|>\n<|im_start|>assistant\n")
    # the image scripts write "<image>\n" themselves: no second placeholder
    assert ref.internvl_query("<image>\nQ?", num_patches=1) == ref.internvl_query("Q?", 1)
    text = ref.internvl_query("Q?", num_patches=None)
    assert "<img>" not in text and "<|im_start|>user\nQ?<|im_end|>" in text
    assert ref.internvl_response(" B<|im_end|>junk") == "B"
    assert ref.internlm_prompt("Q?").startswith("<s><|im_start|>system\nYou are an AI assistant")


def test_tokenizer_image_token():
    def tok(text):
        return [ord(c) for c in text]

    assert ref.tokenizer_image_token("ab<image>cd", tok) == [97, 98, -200, 99, 100]

    def tok_bos(text):
        return [1] + [ord(c) for c in text]

    # with a BOS: kept once, and each later piece loses its first id (the BOS of that piece)
    assert ref.tokenizer_image_token("ab<image>cd", tok_bos, bos_token_id=1) == [
        1,
        97,
        98,
        -200,
        99,
        100,
    ]


# ---------------------------------------------------------------- metrics


def _row(truth, pred, start=1):
    row = {}
    for k, (t, p) in enumerate(zip(truth, pred), start=start):
        row[f"ground_truth_level{k}"] = t
        row[f"predicted_level{k}"] = p
    return row


def test_metrics_by_hand():
    truths = [["a", "b", "c"], ["a", "b", "c"]]
    preds = [["A", "b", "x"], ["a", "x", "c"]]
    assert ref.hca(preds, truths) == 0
    assert ref.por(preds, truths) == pytest.approx(200 / 3)
    assert ref.strict_por(preds, truths) == pytest.approx(50)
    assert ref.tor(preds, truths) == pytest.approx(25)
    assert ref.leaf_accuracy(preds, truths) == pytest.approx(50)
    assert ref.layer_accuracy(preds, truths) == {1: 100.0, 2: 50.0, 3: 50.0}
    assert ref.hca([["A", "B"]], [["a", "b"]]) == 100
    assert ref.hca([["a", "b", "c"]], [["a", "b"]]) == 0  # lengths differ
    assert ref.tor([["a"]], [["a"]]) == 0  # no pair in a one-level path


def test_extract_drops_level1_except_for_cub_and_stops_at_a_gap():
    row = _row(["root", "x", "y"], ["root", "x", "Unknown"])
    truths, preds = ref.extract_hierarchies([row])
    assert truths == [["x", "y"]] and preds == [["x", "Unknown"]]
    truths, preds = ref.extract_hierarchies([row], cub=True)
    assert truths == [["root", "x", "y"]]
    gap = _row(["r", "x", "y", "z"], ["r", "x", "y", "z"])
    del gap["ground_truth_level3"], gap["predicted_level3"]
    assert ref.extract_hierarchies([gap]) == ([["x"]], [["x"]])
    none = _row(["r", "x", None, "z"], ["r", "x", "q", "z"])
    assert ref.extract_hierarchies([none]) == ([["x", "z"]], [["x", "q", "z"]])


def test_binary_extract_takes_the_first_yes_in_asked_order():
    row = {
        "ground_truth_level1": "a1",
        "choices_level1": {"A": "b1", "B": "a1", "C": "c1"},
        "b1": 0,
        "a1": 1,
        "c1": 1,
        "ground_truth_level2": "a2",
        "choices_level2": {"A": "a2", "B": "b2"},
        "a2": 0,
        "b2": -1,
        "ground_truth_level3": "Sparrow",
        "choices_level3": {"A": "Sparrow"},
        "Sparrow": 1,  # stored under its own spelling, looked up lower-cased: never found
    }
    truths, preds = ref.extract_binary_hierarchies([row])
    assert truths == [["a1", "a2", "Sparrow"]]
    assert preds == [["a1", None, None]]
    m = ref.paper_metrics([row], binary=True)
    assert m["hca"] == 0 and m["por"] == pytest.approx(100 / 3) and m["leaf"] == 0
