"""Dataset readers: each turns one benchmark's on-disk layout into a ``DatasetIndex`` of ``Sequence`` objects.

Every reader is ``read_KIND(root, split=None) -> DatasetIndex`` and is registered under ``KIND`` (so
``load_dataset("KIND:PATH", split=...)`` finds it). Readers list frames as paths and never open an image: annotation
files are parsed with plain string splitting and numpy, and a frame directory is listed once per sequence to check
that every frame the annotations refer to exists.

Conventions shared by all readers (layouts and sources: ``datasets/*.md``):

- Boxes are image ``xywh`` in pixels; a frame whose box is unknown has a NaN row.
- ``visible`` is the dataset's own visibility AND a finite box of positive size.
- A missing or malformed file raises ``DatasetFormatError`` naming the file (and the line, for a bad line); a frame
  that the annotations refer to but that is missing on disk raises ``DatasetFormatError`` naming the sequence and
  the frame path.
- A sequence without any valid frame is skipped (not fatal): it is recorded in ``DatasetIndex.skipped``
  (name -> reason) and one ``UserWarning`` per reader call lists the skipped sequences.
- Sequences are sorted by name. A bad ``split`` argument raises ``ValueError``.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from ct_ray.boxes import is_valid_xywh
from ct_ray.data.sequences import DatasetFormatError, DatasetIndex, Sequence, register_dataset

__all__ = [
    "COCO_MIN_BOX_SIZE",
    "GOT10K_VOT_EXCLUDE_FILE",
    "PLAIN_IMAGE_EXTENSIONS",
    "read_box_file",
    "read_coco",
    "read_flags",
    "read_got10k",
    "read_lasot",
    "read_plain",
    "read_synthetic",
    "read_trackingnet",
    "read_uav123",
]

COCO_MIN_BOX_SIZE = 1.0
"""COCO annotations whose box is narrower or lower than this (pixels) are skipped."""

GOT10K_VOT_EXCLUDE_FILE = "got10k_vot_exclude.txt"
"""Read from the GOT-10k root by ``split="train-novot"``: names of train sequences to leave out, one per line."""

PLAIN_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


# ----------------------------------------------------------------------------------------------------------- files
def _read_text(path: Path, what: str = "file") -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DatasetFormatError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DatasetFormatError(f"{what} is a directory, expected a file: {path}") from None
    except OSError as error:
        raise DatasetFormatError(f"cannot read {what} {path}: {error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DatasetFormatError(f"{path} line {line}: not UTF-8 text") from None


def _content_lines(text: str) -> list[str]:
    """The file's lines without trailing blank lines (a final newline or stray whitespace at the end is fine)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _tokens(line: str) -> list[str]:
    return line.replace(",", " ").split()


def read_box_file(path: str | os.PathLike, allow_nan: bool = False) -> np.ndarray:
    """An annotation file of one ``x, y, w, h`` box per line as a float64 array (N, 4).

    Numbers may be separated by commas, spaces or tabs (or a mix). Trailing blank lines are ignored; any other
    line must hold exactly four numbers. ``allow_nan`` accepts ``NaN`` values (absent targets, e.g. UAV123);
    infinities are always rejected. Errors name the file and the 1-based line number.
    """
    path = Path(path)
    lines = _content_lines(_read_text(path, "annotation file"))
    if not lines:
        raise DatasetFormatError(f"{path}: empty annotation file (expected one x,y,w,h box per line)")
    rows = [_tokens(line) for line in lines]
    for number, row in enumerate(rows, 1):
        if len(row) != 4:
            raise DatasetFormatError(f"{path} line {number}: expected 4 numbers, got {lines[number - 1]!r}")
    try:
        boxes = np.array(rows, dtype=np.float64)
    except ValueError:
        for number, row in enumerate(rows, 1):
            try:
                [float(value) for value in row]
            except ValueError:
                raise DatasetFormatError(
                    f"{path} line {number}: expected 4 numbers, got {lines[number - 1]!r}") from None
        raise  # pragma: no cover - numpy and float() disagree
    finite = np.isfinite(boxes)
    bad = ~finite.all(axis=1) if not allow_nan else (np.isinf(boxes)).any(axis=1)
    if bad.any():
        number = int(np.flatnonzero(bad)[0]) + 1
        allowed = "finite numbers or NaN" if allow_nan else "finite numbers"
        raise DatasetFormatError(f"{path} line {number}: expected 4 {allowed}, got {lines[number - 1]!r}")
    return boxes


def _line_of_token(text: str, index: int) -> tuple[int, str]:
    count = 0
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        count += len(_tokens(line))
        if count > index:
            return number, line
    return len(lines), lines[-1] if lines else ""  # pragma: no cover - index is always in range


def _read_ints(path: Path, expected: int | None, low: int, high: int, what: str) -> np.ndarray:
    """Integers in [low, high], one per line or comma / space separated; errors name the file and the line."""
    path = Path(path)
    text = _read_text(path, f"{what} file")
    tokens = _tokens(text)
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        values = None
    if values is None or ((values < low) | (values > high)).any():
        for index, token in enumerate(tokens):
            try:
                ok = low <= int(token) <= high
            except ValueError:
                ok = False
            if not ok:
                number, line = _line_of_token(text, index)
                raise DatasetFormatError(f"{path} line {number}: expected {what} values in {low}..{high}, got "
                                         f"{token!r} in {line.strip()[:80]!r}")
        values = np.array([int(token) for token in tokens], dtype=np.int64)
    if expected is not None and len(values) != expected:
        raise DatasetFormatError(f"{path}: expected {expected} {what} values (one per frame), got {len(values)}")
    return values


def read_flags(path: str | os.PathLike, expected: int | None = None) -> np.ndarray:
    """A file of 0/1 flags as a bool array: one per line (GOT-10k ``absence.label``) or comma / space separated on
    one line (LaSOT ``full_occlusion.txt``); trailing newlines and whitespace are fine. ``expected`` is the number of
    flags required (the sequence length), ``None`` for any. Errors name the file (and the line of a bad value)."""
    return _read_ints(Path(path), expected, 0, 1, "0/1 flag").astype(bool)


def _read_name_list(path: Path) -> list[tuple[int, str]]:
    """A list of names, one per line (blank lines ignored), with their line numbers; duplicates rejected."""
    seen: dict[str, int] = {}
    names = []
    for number, line in enumerate(_read_text(path, "sequence list").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DatasetFormatError(f"{path} line {number}: sequence {name!r} already listed on line {seen[name]}")
        seen[name] = number
        names.append((number, name))
    return names


# ---------------------------------------------------------------------------------------------------------- frames
def _listdir(directory: Path, sequence: str) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        raise DatasetFormatError(f"sequence {sequence}: frame directory not found: {directory}") from None
    except NotADirectoryError:
        raise DatasetFormatError(f"sequence {sequence}: not a directory: {directory}") from None


def _frame_paths(sequence: str, directory: Path, names: list[str], listing: set[str] | None = None) -> list[str]:
    """Full paths of ``names`` in ``directory``, after checking (against one directory listing) that all exist."""
    if listing is None:
        listing = _listdir(directory, sequence)
    if not listing.issuperset(names):
        missing = [name for name in names if name not in listing]
        raise DatasetFormatError(f"sequence {sequence}: missing frame {directory / missing[0]} "
                                 f"({len(missing)} of {len(names)} annotated frames missing)")
    prefix = os.path.join(str(directory), "")
    return [prefix + name for name in names]


def _count_matching(listing: Iterable[str], pattern: re.Pattern) -> int:
    return sum(1 for name in listing if pattern.fullmatch(name))


def _first_frame_only(first_box: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (NaN after frame 0) and visibility (frame 0 only) of a test split that gives only the first box."""
    boxes = np.full((num_frames, 4), np.nan)
    boxes[0] = first_box
    visible = np.zeros(num_frames, dtype=bool)
    visible[0] = bool(is_valid_xywh(boxes[0]))
    return boxes, visible


# -------------------------------------------------------------------------------------------------------- indexing
class _Collector:
    """Collects a reader's sequences, skips the ones without a valid frame, and builds the sorted index."""

    def __init__(self, dataset: str, root: Path) -> None:
        self.dataset, self.root = dataset, root
        self.sequences: dict[str, Sequence] = {}
        self.skipped: dict[str, str] = {}

    def add(self, sequence: Sequence) -> None:
        if sequence.name in self.sequences or sequence.name in self.skipped:
            raise DatasetFormatError(f"{self.dataset}: two sequences named {sequence.name!r} under {self.root}")
        valid = sequence.valid
        if valid.any():
            self.sequences[sequence.name] = sequence
            return
        hidden = int((~sequence.visible).sum())
        invalid = int((~is_valid_xywh(sequence.boxes)).sum())
        self.skip(sequence.name, f"no valid frame ({len(sequence)} frames: {hidden} not visible, "
                                 f"{invalid} without a finite box of positive size)")

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason

    def index(self) -> DatasetIndex:
        if not self.sequences and not self.skipped:
            raise DatasetFormatError(f"{self.dataset}: no sequences found under {self.root} "
                                     f"(see datasets/{self.dataset}.md for the expected layout)")
        if self.skipped:
            names = sorted(self.skipped)
            shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
            warnings.warn(f"{self.dataset}: skipped {len(names)} sequence(s) without a valid frame: {shown} "
                          f"(reasons in DatasetIndex.skipped)", UserWarning, stacklevel=3)
        sequences = [self.sequences[name] for name in sorted(self.sequences)]
        return DatasetIndex(self.dataset, str(self.root), sequences, dict(sorted(self.skipped.items())))


def _subdirectories(directory: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except FileNotFoundError:
        raise DatasetFormatError(f"directory not found: {directory}") from None
    return [Path(entry.path) for entry in entries if entry.is_dir() and not entry.name.startswith(".")]


def _check_split(dataset: str, split: str | None, allowed: Iterable[str | None]) -> None:
    allowed = tuple(allowed)
    if split not in allowed:
        raise DatasetFormatError(f"{dataset}: unknown split {split!r}; expected one of {list(allowed)}")


# ----------------------------------------------------------------------------------------------------------- LaSOT
_LASOT_SPLIT_FILES = {"train": "training_set.txt", "test": "testing_set.txt"}


def _is_lasot_sequence(directory: Path) -> bool:
    return (directory / "groundtruth.txt").is_file() or (directory / "img").is_dir()


def _lasot_sequence_dirs(root: Path, split: str | None, dataset: str) -> dict[str, Path]:
    """name -> directory, for ``root/<class>/<class>-<k>`` (or flat ``root/<class>-<k>``) sequences."""
    if split is None:
        found: dict[str, Path] = {}
        for entry in _subdirectories(root):
            candidates = [entry] if _is_lasot_sequence(entry) else [
                child for child in _subdirectories(entry) if _is_lasot_sequence(child)]
            for directory in candidates:
                if directory.name in found:
                    raise DatasetFormatError(f"{dataset}: sequence {directory.name!r} found twice: "
                                             f"{found[directory.name]} and {directory}")
                found[directory.name] = directory
        return found
    _check_split(dataset, split, (None, *_LASOT_SPLIT_FILES))
    list_file = root / _LASOT_SPLIT_FILES[split]
    resolved = {}
    for number, name in _read_name_list(list_file):
        nested, flat = root / name.rsplit("-", 1)[0] / name, root / name
        if nested.is_dir():
            resolved[name] = nested
        elif flat.is_dir():
            resolved[name] = flat
        else:
            raise DatasetFormatError(f"{list_file} line {number}: sequence {name!r} not found "
                                     f"(looked for {nested} and {flat})")
    return resolved


def _read_lasot_sequence(name: str, directory: Path, dataset: str, nested: bool) -> Sequence:
    boxes = read_box_file(directory / "groundtruth.txt")
    n = len(boxes)
    occlusion = read_flags(directory / "full_occlusion.txt", n)
    out_of_view = read_flags(directory / "out_of_view.txt", n)
    frames = _frame_paths(name, directory / "img", [f"{i:08d}.jpg" for i in range(1, n + 1)])
    attributes = {
        "class": directory.parent.name if nested else name.rsplit("-", 1)[0],
        "full_occlusion": occlusion,
        "out_of_view": out_of_view,
    }
    nlp = directory / "nlp.txt"
    if nlp.is_file():
        attributes["nlp"] = _read_text(nlp, "language description").strip()
    visible = ~occlusion & ~out_of_view & is_valid_xywh(boxes)
    return Sequence(name, dataset, frames, boxes, visible, attributes)


def _read_lasot_format(root: Path, split: str | None, dataset: str) -> DatasetIndex:
    root = Path(root)
    collector = _Collector(dataset, root)
    for name, directory in _lasot_sequence_dirs(root, split, dataset).items():
        collector.add(_read_lasot_sequence(name, directory, dataset, nested=directory.parent != root))
    return collector.index()


@register_dataset("lasot")
def read_lasot(root: Path, split: str | None = None) -> DatasetIndex:
    """LaSOT (and LaSOT_ext): ``root/<class>/<class>-<k>/{img/%08d.jpg, groundtruth.txt, full_occlusion.txt,
    out_of_view.txt[, nlp.txt]}``; a flat ``root/<class>-<k>/`` layout is accepted too.

    ``split``: ``None`` = every sequence found; ``"train"`` / ``"test"`` = the names in ``root/training_set.txt`` /
    ``root/testing_set.txt``. Visible = not fully occluded and not out of view (and a valid box). Attributes:
    ``class``, the raw ``full_occlusion`` / ``out_of_view`` flags (bool arrays), ``nlp`` when present.
    """
    return _read_lasot_format(root, split, "lasot")


@register_dataset("synthetic")
def read_synthetic(root: Path, split: str | None = None) -> DatasetIndex:
    """The project's synthetic benchmark (``ct-ray data synth``): LaSOT format, read like ``read_lasot``."""
    return _read_lasot_format(root, split, "synthetic")


# --------------------------------------------------------------------------------------------------------- GOT-10k
_GOT10K_FRAME = re.compile(r"\d{8}\.jpg")
_GOT10K_SPLITS = (None, "train", "val", "test", "train-novot")


def _read_meta_info(path: Path) -> dict[str, str]:
    meta = {}
    for line in _read_text(path, "meta info file").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.lstrip().startswith(("[", "#", ";")):
            meta[key.strip()] = value.strip()
    return meta


def _read_got10k_sequence(name: str, directory: Path, split: str) -> Sequence:
    gt = read_box_file(directory / "groundtruth.txt")
    listing = _listdir(directory, name)
    attributes: dict = {"first_frame_only": False}
    if split == "test" and len(gt) == 1:
        n = _count_matching(listing, _GOT10K_FRAME)
        if n == 0:
            raise DatasetFormatError(f"sequence {name}: no %08d.jpg frames in {directory}")
        boxes, visible = _first_frame_only(gt[0], n)
        attributes["first_frame_only"] = True
    else:
        boxes, n = gt, len(gt)
        visible = is_valid_xywh(boxes)
        absence_file = directory / "absence.label"
        if split != "test" or absence_file.is_file():
            absent = read_flags(absence_file, n)
            attributes["absence"] = absent
            visible &= ~absent
        if (directory / "cover.label").is_file():
            cover = _read_ints(directory / "cover.label", n, 0, 8, "cover")
            attributes["cover"] = cover
            visible &= cover > 0
        if (directory / "cut_by_image.label").is_file():
            attributes["cut_by_image"] = read_flags(directory / "cut_by_image.label", n)
    frames = _frame_paths(name, directory, [f"{i:08d}.jpg" for i in range(1, n + 1)], listing)
    if "meta_info.ini" in listing:
        meta = _read_meta_info(directory / "meta_info.ini")
        attributes["meta"] = meta
        if "object_class" in meta:
            attributes["class"] = meta["object_class"]
    return Sequence(name, "got10k", frames, boxes, visible, attributes)


@register_dataset("got10k")
def read_got10k(root: Path, split: str | None = None, *, exclude: Iterable[str] | None = None) -> DatasetIndex:
    """GOT-10k: ``root/{train,val,test}/<seq>/{%08d.jpg, groundtruth.txt, absence.label, cover.label,
    cut_by_image.label, meta_info.ini}``, sequences listed in ``root/<split>/list.txt`` (when a split has no
    ``list.txt``, its sequence directories are used).

    ``split``: ``"train"``, ``"val"`` (the default, ``None``), ``"test"``, or ``"train-novot"``: the train split
    without the sequences named in ``root/got10k_vot_exclude.txt`` (one name per line; the VOT-overlap list used by
    OSTrack's training). ``exclude`` leaves out further names (any split).

    Visible = not absent, cover > 0 where ``cover.label`` exists, and a valid box. The test split gives only frame
    0's box: later frames get NaN boxes and are not visible (``attributes["first_frame_only"] = True``).
    Attributes: ``cover`` (int array, 0..8), ``absence``, ``cut_by_image`` (bool arrays), ``meta`` (meta_info.ini as
    a dict), ``class`` (its ``object_class``), ``first_frame_only``.
    """
    root = Path(root)
    _check_split("got10k", split, _GOT10K_SPLITS)
    split = split or "val"
    excluded = set(exclude or ())
    if split == "train-novot":
        excluded |= {name for _, name in _read_name_list(root / GOT10K_VOT_EXCLUDE_FILE)}
    directory_name = "train" if split == "train-novot" else split
    split_dir = root / directory_name
    if not split_dir.is_dir():
        raise DatasetFormatError(f"got10k: split directory not found: {split_dir}")
    list_file = split_dir / "list.txt"
    if list_file.is_file():
        entries = _read_name_list(list_file)
        for number, name in entries:
            if not (split_dir / name).is_dir():
                raise DatasetFormatError(f"{list_file} line {number}: sequence directory not found: "
                                         f"{split_dir / name}")
        names = [name for _, name in entries]
    else:
        names = [directory.name for directory in _subdirectories(split_dir)]
    collector = _Collector("got10k", root)
    for name in names:
        if name not in excluded:
            collector.add(_read_got10k_sequence(name, split_dir / name, directory_name))
    return collector.index()


# ----------------------------------------------------------------------------------------------------- TrackingNet
_TRACKINGNET_CHUNK = re.compile(r"TRAIN_(\d+)|TEST")
_TRACKINGNET_FRAME = re.compile(r"\d+\.jpg")


def _trackingnet_chunks(root: Path, split: str) -> list[str]:
    if split == "train":
        chunks = sorted((d.name for d in _subdirectories(root) if re.fullmatch(r"TRAIN_\d+", d.name)),
                        key=lambda name: int(name.split("_")[1]))
        if not chunks:
            raise DatasetFormatError(f"trackingnet: no TRAIN_<i> chunk directories under {root}")
        return chunks
    if split == "test":
        chunks = ["TEST"]
    else:
        chunks = [part.strip() for part in split.split(",") if part.strip()]
        bad = [chunk for chunk in chunks if not _TRACKINGNET_CHUNK.fullmatch(chunk)]
        if bad or not chunks:
            raise DatasetFormatError(f"trackingnet: unknown split {split!r}; expected 'train', 'test' or chunk names "
                             f"such as 'TRAIN_3' or 'TRAIN_0,TRAIN_1'")
    for chunk in chunks:
        if not (root / chunk).is_dir():
            raise DatasetFormatError(f"trackingnet: chunk directory not found: {root / chunk}")
    return chunks


@register_dataset("trackingnet")
def read_trackingnet(root: Path, split: str | None = None) -> DatasetIndex:
    """TrackingNet: ``root/<chunk>/anno/<seq>.txt`` and ``root/<chunk>/frames/<seq>/<i>.jpg`` (i = 0, 1, ...; not
    zero-padded) for chunks ``TRAIN_0`` .. ``TRAIN_11`` and ``TEST``.

    ``split``: ``"train"`` (the default, ``None``) = every ``TRAIN_<i>`` chunk present; ``"test"`` = ``TEST``; or
    comma-separated chunk names (``"TRAIN_3"``, ``"TRAIN_0,TRAIN_1"``). Visible = a valid box. ``TEST`` annotations
    give only frame 0's box: later frames get NaN boxes and are not visible (``first_frame_only``). Attributes:
    ``chunk``, ``first_frame_only``.
    """
    root = Path(root)
    collector = _Collector("trackingnet", root)
    for chunk in _trackingnet_chunks(root, split or "train"):
        anno_dir = root / chunk / "anno"
        if not anno_dir.is_dir():
            raise DatasetFormatError(f"trackingnet: annotation directory not found: {anno_dir}")
        for anno in sorted(anno_dir.glob("*.txt")):
            name, frame_dir = anno.stem, root / chunk / "frames" / anno.stem
            gt = read_box_file(anno)
            listing = _listdir(frame_dir, name)
            first_only = chunk == "TEST" and len(gt) == 1
            if first_only:
                n = _count_matching(listing, _TRACKINGNET_FRAME)
                if n == 0:
                    raise DatasetFormatError(f"sequence {name}: no <i>.jpg frames in {frame_dir}")
                boxes, visible = _first_frame_only(gt[0], n)
            else:
                boxes, n = gt, len(gt)
                visible = is_valid_xywh(boxes)
            frames = _frame_paths(name, frame_dir, [f"{i}.jpg" for i in range(n)], listing)
            collector.add(Sequence(name, "trackingnet", frames, boxes, visible,
                                   {"chunk": chunk, "first_frame_only": first_only}))
    return collector.index()


# ------------------------------------------------------------------------------------------------------------ COCO
def _coco_tag(split: str) -> str:
    if not re.fullmatch(r"[A-Za-z]+(\d{4})?", split):
        raise DatasetFormatError(f"coco: unknown split {split!r}; expected 'train', 'val' or a full name like 'train2017'")
    return split if split[-4:].isdigit() else f"{split}2017"


@register_dataset("coco")
def read_coco(root: Path, split: str | None = None, *, min_size: float = COCO_MIN_BOX_SIZE) -> DatasetIndex:
    """COCO 2017 object instances as one-frame sequences: ``root/annotations/instances_<split>2017.json`` and
    ``root/<split>2017/<file_name>``.

    ``split``: ``"train"`` (the default, ``None``) or ``"val"`` (``"train2014"``-style full names also work). Every
    annotation that is not ``iscrowd`` and whose box is at least ``min_size`` pixels wide and high becomes a
    sequence named ``<image_id>_<annotation_id>``; smaller boxes are recorded in ``skipped``. Attributes:
    ``category``, ``category_id``, ``image_id``, ``annotation_id``, ``image_size`` (width, height).
    """
    root = Path(root)
    tag = _coco_tag(split or "train")
    ann_file, image_dir = root / "annotations" / f"instances_{tag}.json", root / tag
    try:
        data = json.loads(_read_text(ann_file, "COCO annotation file"))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{ann_file} line {error.lineno}: malformed JSON: {error.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise DatasetFormatError(f"{ann_file}: expected a JSON object with 'images', 'annotations' and "
                                 f"'categories' lists")
    try:
        images = {image["id"]: image for image in data["images"]}
        categories = {category["id"]: category["name"] for category in data["categories"]}
    except (KeyError, TypeError) as error:
        raise DatasetFormatError(f"{ann_file}: image or category entry without {error}") from None
    listing = _listdir(image_dir, f"coco {tag}")
    kept: list[tuple[str, dict, dict, list]] = []
    collector = _Collector("coco", root)
    for ann in data["annotations"]:
        try:
            if ann.get("iscrowd", 0):
                continue
            ann_id, image_id, bbox = ann["id"], ann["image_id"], [float(v) for v in ann["bbox"]]
            category = categories[ann["category_id"]]
            image = images[image_id]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            where = ann.get("id", "?") if isinstance(ann, dict) else "?"
            raise DatasetFormatError(f"{ann_file}: annotation {where}: missing or malformed field "
                                     f"{error}") from None
        if len(bbox) != 4:
            raise DatasetFormatError(f"{ann_file}: annotation {ann_id}: bbox must have 4 numbers, got {bbox}")
        name = f"{image_id}_{ann_id}"
        if not (np.isfinite(bbox).all() and bbox[2] >= min_size and bbox[3] >= min_size):
            collector.skip(name, f"box {bbox} smaller than {min_size} px")
            continue
        if image.get("file_name") not in listing:
            raise DatasetFormatError(f"sequence {name}: missing frame {image_dir / str(image.get('file_name'))}")
        kept.append((name, image, {"category": category, "category_id": ann["category_id"], "image_id": image_id,
                                   "annotation_id": ann_id}, bbox))
    boxes = np.array([item[3] for item in kept], dtype=np.float64).reshape(-1, 4)
    visible = np.ones(len(kept), dtype=bool)
    prefix = os.path.join(str(image_dir), "")
    for i, (name, image, attributes, _) in enumerate(kept):
        attributes["image_size"] = (image.get("width"), image.get("height"))
        collector.add(Sequence(name, "coco", [prefix + image["file_name"]], boxes[i:i + 1], visible[i:i + 1],
                               attributes))
    return collector.index()


# ----------------------------------------------------------------------------------------------------------- plain
def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@register_dataset("plain")
def read_plain(root: Path, split: str | None = None) -> DatasetIndex:
    """A user's own videos: ``root/<seq>/img/`` (.jpg .jpeg .png .bmp, natural name order: 2 before 10),
    ``root/<seq>/groundtruth.txt`` (x y w h per line, commas / spaces / tabs; a NaN row = target absent) and
    optionally ``root/<seq>/visible.txt`` (0/1 per frame, one per line or comma separated). The frame count must
    equal the number of box lines.

    ``split``: ``None`` = every ``root/<seq>/`` holding ``img/`` or ``groundtruth.txt``; any other value ``S`` = the
    names listed in ``root/S.txt``. Visible = ``visible.txt`` (if present) and a valid box.
    """
    root = Path(root)
    if split is None:
        directories = {d.name: d for d in _subdirectories(root)
                       if (d / "groundtruth.txt").is_file() or (d / "img").is_dir()}
    else:
        if not re.fullmatch(r"[\w.-]+", split):
            raise DatasetFormatError(f"plain: split {split!r} must name a list file root/<split>.txt")
        list_file = root / f"{split}.txt"
        directories = {}
        for number, name in _read_name_list(list_file):
            if not (root / name).is_dir():
                raise DatasetFormatError(f"{list_file} line {number}: sequence directory not found: {root / name}")
            directories[name] = root / name
    collector = _Collector("plain", root)
    for name, directory in directories.items():
        gt_file, img_dir = directory / "groundtruth.txt", directory / "img"
        boxes = read_box_file(gt_file, allow_nan=True)
        names = sorted((f for f in _listdir(img_dir, name) if f.lower().endswith(PLAIN_IMAGE_EXTENSIONS)),
                       key=_natural_key)
        if len(names) != len(boxes):
            raise DatasetFormatError(f"sequence {name}: {img_dir} has {len(names)} frames but {gt_file} has "
                                     f"{len(boxes)} box lines")
        visible = is_valid_xywh(boxes)
        attributes = {}
        if (directory / "visible.txt").is_file():
            flags = read_flags(directory / "visible.txt", len(boxes))
            attributes["visible_flags"] = flags
            visible &= flags
        frames = _frame_paths(name, img_dir, names)
        collector.add(Sequence(name, "plain", frames, boxes, visible, attributes))
    return collector.index()


# ---------------------------------------------------------------------------------------------------------- UAV123
_STRUCT = re.compile(r"struct\s*\(([^)]*)\)")
_STRUCT_FIELD = re.compile(r"'(\w+)'\s*,\s*('[^']*'|\[[^\]]*\]|[-+\w.]+)")


def _parse_config_seqs(path: Path) -> dict[str, dict]:
    """name -> {base, start, end, nz, ext, line} from the UAV123 toolkit's ``configSeqs.m``.

    Entries whose path's parent folder is ``UAV123`` win when the file also lists other sets (UAV20L, 10 fps)."""
    entries = []
    for number, raw in enumerate(_read_text(path, "configSeqs.m").splitlines(), 1):
        line = raw.split("%", 1)[0]
        if "struct" not in line:
            continue
        matches = _STRUCT.findall(line)
        if not matches:
            raise DatasetFormatError(f"{path} line {number}: cannot parse struct(...): {raw.strip()[:120]!r}")
        for body in matches:
            fields = {key: value.strip("'") for key, value in _STRUCT_FIELD.findall(body)}
            try:
                folders = [part for part in re.split(r"[\\/]", fields["path"]) if part]
                entry = {"name": fields["name"], "base": folders[-1],
                         "parent": folders[-2] if len(folders) > 1 else "",
                         "start": int(fields["startFrame"]), "end": int(fields["endFrame"]),
                         "nz": int(fields.get("nz", 6)), "ext": fields.get("ext", "jpg"), "line": number}
            except (KeyError, IndexError, ValueError):
                raise DatasetFormatError(f"{path} line {number}: expected struct('name',...,'path',...,"
                                         f"'startFrame',N,'endFrame',N[,'nz',N,'ext',...]), got "
                                         f"{raw.strip()[:120]!r}") from None
            if entry["end"] < entry["start"]:
                raise DatasetFormatError(f"{path} line {number}: endFrame {entry['end']} < startFrame "
                                         f"{entry['start']}")
            entries.append(entry)
    if any(entry["parent"].lower() == "uav123" for entry in entries):
        entries = [entry for entry in entries if entry["parent"].lower() == "uav123"]
    config: dict[str, dict] = {}
    for entry in entries:
        if entry["name"] in config:
            raise DatasetFormatError(f"{path} line {entry['line']}: sequence {entry['name']!r} already defined on "
                                     f"line {config[entry['name']]['line']}")
        config[entry["name"]] = entry
    return config


@register_dataset("uav123")
def read_uav123(root: Path, split: str | None = None) -> DatasetIndex:
    """UAV123: ``root/anno/UAV123/<seq>.txt`` (x,y,w,h per line; ``NaN,NaN,NaN,NaN`` = target absent, not visible)
    and ``root/data_seq/UAV123/<folder>/%06d.jpg``.

    Frame ranges come from the UAV123 toolkit's ``configSeqs.m`` at ``root/configSeqs.m`` or
    ``root/anno/configSeqs.m`` (name, folder = the path's last folder, startFrame, endFrame, nz, ext): sub-sequences
    such as ``bird1_2`` cover a range of their folder's frames. Without an entry, a sequence whose name is a folder
    uses frames 1..N (N = annotation lines). ``split`` must be ``None`` (all sequences). Attributes: ``folder``,
    ``start_frame``, ``end_frame``.
    """
    root = Path(root)
    _check_split("uav123", split, (None,))
    anno_dir, data_dir = root / "anno" / "UAV123", root / "data_seq" / "UAV123"
    for directory in (anno_dir, data_dir):
        if not directory.is_dir():
            raise DatasetFormatError(f"uav123: directory not found: {directory}")
    config_file = next((p for p in (root / "configSeqs.m", root / "anno" / "configSeqs.m") if p.is_file()), None)
    config = _parse_config_seqs(config_file) if config_file else {}
    listings: dict[str, set[str]] = {}
    collector = _Collector("uav123", root)
    for anno in sorted(p for p in anno_dir.glob("*.txt") if p.is_file()):
        name = anno.stem
        boxes = read_box_file(anno, allow_nan=True)
        entry = config.get(name)
        if entry is None:
            if not (data_dir / name).is_dir():
                where = f"has no entry in {config_file}" if config_file else "needs configSeqs.m"
                raise DatasetFormatError(
                    f"uav123: sequence {name} ({anno}) is not a folder of {data_dir} and {where}: put the UAV123 "
                    f"toolkit's configSeqs.m in {root} so that sub-sequence frame ranges are known")
            entry = {"base": name, "start": 1, "end": len(boxes), "nz": 6, "ext": "jpg"}
        elif entry["end"] - entry["start"] + 1 != len(boxes):
            raise DatasetFormatError(
                f"{anno}: {len(boxes)} box lines, but {config_file} line {entry['line']} gives frames "
                f"{entry['start']}..{entry['end']} ({entry['end'] - entry['start'] + 1} frames)")
        folder = data_dir / entry["base"]
        if entry["base"] not in listings:
            listings[entry["base"]] = _listdir(folder, name)
        names = [f"{i:0{entry['nz']}d}.{entry['ext']}" for i in range(entry["start"], entry["end"] + 1)]
        frames = _frame_paths(name, folder, names, listings[entry["base"]])
        collector.add(Sequence(name, "uav123", frames, boxes, is_valid_xywh(boxes),
                               {"folder": entry["base"], "start_frame": entry["start"],
                                "end_frame": entry["end"]}))
    return collector.index()
