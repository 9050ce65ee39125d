"""Prompt files (.txt, JSON, JSONL, CSV) into submit items."""
from __future__ import annotations

import pytest

from sdq.exceptions import PromptFileError
from sdq.prompts import parse_prompts


def test_txt_skips_blank_lines_and_comments():
    assert parse_prompts("a cat\n\n# a comment\n  a dog  \n", "p.txt") == [{"prompt": "a cat"}, {"prompt": "a dog"}]


def test_json_list_of_strings_and_of_objects():
    assert parse_prompts('["a", "b"]', "p.json") == [{"prompt": "a"}, {"prompt": "b"}]
    items = parse_prompts('[{"prompt": "a", "seed": 3, "steps": 7}, "b"]', "p.json")
    assert items == [{"prompt": "a", "seed": 3, "steps": 7}, {"prompt": "b"}]


def test_jsonl_with_per_item_overrides():
    text = '{"prompt": "a", "negative_prompt": "blur", "width": 128}\n\n{"prompt": "b", "guidance_scale": 3}\n'
    assert parse_prompts(text, "p.jsonl") == [{"prompt": "a", "negative_prompt": "blur", "width": 128},
                                              {"prompt": "b", "guidance_scale": 3.0}]


def test_csv_with_per_item_overrides_and_empty_cells():
    text = ("prompt,negative_prompt,seed,steps,width,height,scheduler,init_image\n"
            "\"a fox, in snow\",blurry,11,5,128,64,ddim,\n"
            "a bird,,,,,,,uploads/x.png\n")
    items = parse_prompts(text, "p.csv")
    assert items == [
        {"prompt": "a fox, in snow", "negative_prompt": "blurry", "seed": 11, "steps": 5, "width": 128,
         "height": 64, "scheduler": "ddim"},
        {"prompt": "a bird", "init_image": "uploads/x.png"},
    ]
    assert isinstance(items[0]["seed"], int) and isinstance(items[0]["steps"], int)


@pytest.mark.parametrize("name, text, where", [
    ("p.csv", "prompt,colour\na,red\n", "p.csv:2"),
    ("p.csv", "text\na\n", "p.csv"),
    ("p.csv", "prompt,seed\na,many\n", "p.csv:2"),
    ("p.csv", "prompt,guidance_scale\na,nan\n", "p.csv:2"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', "p.jsonl:2"),
    ("p.json", '{"prompt": "a"}', "p.json"),
    ("p.json", '[{"seed": 1}]', "p.json[0]"),
])
def test_bad_prompt_files_name_the_place(name, text, where):
    with pytest.raises(PromptFileError) as err:
        parse_prompts(text, name)
    assert str(err.value).startswith(where)
