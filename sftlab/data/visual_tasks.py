"""A synthetic visual instruction dataset, generated in-process (nothing is downloaded).

Small RGB images (``size`` x ``size``, 32 by default) show coloured shapes on a white
background; every question has one exact answer read off the generator's own scene:

=========  ==============================================  ===========================
task       image                                           answer
=========  ==============================================  ===========================
shape      one shape in one of four quadrants              ``circle`` / ``square`` / ``triangle``
colour     one shape                                       ``red`` / ``green`` / ``blue`` / ``yellow``
count      1-4 copies of one shape, one per quadrant       ``1`` .. ``4``
position   one shape                                       ``top left`` .. ``bottom right``
caption    one shape (stage-1 alignment data)              ``A red circle in the top left.``
=========  ==============================================  ===========================

Each task has several question templates; the **last template of each task is held out**
(never asked in training), and some **colour-shape pairs are held out** (never drawn in
training: ``HELDOUT_PAIRS``). ``generate_visual_tasks`` returns the three splits as
``VisualItem`` lists; ``write_visual_tasks`` writes their PNGs and LLaVA JSON files (read
back by ``sftlab.data.images.read_visual_file``) so training goes through the same readers
as real data. ``write_multiinstruct_sample`` writes a four-row MultiInstruct task file
(``sftlab.data.images.read_multiinstruct``) with its images and a templates file.

With ``jitter=True`` each shape gets a random size and place inside its quadrant, so scenes
are (almost) never drawn twice; ``heldout_image=True`` adds a fourth split,
``heldout_image``: training templates and pairs on images whose pixels no training image
has (checked by hash, redrawn otherwise). Without jitter only 40 one-shape scenes exist,
so "new images" would be the training images again.

>>> items = generate_visual_tasks(n_train=8, n_eval=4, seed=0)
>>> sorted(items), len(items["train"])
(['heldout_combination', 'heldout_template', 'train'], 8)
>>> item = items["train"][0]
>>> item.image.size, item.task in TASKS
((32, 32), True)
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
HELDOUT_PAIRS = (("blue", "triangle"), ("yellow", "circle"))
"""Colour-shape pairs never drawn in the training split (the held-out combinations)."""

TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("What shape is in the image?", "Name the shape you see.", "Which shape is drawn here?",
              "Tell me the shape in this picture."),
    "colour": ("What colour is the shape?", "Which colour is the object?", "Name the colour of the shape.",
               "What is the colour of the thing drawn?"),
    "count": ("How many shapes are there?", "Count the shapes in the image.", "How many objects do you see?",
              "What is the number of shapes shown?"),
    "position": ("Where is the shape?", "In which corner is the object?", "Where in the image is the shape?",
                 "Which part of the picture holds the shape?"),
    "caption": ("Describe the image.", "Write a short caption for this picture.", "What does the image show?",
                "Give a one-line description of the image."),
}
"""Question templates per task; the last of each is held out (``heldout_template`` split)."""
TASKS = tuple(TEMPLATES)


@dataclass
class VisualItem:
    """One generated question about one image, with its exact answer."""

    image: object  # PIL.Image.Image, RGB
    question: str
    answer: str
    task: str
    split: str
    scene: dict = field(default_factory=dict)
    """What was drawn: ``{"shape", "colour", "count", "position"}``."""

    def to_llava(self, image_path: str, id: str) -> dict:
        """The item as a LLaVA row (the question after the ``<image>`` placeholder)."""
        return {"id": id, "image": image_path, "task": self.task, "split": self.split,
                "conversations": [{"from": "human", "value": f"<image>\n{self.question}"},
                                  {"from": "gpt", "value": self.answer}]}


def draw_scene(shape: str, colour: str, cells: list[int], size: int = 32, rng: random.Random | None = None):
    """An RGB ``size`` x ``size`` image with one ``colour`` ``shape`` in each quadrant of
    ``cells`` (0 top left, 1 top right, 2 bottom left, 3 bottom right). With ``rng``, each
    shape's side is 60-100% of the room in its quadrant and its place inside it is random
    (``jitter``); without, every shape fills its quadrant's room."""
    from PIL import Image, ImageDraw  # lazy: only the generator needs Pillow

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    half, margin = size // 2, max(1, size // 16)
    for cell in cells:
        side = half - 2 * margin
        dx = dy = 0
        if rng is not None:
            shrunk = max(3, round(side * rng.uniform(0.6, 1.0)))
            dx, dy, side = rng.randint(0, side - shrunk), rng.randint(0, side - shrunk), shrunk
        left, top = (cell % 2) * half + margin + dx, (cell // 2) * half + margin + dy
        right, bottom = left + side - 1, top + side - 1
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def _pairs(split: str) -> list[tuple[str, str]]:
    everything = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "heldout_combination":
        return list(HELDOUT_PAIRS)
    return [pair for pair in everything if pair not in HELDOUT_PAIRS]


def _templates(task: str, split: str) -> tuple[str, ...]:
    return TEMPLATES[task][-1:] if split == "heldout_template" else TEMPLATES[task][:-1]


def make_item(rng: random.Random, task: str, split: str, size: int = 32, jitter: bool = False) -> VisualItem:
    """One random item of ``task`` for ``split`` (its colour-shape pair and template drawn
    from the split's allowed ones; ``heldout_image`` draws as ``train`` does)."""
    colour, shape = rng.choice(_pairs(split))
    if task == "count":
        count = rng.randint(1, 4)
        cells = sorted(rng.sample(range(4), count))
    else:
        count, cells = 1, [rng.randrange(4)]
    position = POSITIONS[cells[0]]
    answer = {"shape": shape, "colour": colour, "count": str(count), "position": position,
              "caption": f"A {colour} {shape} in the {position}."}[task]
    image = draw_scene(shape, colour, cells, size, rng if jitter else None)
    return VisualItem(image, rng.choice(_templates(task, split)),
                      answer, task, split, {"shape": shape, "colour": colour, "count": count, "position": position})


def generate_visual_tasks(n_train: int = 512, n_eval: int = 64, *, seed: int = 0, size: int = 32,
                          tasks: tuple[str, ...] = ("shape", "colour", "count", "position"),
                          jitter: bool = False, heldout_image: bool = False) -> dict[str, list[VisualItem]]:
    """``{"train", "heldout_template", "heldout_combination"}`` (and ``heldout_image``) ->
    items, tasks in turn.

    ``train`` uses the training templates and pairs; ``heldout_template`` the held-out
    template of each task on training pairs; ``heldout_combination`` training templates on
    the held-out pairs; ``heldout_image`` (when asked; use ``jitter``) training templates
    and pairs on images no training item shows. The same seed gives the same items.
    """
    unknown = [t for t in tasks if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown visual tasks {unknown} (choose from: {', '.join(TASKS)})")
    rng = random.Random(seed)
    sizes = {"train": n_train, "heldout_template": n_eval, "heldout_combination": n_eval}
    items = {split: [make_item(rng, tasks[i % len(tasks)], split, size, jitter) for i in range(n)]
             for split, n in sizes.items()}
    if heldout_image:
        seen = {_pixels_hash(item.image) for item in items["train"]}
        items["heldout_image"] = [_unseen_item(rng, tasks[i % len(tasks)], size, jitter, seen) for i in range(n_eval)]
    return items


def _pixels_hash(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def _unseen_item(rng: random.Random, task: str, size: int, jitter: bool, seen: set[str],
                 attempts: int = 1000) -> VisualItem:
    """A ``heldout_image`` item whose image no training item has (redrawn until it is)."""
    for _ in range(attempts):
        item = make_item(rng, task, "heldout_image", size, jitter)
        if _pixels_hash(item.image) not in seen:
            return item
    raise ValueError(f"no {task} image unseen in training after {attempts} draws: use jitter=True "
                     "or fewer training items")


def write_visual_tasks(directory: str | Path, items: dict[str, list[VisualItem]]) -> dict[str, Path]:
    """Write each split's images (``images/<split>-<i>.png``) and LLaVA rows (``<split>.json``,
    image paths relative to ``directory``); returns ``{split: json path}``."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    written = {}
    for split, split_items in items.items():
        rows = []
        for i, item in enumerate(split_items):
            name = f"images/{split}-{i}.png"
            item.image.save(directory / name)
            rows.append(item.to_llava(name, f"{split}-{i}"))
        written[split] = directory / f"{split}.json"
        written[split].write_text(json.dumps(rows, indent=1) + "\n")
    return written


MULTIINSTRUCT_SAMPLE = (  # (id, task, scene: shape, colour, cells; inputs, output)
    ("mi-vqa", "vqa", ("circle", "red", [0]), {"question": "What colour is the circle?"}, "red"),
    ("mi-caption", "caption", ("square", "blue", [3]), {}, "A blue square in the bottom right."),
    ("mi-class", "classification", ("triangle", "green", [1]), {"options": ["circle", "square", "triangle"]},
     "triangle"),
    ("mi-count", "count", ("square", "yellow", [0, 1, 2]), {"shape": "square"}, "3"),
)
MULTIINSTRUCT_SAMPLE_TEMPLATES = {"count": ["How many {shape}s are in the image?", "Count the {shape}s you see.",
                                            "What is the number of {shape}s shown?"]}
"""The sample's one task beyond ``sftlab.data.images.TASK_TEMPLATES``."""


def write_multiinstruct_sample(directory: str | Path) -> dict[str, Path]:
    """Four scenes as MultiInstruct task rows (``vqa``, ``caption``, ``classification`` on
    the built-in templates; ``count`` on its own templates file):
    ``multiinstruct_sample.jsonl``, its PNGs in ``images/`` and
    ``multiinstruct_templates.json``; returns ``{"data", "templates"}``. This is how
    ``examples/data/`` was written."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for id, task, (shape, colour, cells), inputs, output in MULTIINSTRUCT_SAMPLE:
        name = f"images/{id}.png"
        draw_scene(shape, colour, cells).save(directory / name)
        lines.append(json.dumps({"id": id, "task": task, "image": name, "inputs": inputs, "output": output}))
    written = {"data": directory / "multiinstruct_sample.jsonl",
               "templates": directory / "multiinstruct_templates.json"}
    written["data"].write_text("\n".join(lines) + "\n")
    written["templates"].write_text(json.dumps(MULTIINSTRUCT_SAMPLE_TEMPLATES, indent=1) + "\n")
    return written


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """``python -m sftlab.data.visual_tasks DIR [--n-train N] [--n-eval N] [--tasks caption]
    [--jitter] [--heldout-image]``:
    write the splits (PNGs + LLaVA JSON) into ``DIR`` and print their paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sftlab.data.visual_tasks", description=main.__doc__)
    parser.add_argument("directory")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", default=["shape", "colour", "count", "position"], choices=TASKS)
    parser.add_argument("--jitter", action="store_true", help="random shape sizes and places")
    parser.add_argument("--heldout-image", action="store_true", help="also a heldout_image split")
    args = parser.parse_args(argv)
    items = generate_visual_tasks(args.n_train, args.n_eval, seed=args.seed, size=args.size, tasks=tuple(args.tasks),
                                  jitter=args.jitter, heldout_image=args.heldout_image)
    written = write_visual_tasks(args.directory, items)
    for split, path in written.items():
        print(f"{split}: {path} ({len(items[split])} items)")
    return written


if __name__ == "__main__":
    main()
