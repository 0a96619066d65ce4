"""Write captions.txt: caption-like Chinese phrases from jieba's word list, for int8 calibration.

Run once with the dev venv (jieba is a dev dependency): `.venv/bin/python converters/data/calibration/make_captions.py`.
The words are drawn with a fixed seed from the most frequent words of each part of
speech in jieba 0.42.1's dict.txt (MIT), weighted by their frequency, and put into
short photo-caption templates; lengths run from a few characters to a long sentence.
"""

import random
from pathlib import Path

import jieba

COUNT = 64
# Part-of-speech tag in dict.txt → how many of its most frequent words to draw from.
POOLS = {"n": 3000, "v": 1000, "a": 400, "ns": 400, "m": 100}
TEMPLATES = (
    "{n}",
    "{a}的{n}",
    "{n}和{n}",
    "{ns}的{n}",
    "一个{n}在{v}",
    "{n}上的{a}{n}",
    "{n}旁边有一个{a}的{n}",
    "{v}{n}的{n}",
    "{a}的{n}在{ns}{v}{n}",
    "{m}个{n}，背景是{a}的{n}",
    "一张{n}的照片，{n}和{n}在{v}，远处是{a}的{ns}",
    "{ns}{n}，{a}的{n}旁边是{n}，{n}正在{v}{n}，画面{a}",
)


def pools(dictionary: Path) -> dict[str, tuple[list[str], list[float]]]:
    words: dict[str, list[tuple[int, str]]] = {tag: [] for tag in POOLS}
    for line in dictionary.read_text(encoding="utf-8").splitlines():
        word, frequency, tag = line.split()
        if tag in words and len(word) > 1:
            words[tag].append((int(frequency), word))
    chosen = {tag: sorted(entries, reverse=True)[: POOLS[tag]] for tag, entries in words.items()}
    return {tag: ([w for _, w in entries], [f for f, _ in entries]) for tag, entries in chosen.items()}


def main() -> None:
    rng = random.Random(0)
    words = pools(Path(jieba.__file__).parent / "dict.txt")

    def fill(template: str) -> str:
        parts = template.split("{")
        text = parts[0]
        for part in parts[1:]:
            tag, rest = part.split("}", 1)
            text += rng.choices(*words[tag])[0] + rest
        return text

    captions: list[str] = []
    while len(captions) < COUNT:
        caption = fill(TEMPLATES[len(captions) % len(TEMPLATES)])
        if caption not in captions:
            captions.append(caption)
    Path(__file__).with_name("captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
